"""depth-batch on a local Ray (2 CPUs, loopback only): the same files as depth-run, an actor killed mid-run, resume,
failures listed in the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth.data.procedural import render_scene
from agdepth.imageio import OUTPUT_LEDGER

ray = pytest.importorskip("ray")

from agdepth.cluster import batch as batch_mod  # noqa: E402
from agdepth.cluster.batch import REPORT, BatchWriter  # noqa: E402
from agdepth.cluster.batch_cli import main as batch_main  # noqa: E402
from agdepth.cluster.ray_env import init_ray  # noqa: E402
from agdepth.runtime.cli import main as run_main  # noqa: E402

COUNT = 200
DOMAINS = ("indoor", "street", "forest", "tabletop")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    r = init_ray(num_cpus=2, temp_dir=tmp_path_factory.mktemp("ray"))
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for i in range(COUNT):
        Image.fromarray(render_scene(DOMAINS[i % 4], i, size=(24, 32), split="test").rgb).save(d / f"p{i:03d}.png")
    return d


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    res = CliRunner().invoke(run_main, [str(photos), "--out", str(out), "--device", "cpu", "--formats", "npy,png16"])
    assert res.exit_code == 0, res.output
    return out


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*_depth.*"))}


def test_the_ray_node_listens_on_loopback_only(local_ray) -> None:  # noqa: ANN001
    assert [n["NodeManagerAddress"] for n in local_ray.nodes() if n["Alive"]] == ["127.0.0.1"]


def test_an_actor_killed_mid_run_still_gives_depth_runs_files(local_ray, photos: Path, reference: Path,  # noqa: ANN001
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output is depth-run's, byte for byte (the same groups in the same network calls); one actor dies on
    its first group holding p100.png and is restarted: nothing is missing, and a second run writes nothing."""
    marker = tmp_path / "killed"

    class DiesOnce(BatchWriter):  # defined here: Ray ships it to the actors by value
        def run_group(self, group):  # noqa: ANN001, ANN202
            if any(j["source"].endswith("p100.png") for j in group) and not marker.exists():
                marker.write_text("x")
                os._exit(1)  # the actor's process dies mid-run, as on a lost node
            return super().run_group(group)

    real = batch_mod.run_batch
    monkeypatch.setattr("agdepth.cluster.batch_cli.run_batch",
                        lambda *a, **k: real(*a, **{**k, "actor_cls": DiesOnce}))
    out = tmp_path / "out"
    res = CliRunner().invoke(batch_main, [str(photos), "--out", str(out), "--device", "cpu", "--formats", "npy,png16"])
    assert res.exit_code == 0, res.output
    assert marker.exists()  # the actor did die
    got, want = _outputs(out), _outputs(reference)
    assert sorted(got) == sorted(want) and len(want) == 2 * COUNT
    assert [k for k in want if got[k] != want[k]] == []
    report = json.loads((out / REPORT).read_text())
    assert report["predicted"] == COUNT and report["failed"] == [] and report["skipped"] == 0
    assert not list(out.glob("*.tmp"))  # no half-written file left

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = CliRunner().invoke(batch_main, [str(photos), "--out", str(out), "--device", "cpu", "--formats", "npy,png16"])
    assert res.exit_code == 0 and "nothing to do: all 200 image(s)" in res.output, res.output
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != OUTPUT_LEDGER} == {
        k: v for k, v in mtimes.items() if k != OUTPUT_LEDGER}  # the outputs and the report untouched


def test_failed_images_are_listed_with_their_reason_and_retried(local_ray, tmp_path: Path) -> None:  # noqa: ANN001
    d = tmp_path / "in"
    d.mkdir()
    for i in range(5):
        Image.fromarray(render_scene("indoor", i, size=(24, 32), split="test").rgb).save(d / f"a{i}.png")
    (d / "a2.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    res = CliRunner().invoke(batch_main, [str(d), "--out", str(out), "--device", "cpu", "--formats", "npy"])
    assert res.exit_code == 1 and "1 input(s) failed" in res.output and "a2.png" in res.output, res.output
    report = json.loads((out / REPORT).read_text())
    assert report["predicted"] == 4 and [Path(f["source"]).name for f in report["failed"]] == ["a2.png"]
    assert "cannot read image" in report["failed"][0]["reason"]
    assert sorted(p.name for p in out.glob("*.npy")) == [f"a{i}_depth.npy" for i in (0, 1, 3, 4)]
    res = CliRunner().invoke(batch_main, [str(d), "--out", str(out), "--device", "cpu", "--formats", "npy"])
    assert res.exit_code == 1 and "4 done earlier" in res.output  # only the failed image is tried again
    assert np.array_equal(np.load(out / "a0_depth.npy"), np.load(out / "a0_depth.npy"))
