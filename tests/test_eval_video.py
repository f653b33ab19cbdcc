"""depth-eval video: the procedural camera-path benchmarks, the folder-of-frames reader, and the stream's effect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth.data.procedural import DEPTH_RANGES
from agdepth.evaluation.cli import main as eval_main
from agdepth.evaluation.video import frame_folder_sequences, procedural_sequences

ARGS = ["--count", "2", "--frames", "6", "--size", "48", "64"]


def _write_folders(root: Path, domain: str, png_depth: bool = False) -> None:
    for seq in procedural_sequences(domain, 2, frames=6, size=(48, 64)):
        (root / seq.name / "rgb").mkdir(parents=True)
        (root / seq.name / "depth").mkdir()
        for k, (rgb, depth) in enumerate(zip(seq.rgb, seq.depth, strict=True)):
            Image.fromarray(rgb).save(root / seq.name / "rgb" / f"f{k}.png")
            if png_depth:
                mm = np.where(seq.valid[k], np.round(depth * 1000), 0).astype(np.uint16)
                Image.fromarray(mm).save(root / seq.name / "depth" / f"f{k}.png")
            else:
                np.save(root / seq.name / "depth" / f"f{k}.npy", np.where(seq.valid[k], depth, 0))


def test_the_stream_flickers_less_than_frames_on_the_video_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    res = CliRunner().invoke(eval_main, ["video", "--dataset", "procedural-tabletop-video", *ARGS, "--json", str(out)])
    assert res.exit_code == 0, res.output
    means = {m: r["mean"] for m, r in json.loads(out.read_text())["results"].items()}
    assert means["stream"]["temporal_error"] < 0.5 * means["frames"]["temporal_error"]
    assert means["stream"]["abs_rel"] <= means["frames"]["abs_rel"]
    assert means["stream"]["temporal_change"] == means["frames"]["temporal_change"] > 0  # the same ground truth


@pytest.mark.parametrize("png_depth", [False, True])
def test_a_frame_folder_dataset_reads_as_the_sequences_written(tmp_path: Path, png_depth: bool) -> None:
    _write_folders(tmp_path, "forest", png_depth)
    lo, hi = DEPTH_RANGES["forest"]
    got = list(frame_folder_sequences(tmp_path, (lo, hi)))
    want = list(procedural_sequences("forest", 2, frames=6, size=(48, 64)))
    assert [s.name for s in got] == [s.name for s in want]
    for g, w in zip(got, want, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(g.rgb, w.rgb, strict=True))
        assert np.array_equal(g.valid, w.valid)
        tol = 5e-4 if png_depth else 0
        np.testing.assert_allclose(g.depth[g.valid], w.depth[w.valid], atol=tol)


def test_a_frame_folder_that_breaks_the_layout_is_named(tmp_path: Path) -> None:
    _write_folders(tmp_path, "forest")
    victim = sorted((tmp_path / "forest-001" / "depth").glob("*.npy"))[2]
    victim.unlink()
    with pytest.raises(ValueError, match=r"f2\.png: no depth frame"):
        list(frame_folder_sequences(tmp_path, DEPTH_RANGES["forest"]))
    res = CliRunner().invoke(eval_main, ["video", "--dataset", "frame-folders", "--data-root", str(tmp_path),
                                         "--min-depth", "0.5", "--max-depth", "80"])
    assert res.exit_code == 2 and "f2.png: no depth frame" in res.output
    res = CliRunner().invoke(eval_main, ["video", "--dataset", "frame-folders", "--data-root", str(tmp_path)])
    assert res.exit_code == 2 and "--min-depth" in res.output


def test_the_video_benchmarks_are_listed_and_pointed_to() -> None:
    listed = CliRunner().invoke(eval_main, ["datasets"]).output
    assert "procedural-forest-video" in listed and "frame-folders" in listed
    res = CliRunner().invoke(eval_main, ["--dataset", "procedural-forest-video"])
    assert res.exit_code == 2 and "depth-eval video --dataset procedural-forest-video" in res.output
