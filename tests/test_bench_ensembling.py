"""depth-bench ensemble: agdepth.ensemble vs diffusers' ensemble_depth, on a small size so the suite runs in seconds."""

from __future__ import annotations

import re
from typing import Any
from unittest import mock

import pytest
import torch

from agdepth.bench import ensembling
from agdepth.ensemble import ensemble_depth, ensemble_objective, solve_alignment

SIZE, MEMBERS = 96, 5


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    """One suite run, with the threads it found and left and every agdepth ensemble_depth call it made."""
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(d: torch.Tensor, *args: Any, **kw: Any) -> Any:
        assert kw.get("method") == "lbfgs"  # every agdepth call: diffusers' objective
        out = ensemble_depth(d, *args, **kw)
        calls.append((d.clone(), out[0].clone()))
        return out

    original = torch.get_num_threads()
    before = 2 if original != 2 else 3  # differs from the suite's threads=1, so a missing restore shows
    torch.set_num_threads(before)
    try:
        with mock.patch.object(ensembling, "ensemble_depth", spy):
            report = ensembling.run_ensembling(sizes=(SIZE,), members=MEMBERS, repeats=1, threads=1,
                                               progress=lambda s: None)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(original)
    return {"report": report, "calls": calls, "before": before, "after": after}


def test_report_layout_and_speed_ratio(run: dict[str, Any]) -> None:
    report = run["report"]
    assert set(report) == {"settings", "results", "summary"}  # command/date/machine come from report_meta
    st = report["settings"]
    assert (st["sizes"], st["members"], st["repeats"], st["torch_threads"]) == ([SIZE], MEMBERS, 1, 1)
    (r,) = report["results"]
    assert r["size"] == [SIZE, SIZE] and r["members"] == MEMBERS
    assert set(r["agdepth"]) == {"time_s_median", "times_s", "objective_unit", "output_rmse_vs_gt"}
    assert set(r["runs"]) == set(ensembling.DIFFUSERS_SETTINGS)
    # agdepth runs once after each diffusers setting per repeat (interleaved)
    assert len(r["agdepth"]["times_s"]) == len(ensembling.DIFFUSERS_SETTINGS)
    for x in r["runs"].values():
        assert set(x) == {"time_s_median", "times_s", "bfgs_iterations", "objective_evaluations", "objective_raw",
                          "objective_unit", "agdepth_objective_raw_in_this_gauge", "output_rmse_vs_gt",
                          "mean_abs_diff_to_agdepth", "speed_ratio"}
        assert len(x["times_s"]) == 1 and x["bfgs_iterations"] >= 1 and x["objective_evaluations"] > 0
        assert x["speed_ratio"] == pytest.approx(x["time_s_median"] / r["agdepth"]["time_s_median"], rel=1e-12)


def test_summary_follows_the_largest_size(run: dict[str, Any]) -> None:
    report = run["report"]
    sm, r = report["summary"], report["results"][0]
    defaults = r["runs"]["diffusers defaults"]
    assert set(sm) == {"size", "members", "paper_setting", "speedup_vs_diffusers_defaults", "objective_agdepth_unit",
                       "objective_diffusers_unit"}  # measured values only, no verdicts
    assert sm["size"] == [SIZE, SIZE] and sm["members"] == MEMBERS and not sm["paper_setting"]
    assert sm["speedup_vs_diffusers_defaults"] == defaults["speed_ratio"]
    assert sm["objective_agdepth_unit"] == r["agdepth"]["objective_unit"]
    assert sm["objective_diffusers_unit"] == defaults["objective_unit"]
    assert sm["objective_agdepth_unit"] <= sm["objective_diffusers_unit"]


def test_relations_hold(run: dict[str, Any]) -> None:
    checks = ensembling.relations(run["report"])
    assert len(checks) == len(ensembling.DIFFUSERS_SETTINGS)  # one per diffusers run
    assert all(ok for _, ok in checks), [name for name, ok in checks if not ok]


def test_relations_catch_a_worse_agdepth(run: dict[str, Any]) -> None:
    report = {**run["report"], "results": [{**r, "agdepth": {**r["agdepth"], "objective_unit": 1e9,
                                                              "output_rmse_vs_gt": 1.0}}
                                           for r in run["report"]["results"]]}
    assert not any(ok for _, ok in ensembling.relations(report))


def test_measures_the_projects_ensemble_depth(run: dict[str, Any]) -> None:
    d, g = ensembling.make_members(SIZE, MEMBERS)
    direct, _ = ensemble_depth(d, method="lbfgs")  # the suite compares diffusers' objective, not the default
    assert ensembling.METHOD == "lbfgs"
    timed = [(m, out) for m, out in run["calls"] if m.shape == d.shape]
    assert len(timed) == len(ensembling.DIFFUSERS_SETTINGS)
    for members, out in timed:
        assert torch.equal(members, d) and torch.equal(out, direct)
    a = run["report"]["results"][0]["agdepth"]
    assert a["output_rmse_vs_gt"] == ensembling.fit_rmse(direct, g)
    assert a["objective_unit"] == float(ensemble_objective(d, *solve_alignment(d, method="lbfgs")))


def test_markdown(run: dict[str, Any]) -> None:
    md = ensembling.markdown(run["report"])
    assert not md.startswith("#") and "Command:" not in md and "Load average" not in md
    size = f"| {SIZE}x{SIZE} | {MEMBERS} |"
    assert md.count(f"{size} agdepth |") == 1
    for name, x in run["report"]["results"][0]["runs"].items():
        assert md.count(f"{size} {name} (BFGS {x['bfgs_iterations']} it,") == 1
    sm = run["report"]["summary"]
    assert (f"speed-up {sm['speedup_vs_diffusers_defaults']:.1f}x, unit objective "
            f"{sm['objective_agdepth_unit']:.5f} (agdepth) vs {sm['objective_diffusers_unit']:.5f}") in md
    assert "(the largest size run, not the paper's 10 members at 768x768)" in md
    assert not re.search(r"\bmet\b|target", md, re.IGNORECASE)
    loaded = ensembling.markdown({**run["report"], "load_average_before": [3.08, 3.33, 3.06],
                                  "load_average_after": [3.07, 3.11, 3.05]})
    assert "busy machine" in loaded and "Load average" not in loaded  # the report header carries the load


def test_threads_restored(run: dict[str, Any]) -> None:
    assert run["after"] == run["before"]


def test_threads_restored_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kw: Any) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(ensembling, "bench_size", fail)
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        ensembling.run_ensembling(sizes=(SIZE,), threads=before + 1)
    assert torch.get_num_threads() == before
