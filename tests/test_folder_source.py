"""A user's folder of RGB-D pairs as a training source (agdepth.data.folder), depth-data's writer, and
`depth-train finetune`: formats, split, bad pairs, and a fine-tune from the bundled checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_OVERRIDES
from PIL import Image
from safetensors.torch import load_file

from agdepth import default_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.data.base import SampleReadError
from agdepth.data.cli import main as data_main
from agdepth.data.folder import (
    DepthEncoding,
    FolderTrainDataset,
    cover_crop,
    discover_pairs,
    read_depth_file,
    read_pair,
    split_pairs,
)
from agdepth.data.procedural import render_scene
from agdepth.training.cli import main as train_main


def _write(root: Path, name: str, rgb: np.ndarray, mm: np.ndarray) -> None:
    for sub in ("rgb", "depth"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(root / "rgb" / f"{name}.png")
    Image.fromarray(mm).save(root / "depth" / f"{name}.png")


@pytest.mark.parametrize("fmt", ["png", "npy", "tiff", "exr"])
def test_depth_data_writes_each_format_and_the_reader_gets_the_scene_back(tmp_path: Path, fmt: str) -> None:
    if fmt == "exr":
        pytest.importorskip("OpenEXR")
    res = CliRunner().invoke(data_main, ["procedural", "tabletop", "--count", "2", "--size", "48", "--format", fmt,
                                         "--out", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 0, res.output
    pairs = discover_pairs(tmp_path / "d")
    assert [p[0] for p in pairs] == ["rgb/tabletop_train_00000.png", "rgb/tabletop_train_00001.png"]
    scale = 0.001 if fmt == "png" else 1.0
    for i, pair in enumerate(pairs):
        scene = render_scene("tabletop", i, (48, 48), "train")
        rgb, depth, mask = read_pair(tmp_path / "d", pair, DepthEncoding(scale))
        want = np.where(scene.valid, scene.depth, 0)
        np.testing.assert_array_equal(rgb, scene.rgb)
        assert mask is None
        # 16-bit PNG in millimetres: within half a millimetre; float formats: the float32 values exactly
        np.testing.assert_allclose(depth, want, rtol=0, atol=5.0001e-4 if fmt == "png" else 0)
    rows = (tmp_path / "d" / "intrinsics.csv").read_text().splitlines()
    assert rows[0] == "name,fx,fy,cx,cy" and rows[1].startswith("tabletop_train_00000.png,")
    k = render_scene("tabletop", 0, (48, 48), "train").intrinsics
    assert [float(v) for v in rows[1].split(",")[1:]] == pytest.approx([k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
                                                                        rel=1e-5)


def test_exr_depth_channel_choice_and_damage(tmp_path: Path) -> None:
    OpenEXR = pytest.importorskip("OpenEXR")
    z = np.linspace(0.5, 4, 12, dtype=np.float32).reshape(3, 4)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": z * 2, "Z": z}) as f:  # several channels: Z is the depth
        f.write(str(tmp_path / "multi.exr"))
    np.testing.assert_array_equal(read_depth_file(tmp_path / "multi.exr"), z)
    with OpenEXR.File(header, {"A": z, "B": z}) as f:
        f.write(str(tmp_path / "nodepth.exr"))
    with pytest.raises(SampleReadError, match="no depth channel") as e:
        read_depth_file(tmp_path / "nodepth.exr")
    assert "nodepth.exr" in str(e.value)
    (tmp_path / "broken.exr").write_bytes(b"v/1\x01 broken")
    with pytest.raises(SampleReadError, match="broken.exr"):
        read_depth_file(tmp_path / "broken.exr")


def test_training_samples_cover_crop_the_size_and_honour_range_and_mask(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:40, 0:80]
    rgb = np.stack([xx * 3, yy * 6, np.zeros_like(xx)], -1).astype(np.uint8)
    mm = (500 + 20 * xx).astype(np.uint16)  # 0.5 .. 2.08 m, growing to the right
    mm[:, :4] = 0  # no measurement
    _write(tmp_path, "wide", rgb, mm)
    (tmp_path / "mask").mkdir()
    mask = np.ones((40, 80), np.uint8) * 255
    mask[:5] = 0
    Image.fromarray(mask).save(tmp_path / "mask" / "wide.png")
    _write(tmp_path, "small", rgb[:16, :16], mm[:16, :16])  # smaller than the size: upscaled to cover it
    ds = FolderTrainDataset(tmp_path, discover_pairs(tmp_path), (20, 20), encoding=DepthEncoding(0.001),
                            depth_range=(0.6, 10.0), domain="mine")
    s = ds[1]  # "wide": 40x80 -> 20x40, the middle 20 columns
    assert s["rgb"].shape == (3, 20, 20) and s["depth"].shape == s["valid"].shape == (1, 20, 20)
    assert s["domain"] == "mine" and s["name"] == "rgb/wide.png"
    # usable: inside the range and the mask, judged at full resolution, then resized with the depth (nearest)
    metres = mm / 1000.0
    usable = (metres > 0.6) & (metres < 10) & (mask > 0)
    _, want_depth, want_valid = cover_crop(rgb, metres, usable, (20, 20))
    np.testing.assert_allclose(s["depth"][0].numpy(), want_depth, rtol=1e-6)
    np.testing.assert_array_equal(s["valid"][0].numpy(), want_valid)
    assert not want_valid[:2].any() and want_valid[2:].any()  # the mask's top rows, nearest-sampled
    np.testing.assert_array_equal(want_valid[2:], (want_depth[2:] > 0.6) & (want_depth[2:] < 10))
    assert ds[0]["rgb"].shape == (3, 20, 20)
    # flips: rgb, depth and valid together, a pure function of (seed, epoch, index)
    flipped = FolderTrainDataset(tmp_path, discover_pairs(tmp_path), (20, 20), encoding=DepthEncoding(0.001),
                                 depth_range=(0.6, 10.0), hflip=True, seed=3)
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        b = flipped[1]
        same = torch.equal(b["depth"], s["depth"])
        assert same or (torch.equal(b["depth"], s["depth"].flip(-1)) and torch.equal(b["valid"], s["valid"].flip(-1))
                        and torch.equal(b["rgb"], s["rgb"].flip(-1)))
        assert torch.equal(flipped[1]["depth"], b["depth"])
        seen.add(same)
    assert seen == {True, False}


def test_held_out_split_is_stable_and_disjoint(tmp_path: Path) -> None:
    pairs = [(f"rgb/{i:04d}.png", f"depth/{i:04d}.png") for i in range(400)]
    train, held = split_pairs(pairs, 0.25, seed=0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 400
    assert 60 < len(held) < 140
    # adding images or listing them in another order moves no pair to the other side
    more = [(f"rgb/x{i}.png", f"depth/x{i}.png") for i in range(50)]
    train2, held2 = split_pairs(list(reversed(pairs)) + more, 0.25, seed=0)
    assert set(held) <= set(held2) and set(train) <= set(train2)
    assert split_pairs(pairs, 0.25, seed=1)[1] != held  # another seed, another split
    (tmp_path / "held.txt").write_text("rgb/0003.png\n0007\n# a comment\n")
    train3, held3 = split_pairs(pairs, tmp_path / "held.txt")
    assert held3 == [pairs[3], pairs[7]] and len(train3) == 398
    (tmp_path / "none.txt").write_text("nothing.png\n")
    with pytest.raises(ValueError, match="none.txt"):
        split_pairs(pairs, tmp_path / "none.txt")
    with pytest.raises(ValueError, match="fraction"):
        split_pairs(pairs, 1.5)


def _folder(root: Path, n: int, size: int = 24) -> None:
    for i in range(n):
        s = render_scene("tabletop", i, (size, size), "train")
        _write(root, f"p{i:02d}", s.rgb, np.where(s.valid, np.round(s.depth * 1000), 0).astype(np.uint16))


FT_OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(("model.", "stages.vae"))] + [
    "stages.autoencoder.iterations=2", "stages.unet.iterations=2", "data.cache=false",
    "data.sources.0.length=4", "data.sources.1.length=4", "data.sources.2.length=4", "data.val_domains=[]",
]


def _finetune(args: list[str]) -> tuple[int, str]:
    cmd = ["finetune", *args, "--no-progress"]
    for o in FT_OVERRIDES:
        cmd += ["--set", o]
    res = CliRunner().invoke(train_main, cmd, catch_exceptions=False)
    return res.exit_code, res.output


def test_finetune_the_bundled_model_on_a_folder(tmp_path: Path) -> None:
    data, out = tmp_path / "mine", tmp_path / "run"
    _folder(data, 7)
    (data / "depth" / "p05.png").write_bytes(b"\x89PNG damaged")  # unreadable: skipped, counted, named
    (data / "depth" / "p06.png").unlink()  # no partner: left out before training, named
    (tmp_path / "held.txt").write_text("rgb/p00.png\np01.png\n")
    # 4 training pairs, 2 per batch, 2 updates: one pass over the folder, so p05 is drawn
    code, output = _finetune(["--data", str(data), "--depth-scale", "0.001", "--holdout", str(tmp_path / "held.txt"),
                              "--replay", "0", "--out", str(out), "--set", "data.max_corrupt_share=0.5"])
    assert code == 0, output
    ckpt = out / "checkpoint"
    src = default_checkpoint()
    # the U-Net was trained from the bundled one; the frozen VAE and the embedding are the bundled ones
    new_unet = load_file(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    old_unet = load_file(src / "unet" / "diffusion_pytorch_model.safetensors")
    assert new_unet.keys() == old_unet.keys()
    assert any(not torch.equal(new_unet[k], old_unet[k]) for k in old_unet)
    for f in ("vae/diffusion_pytorch_model.safetensors", "empty_text_embedding.safetensors"):
        a, b = load_file(ckpt / f), load_file(src / f)
        assert all(torch.equal(a[k], b[k]) for k in b), f
    index, src_index = (json.loads((p / "model_index.json").read_text()) for p in (ckpt, src))
    assert index["default_processing_resolution"] == src_index["default_processing_resolution"]
    assert index["default_denoising_steps"] == src_index["default_denoising_steps"]
    assert RuntimeDefaults.from_model_index(index).vae == "full" and not (ckpt / "vae_light").exists()
    assert (ckpt / "depth_autoencoder" / "config.json").is_file()  # pretrained first: the bundled model has none
    # the split as filename lists: the listed images held out, the rest (with a depth file) trained on
    split = {side: [line.split()[0] for line in (out / "data_split" / "mine" / f"{side}.txt").read_text().splitlines()]
             for side in ("train", "heldout")}
    assert split == {"heldout": ["rgb/p00.png", "rgb/p01.png"],
                     "train": ["rgb/p02.png", "rgb/p03.png", "rgb/p04.png", "rgb/p05.png"]}
    records = [json.loads(line) for line in (out / "logs" / "unet.jsonl").read_text().splitlines()]
    assert any("mine/abs_rel" in r for r in records if r["event"] == "val")
    end = next(r for r in records if r["event"] == "end")
    assert str(data / "depth" / "p06.png") in end["corrupt_files"]
    assert any(f.endswith("p05.png") for f in end["corrupt_files"])


def test_finetune_stops_naming_files_when_too_many_pairs_are_bad(tmp_path: Path) -> None:
    data = tmp_path / "mine"
    _folder(data, 6)
    for i in range(3):
        (data / "depth" / f"p{i:02d}.png").unlink()
    code, output = _finetune(["--data", str(data), "--depth-scale", "0.001", "--out", str(tmp_path / "run")])
    assert code == 1, output  # before any training
    assert "3 of 6 images have no depth file" in output and "p00.png" in output
    assert not (tmp_path / "run" / "checkpoint").exists()
    # unreadable files are found when drawn: more than data.max_corrupt_share of the pairs stops the run
    _folder(data, 6)
    (data / "depth" / "p01.png").write_bytes(b"not a png")  # 1 of 6 > 10 %
    code, output = _finetune(["--data", str(data), "--depth-scale", "0.001", "--holdout", "0", "--replay", "0",
                              "--out", str(tmp_path / "run2"), "--set", "stages.autoencoder.iterations=3"])
    assert code == 1, output
    assert "1 of the folder sources' 6 pairs missing or unreadable (data.max_corrupt_share=0.1)" in output
    assert str(data / "depth" / "p01.png") in output


def test_finetune_an_sd2_directory_with_its_own_config(tmp_path: Path, tiny_sd2_dir: Path) -> None:
    """The same command on an SD2-layout directory (4-channel U-Net, CLIP text encoder): the sd2 config, no replay."""
    from agdepth.artifacts.checkpoint import load_checkpoint

    data, out = tmp_path / "mine", tmp_path / "run"
    _folder(data, 4, size=32)
    sets = ["data.size=[32,32]", "data.val_domains=[]", "data.val_count=1", "stages.unet.iterations=1",
            "stages.unet.batch_size=2", "stages.unet.grad_accum=1", "stages.unet.mixed_precision=fp32",
            "stages.unet.gradient_checkpointing=false", "stages.autoencoder.iterations=1",
            "stages.autoencoder.batch_size=2", "autoencoder.block_out_channels=[4,8,8,8,8]",
            "autoencoder.norm_num_groups=4"]
    cmd = ["finetune", "--config", "sd2", "--checkpoint", str(tiny_sd2_dir), "--data", str(data), "--depth-scale",
           "0.001", "--holdout", "0.25", "--replay", "0", "--out", str(out), "--no-progress"]
    for o in sets:
        cmd += ["--set", o]
    res = CliRunner().invoke(train_main, cmd, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    models = load_checkpoint(out / "checkpoint")
    assert models.unet.config.in_channels == 8  # conv_in expanded for the RGB latent, as Marigold's
    records = [json.loads(line) for line in (out / "logs" / "unet.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["event"] == "start")
    assert [s["type"] for s in start["config"]["data"]["sources"]] == ["folder"]  # --replay 0: the folder alone
