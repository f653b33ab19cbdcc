"""One CLI vocabulary: depth-run, depth-eval run and depth-bench latency spell the shared options alike, accept every
timestep spacing the schedule supports and open the same model by default; depth-export's defaults are ExportOptions'.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import agdepth
from agdepth.bench.cli import main as bench_main
from agdepth.evaluation.cli import main as eval_main
from agdepth.export import ExportOptions
from agdepth.export.cli import main as export_main
from agdepth.runtime.cli import main as run_main
from agdepth.runtime.options import open_pipeline
from agdepth.schedule import TIMESTEP_SPACINGS

SHARED = ("--engine", "--checkpoint", "--device", "--steps", "--ensemble", "--timestep-spacing", "--processing-res",
          "--seed", "--batch-size")
COMMANDS = {"depth-run": run_main, "depth-eval run": eval_main.commands["run"],
            "depth-bench latency": bench_main.commands["latency"]}


def _options(cmd: click.Command) -> dict[str, click.Option]:
    return {name: p for p in cmd.params if isinstance(p, click.Option) for name in p.opts}


@pytest.mark.parametrize("name", COMMANDS)
def test_shared_options_are_spelled_alike_with_the_same_types_and_defaults(name: str) -> None:
    mine, ref = _options(COMMANDS[name]), _options(run_main)
    assert set(SHARED) <= set(mine), sorted(set(SHARED) - set(mine))
    for opt in SHARED:
        a, b = mine[opt], ref[opt]
        assert (a.name, a.default, a.type.to_info_dict()) == (b.name, b.default, b.type.to_info_dict()), opt
    assert mine["--device"].default == "auto"
    assert tuple(mine["--timestep-spacing"].type.choices) == TIMESTEP_SPACINGS  # type: ignore[attr-defined]
    help_text = COMMANDS[name].get_help(click.Context(COMMANDS[name]))
    assert all(opt in help_text for opt in SHARED)


@pytest.mark.parametrize("spacing", TIMESTEP_SPACINGS)
@pytest.mark.parametrize("name", COMMANDS)
def test_every_timestep_spacing_is_accepted(name: str, spacing: str) -> None:
    cmd = COMMANDS[name]
    args = {"depth-run": ["img.png"], "depth-eval run": ["--dataset", "procedural-forest"]}.get(name, [])
    ctx = cmd.make_context(name, [*args, "--timestep-spacing", spacing])  # parses and checks, runs nothing
    assert ctx.params["timestep_spacing"] == spacing
    with pytest.raises(click.BadParameter):
        cmd.make_context(name, [*args, "--timestep-spacing", "sideways"])


def test_depth_export_defaults_are_export_options_defaults() -> None:
    opts = _options(export_main)
    defaults = ExportOptions()
    for field in dataclasses.fields(ExportOptions):
        flag = "--" + field.name.replace("_", "-")
        if flag in opts and not opts[flag].is_flag:
            assert opts[flag].default == getattr(defaults, field.name), flag


def test_open_pipeline_defaults_to_the_bundled_model_and_refuses_two_models(tmp_path: Path) -> None:
    pipe = open_pipeline(None, None, "cpu")
    assert pipe.backend.defaults == open_pipeline(None, agdepth.default_checkpoint(), "cpu").backend.defaults
    with pytest.raises(click.UsageError, match="--engine or --checkpoint, not both"):
        open_pipeline(tmp_path / "unet.onnx", agdepth.default_checkpoint(), "cpu")


def test_depth_run_takes_a_checkpoint_and_records_it(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 30), (90, 120, 200)).save(tmp_path / "in" / "a.png")
    ckpt = agdepth.default_checkpoint()
    res = CliRunner().invoke(run_main, [str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out",
                                        str(tmp_path / "out"), "--formats", "npy", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "a_depth.npy").is_file()
    both = CliRunner().invoke(run_main, [str(tmp_path / "in"), "--checkpoint", str(ckpt), "--engine", str(ckpt)])
    assert both.exit_code == 2 and "not both" in both.output
