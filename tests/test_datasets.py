"""Tests for agdepth.data: Hypersim / Virtual KITTI 2 readers, corrupt-sample handling, per-batch mixing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from agdepth.data.base import (
    SampleReadError,
    SkipCorrupt,
    collate_skip_corrupt,
    read_png_uint16,
)
from agdepth.data.hypersim import HypersimDataset
from agdepth.data.mixing import MixedBatchSampler, build_mixed_loader, set_loader_epoch
from agdepth.data.vkitti import VirtualKITTIDataset, kb_crop_offsets, vkitti_depth_path

HS_H, HS_W = 24, 32
VK_H, VK_W = 375, 1242  # real Virtual KITTI 2 frame size
HS_RGB = "train/ai_001_010/rgb_cam_00_fr0000.png"
HS_DEPTH = "train/ai_001_010/depth_plane_cam_00_fr0000.png"


# --------------------------------------------------------------------------- fixtures / helpers
def _save_rgb(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(arr).save(path)


def _save_u16(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint16)).save(path)


def _write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _hypersim_frame(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (HS_H, HS_W, 3), dtype=np.uint8)
    rgb[0, 0] = 0
    rgb[0, 1] = 255  # make the extremes -1 / +1 appear
    depth_mm = rng.integers(1, 65536, (HS_H, HS_W), dtype=np.int64).astype(np.uint16)
    depth_mm[:3, :5] = 0  # invalid
    depth_mm[5, 5] = 1  # 1 mm is still > 1e-5 m
    depth_mm[6, 6] = 65535
    return rgb, depth_mm


@pytest.fixture
def hypersim(tmp_path: Path) -> dict:
    root = tmp_path / "hypersim"
    rgb, depth = _hypersim_frame(0)
    _save_rgb(root / HS_RGB, rgb)
    _save_u16(root / HS_DEPTH, depth)
    lst = _write_list(
        tmp_path / "filename_list_train.txt",
        ["# comment", "", f"{HS_RGB} {HS_DEPTH} train/ai_001_010/normal_cam_00_fr0000.png"],
    )
    return {"root": root, "list": lst, "rgb": rgb, "depth": depth, "tmp": tmp_path}


def _vk_paths(scene: str, var: str, cam: int, frame: int) -> tuple[str, str]:
    base = f"{scene}/{var}/frames"
    return f"{base}/rgb/Camera_{cam}/rgb_{frame:05d}.jpg", f"{base}/depth/Camera_{cam}/depth_{frame:05d}.png"


def _vk_depth_cm(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.integers(1, 8000, (h, w), dtype=np.int64)
    d[: h // 4] = 65535  # sky band at the top (removed by the crop on full frames)
    d[-1, :] = 8000  # exactly 80 m -> valid
    d[-2, :] = 8001  # 80.01 m -> invalid
    d[-3, ::2] = 65535  # sky/far inside the crop -> invalid
    d[-4, ::3] = 0  # no depth
    return d.astype(np.uint16)


@pytest.fixture
def vkitti(tmp_path: Path) -> dict:
    root = tmp_path / "vkitti"
    frames = [("Scene01", "15-deg-left", 0, 0), ("Scene01", "15-deg-left", 0, 1), ("Scene02", "clone", 1, 0)]
    data = {}
    for i, f in enumerate(frames):
        rgb_rel, depth_rel = _vk_paths(*f)
        rgb = np.random.default_rng(100 + i).integers(0, 256, (VK_H, VK_W, 3), dtype=np.uint8)
        depth = _vk_depth_cm(VK_H, VK_W, 200 + i)
        _save_rgb(root / rgb_rel, rgb)
        _save_u16(root / depth_rel, depth)
        data[rgb_rel] = (depth_rel, depth)
    return {"root": root, "frames": data, "tmp": tmp_path}


def _small_vkitti(tmp_path: Path, n: int = 4, h: int = 20, w: int = 40) -> Path:
    root = tmp_path / "vk_small"
    for i in range(n):
        rgb_rel, depth_rel = _vk_paths("Scene06", "fog", 0, i)
        _save_rgb(root / rgb_rel, np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8))
        _save_u16(root / depth_rel, _vk_depth_cm(h, w, i))
    return root


def _flip_pattern(ds: HypersimDataset, epoch: int) -> list[bool]:
    ds.set_epoch(epoch)
    return [ds.should_flip(i) for i in range(len(ds))]


# --------------------------------------------------------------------------- IO
def test_png16_roundtrip_exact(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 255, 256, 1000], [32767, 32768, 40000, 65534, 65535]], dtype=np.uint16)
    _save_u16(tmp_path / "d.png", arr)
    out = read_png_uint16(tmp_path / "d.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


# --------------------------------------------------------------------------- Hypersim
def test_hypersim_sample_dict_depth_mm_to_m_and_valid(hypersim: dict) -> None:
    ds = HypersimDataset(hypersim["root"], hypersim["list"])
    assert len(ds) == 1 and ds.pairs == [(HS_RGB, HS_DEPTH)]  # comment/blank skipped, 3rd column ignored
    s = ds[0]
    assert set(s) == {"rgb", "depth", "valid", "name", "domain"}
    assert s["name"] == HS_RGB and s["domain"] == "hypersim"
    assert s["rgb"].shape == (3, HS_H, HS_W) and s["rgb"].dtype == torch.float32
    assert s["depth"].shape == (1, HS_H, HS_W) and s["depth"].dtype == torch.float32
    assert s["valid"].shape == (1, HS_H, HS_W) and s["valid"].dtype == torch.bool
    raw = hypersim["depth"]
    expected = raw.astype(np.float32) / np.float32(1000.0)
    np.testing.assert_array_equal(s["depth"][0].numpy(), expected)  # exact mm -> m (0 stays 0)
    np.testing.assert_array_equal(s["valid"][0].numpy(), raw > 0)
    assert not s["valid"][0, :3, :5].any() and (s["depth"][0, :3, :5] == 0).all()
    assert s["depth"][0, 6, 6].item() == pytest.approx(65.535) and s["valid"][0, 5, 5]


def test_rgb_range_matches_pixel_formula(hypersim: dict) -> None:
    s = HypersimDataset(hypersim["root"], hypersim["list"])[0]
    px = torch.from_numpy(hypersim["rgb"]).permute(2, 0, 1).to(torch.float32)
    torch.testing.assert_close(s["rgb"], px / 127.5 - 1, rtol=0, atol=1e-6)
    assert s["rgb"].min().item() == -1.0 and s["rgb"].max().item() == 1.0


def test_hypersim_optional_resize(hypersim: dict) -> None:
    s = HypersimDataset(hypersim["root"], hypersim["list"], resize=(12, 16))[0]
    assert s["rgb"].shape == (3, 12, 16) and s["depth"].shape == (1, 12, 16)
    # nearest-neighbour: no new depth values are invented
    valid_vals = set((hypersim["depth"].astype(np.float32) / np.float32(1000.0)).ravel().tolist())
    assert set(s["depth"].ravel().tolist()) <= valid_vals
    assert torch.equal(s["valid"], s["depth"] > 0)


def test_missing_root_and_list_name_the_path(hypersim: dict) -> None:
    missing_root = hypersim["tmp"] / "no_such_root"
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        HypersimDataset(missing_root, hypersim["list"])
    with pytest.raises(FileNotFoundError, match="no_such_list.txt"):
        HypersimDataset(hypersim["root"], hypersim["tmp"] / "no_such_list.txt")
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        VirtualKITTIDataset(missing_root)
    with pytest.raises(FileNotFoundError, match="no_such_list.txt"):
        VirtualKITTIDataset(hypersim["root"], hypersim["tmp"] / "no_such_list.txt")


# --------------------------------------------------------------------------- hflip
def test_hflip_consistent_deterministic_and_epoch_dependent(hypersim: dict) -> None:
    lst = _write_list(hypersim["tmp"] / "rep.txt", [f"{HS_RGB} {HS_DEPTH}"] * 16)
    ref = HypersimDataset(hypersim["root"], lst)[0]
    ds = HypersimDataset(hypersim["root"], lst, hflip=True, seed=3)

    p0 = _flip_pattern(ds, 0)
    assert any(p0) and not all(p0)
    for i in range(len(ds)):
        s = ds[i]
        for key in ("rgb", "depth", "valid"):
            want = torch.flip(ref[key], dims=[-1]) if p0[i] else ref[key]
            assert torch.equal(s[key], want), (i, key)  # rgb/depth/valid flipped together

    p1 = _flip_pattern(ds, 1)
    assert p1 != p0  # each epoch differs ...
    assert _flip_pattern(HypersimDataset(hypersim["root"], lst, hflip=True, seed=3), 1) == p1  # ... reproducibly
    assert _flip_pattern(ds, 0) == p0
    assert _flip_pattern(HypersimDataset(hypersim["root"], lst, hflip=True, seed=4), 0) != p0
    assert _flip_pattern(HypersimDataset(hypersim["root"], lst, hflip=False, seed=3), 0) == [False] * 16


# --------------------------------------------------------------------------- Virtual KITTI 2
def test_vkitti_depth_path_mapping() -> None:
    assert (
        vkitti_depth_path("Scene01/15-deg-left/frames/rgb/Camera_0/rgb_00000.jpg")
        == "Scene01/15-deg-left/frames/depth/Camera_0/depth_00000.png"
    )
    assert kb_crop_offsets(VK_H, VK_W) == (23, 13)


def test_vkitti_discovery_crop_units_and_validity(vkitti: dict) -> None:
    ds = VirtualKITTIDataset(vkitti["root"])
    assert [r for r, _ in ds.pairs] == sorted(vkitti["frames"])  # globbed, sorted
    assert all(d == vkitti["frames"][r][0] for r, d in ds.pairs)
    top, left = 23, 13
    for i, (rgb_rel, _) in enumerate(ds.pairs):
        s = ds[i]
        assert s["name"] == rgb_rel and s["domain"] == "vkitti"
        assert s["rgb"].shape == (3, 352, 1216) and s["depth"].shape == (1, 352, 1216)
        raw = vkitti["frames"][rgb_rel][1][top : top + 352, left : left + 1216]
        valid = (raw > 0) & (raw <= 8000)
        np.testing.assert_array_equal(s["valid"][0].numpy(), valid)
        # exact cm -> m; invalid pixels keep their value (sky 655.35 m stays far), only 0 stays 0
        np.testing.assert_array_equal(s["depth"][0].numpy(), raw.astype(np.float32) / np.float32(100.0))
        assert s["depth"][s["valid"]].max().item() == 80.0  # bottom row: exactly 80 m is valid
        assert not s["valid"][0, -2].any()  # 80.01 m dropped
        # rgb crop taken at the same offsets as depth (compare with Pillow's own decode of the jpg)
        decoded = np.asarray(Image.open(vkitti["root"] / rgb_rel).convert("RGB"))[top : top + 352, left : left + 1216]
        px = torch.from_numpy(decoded.copy()).permute(2, 0, 1).to(torch.float32)
        torch.testing.assert_close(s["rgb"], px / 127.5 - 1, rtol=0, atol=1e-6)


def test_vkitti_no_crop_small_frames_and_filename_list(tmp_path: Path) -> None:
    root = _small_vkitti(tmp_path, n=2)
    rgb0, depth0 = _vk_paths("Scene06", "fog", 0, 0)
    rgb1, _ = _vk_paths("Scene06", "fog", 0, 1)
    lst = _write_list(tmp_path / "vk.txt", [f"{rgb0} {depth0}", rgb1])  # one-column line: depth derived
    ds = VirtualKITTIDataset(root, lst, crop=False)
    assert ds.pairs[1] == (rgb1, vkitti_depth_path(rgb1))
    s = ds[1]
    assert s["depth"].shape == (1, 20, 40)
    raw = _vk_depth_cm(20, 40, 1)
    assert torch.equal(s["valid"][0], torch.from_numpy((raw > 0) & (raw <= 8000)))
    # sky (655.35 m) is invalid but keeps its value: the target normaliser clips it to far, as in Marigold
    assert not s["valid"][0, :5].any() and torch.allclose(s["depth"][0, :5], torch.tensor(655.35))
    with pytest.raises(SampleReadError, match="rgb_00000.jpg") as ei:  # too small for the benchmark crop
        VirtualKITTIDataset(root, lst, crop=True)[0]
    assert ei.value.path.endswith(rgb0)


# --------------------------------------------------------------------------- corrupt / missing files
def _corrupt_hypersim(hypersim: dict) -> tuple[HypersimDataset, dict[str, str]]:
    """List: good, truncated depth PNG, missing rgb, 8-bit depth, size mismatch, good."""
    root, tmp = hypersim["root"], hypersim["tmp"]
    d = root / "train/ai_002_001"
    rgb, depth = _hypersim_frame(1)
    _save_rgb(d / "rgb_cam_00_fr0001.png", rgb)
    _save_u16(d / "depth_plane_cam_00_fr0001.png", depth)
    data = (d / "depth_plane_cam_00_fr0001.png").read_bytes()
    (d / "depth_plane_cam_00_fr0001.png").write_bytes(data[: len(data) // 2])  # truncated
    Image.fromarray(depth.astype(np.uint8)).save(d / "depth_plane_cam_00_fr0002.png")  # 8-bit depth
    _save_rgb(d / "rgb_cam_00_fr0002.png", rgb)
    _save_u16(d / "depth_plane_cam_00_fr0003.png", depth[:, :-1])  # wrong size
    _save_rgb(d / "rgb_cam_00_fr0003.png", rgb)
    bad = {
        "truncated": "train/ai_002_001/depth_plane_cam_00_fr0001.png",
        "missing": "train/ai_002_001/rgb_cam_00_fr0009.png",
        "8bit": "train/ai_002_001/depth_plane_cam_00_fr0002.png",
        "size": "train/ai_002_001/depth_plane_cam_00_fr0003.png",
    }
    lines = [
        f"{HS_RGB} {HS_DEPTH}",
        f"train/ai_002_001/rgb_cam_00_fr0001.png {bad['truncated']}",
        f"{bad['missing']} {HS_DEPTH}",
        f"train/ai_002_001/rgb_cam_00_fr0002.png {bad['8bit']}",
        f"train/ai_002_001/rgb_cam_00_fr0003.png {bad['size']}",
        f"{HS_RGB} {HS_DEPTH}",
    ]
    return HypersimDataset(root, _write_list(tmp / "corrupt.txt", lines)), bad  # missing files: no error yet


def test_corrupt_and_missing_files_raise_sample_read_error(hypersim: dict) -> None:
    ds, bad = _corrupt_hypersim(hypersim)
    for i, key in [(1, "truncated"), (2, "missing"), (3, "8bit"), (4, "size")]:
        with pytest.raises(SampleReadError) as ei:
            ds[i]
        assert ei.value.path == str(hypersim["root"] / bad[key]), key
        assert bad[key] in str(ei.value), key
    assert isinstance(ds[0]["rgb"], torch.Tensor)


def test_skip_corrupt_collate_drops_and_lists(hypersim: dict) -> None:
    ds, bad = _corrupt_hypersim(hypersim)
    loader = DataLoader(SkipCorrupt(ds), batch_size=6, collate_fn=collate_skip_corrupt)
    batch = next(iter(loader))
    assert batch["rgb"].shape == (2, 3, HS_H, HS_W) and batch["name"] == [HS_RGB, HS_RGB]
    assert batch["corrupt"] == [str(hypersim["root"] / bad[k]) for k in ("truncated", "missing", "8bit", "size")]
    # clean batch: corrupt key present but empty; all-corrupt batch: only "corrupt"
    assert collate_skip_corrupt([ds[0]])["corrupt"] == []
    only_bad = collate_skip_corrupt([SkipCorrupt(ds)[1], SkipCorrupt(ds)[2]])
    assert set(only_bad) == {"corrupt"} and len(only_bad["corrupt"]) == 2


# --------------------------------------------------------------------------- MixedBatchSampler
def _sources(batches: list[list[int]], split: int) -> list[int]:
    out = []
    for b in batches:
        src = {int(i >= split) for i in b}
        assert len(src) == 1, b  # single-source batch
        out.append(src.pop())
    return out


def test_mixed_sampler_single_source_and_frequency() -> None:
    lengths = [2000, 500]
    s = MixedBatchSampler(lengths, 4, [0.9, 0.1], seed=0)
    assert len(s) == 500 + 125
    srcs = []
    for epoch in range(8):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) and all(len(b) == 4 for b in batches)
        assert all(0 <= i < 2500 for b in batches for i in b)
        srcs += _sources(batches, 2000)
    assert abs(srcs.count(1) / len(srcs) - 0.1) < 0.02


def test_mixed_sampler_deterministic_per_seed_epoch_and_resume() -> None:
    def run(seed: int, epoch: int, start: int = 0) -> list[list[int]]:
        s = MixedBatchSampler([300, 100], 4, [0.9, 0.1], seed=seed)
        s.set_epoch(epoch, start)
        return list(s)

    e0 = run(7, 0)
    assert e0 == run(7, 0)
    assert e0 != run(7, 1) and e0 != run(8, 0)
    assert run(7, 1, start=10) == run(7, 1)[10:]  # mid-epoch resume without reading skipped batches


def test_mixed_sampler_ranks_disjoint() -> None:
    lengths, bs = [4000, 1000], 4
    # No sub-dataset runs out within this epoch, so whole-epoch index sets must be disjoint.
    r0 = MixedBatchSampler(lengths, bs, [0.9, 0.1], seed=1, num_replicas=2, rank=0, batches_per_epoch=200)
    r1 = MixedBatchSampler(lengths, bs, [0.9, 0.1], seed=1, num_replicas=2, rank=1, batches_per_epoch=200)
    b0, b1 = list(r0), list(r1)
    i0, i1 = {i for b in b0 for i in b}, {i for b in b1 for i in b}
    assert len(i0) == len(i1) == 200 * bs and not i0 & i1
    assert _sources(b0, 4000) == _sources(b1, 4000)  # lock-step: same source at every step
    # Default epoch length (sub-datasets get recycled): same length, and every step is disjoint.
    d = [MixedBatchSampler([300, 100], 4, [0.9, 0.1], seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(d[0]) == len(d[1])
    for a, b in zip(*map(list, d), strict=True):
        assert not set(a) & set(b)


def test_mixed_sampler_rejects_too_small_dataset() -> None:
    with pytest.raises(ValueError):
        MixedBatchSampler([10, 3], 4, [0.5, 0.5], seed=0)


# --------------------------------------------------------------------------- end-to-end loader
def test_build_mixed_loader_end_to_end(hypersim: dict, tmp_path: Path) -> None:
    lst = _write_list(hypersim["tmp"] / "hs16.txt", [f"{HS_RGB} {HS_DEPTH}"] * 15 + [f"{HS_RGB} missing.png"])
    hs = HypersimDataset(hypersim["root"], lst, hflip=True, seed=0)
    vk = VirtualKITTIDataset(_small_vkitti(tmp_path, n=4), crop=False, hflip=True, seed=0)

    def epoch_batches(num_workers: int, epoch: int) -> list[dict]:
        loader = build_mixed_loader([hs, vk], [0.9, 0.1], batch_size=2, seed=0, num_workers=num_workers)
        set_loader_epoch(loader, epoch)
        assert hs.epoch == vk.epoch == epoch and loader.batch_sampler.epoch == epoch
        return list(loader)

    batches = epoch_batches(0, 1)
    assert len(batches) == 8 + 2
    corrupt = [p for b in batches for p in b["corrupt"]]
    assert corrupt == [str(hypersim["root"] / "missing.png")]
    for b in batches:
        if "rgb" in b:
            assert len(set(b["domain"])) == 1  # one source per batch -> uniform size
            assert b["rgb"].shape[-2:] == ((HS_H, HS_W) if b["domain"][0] == "hypersim" else (20, 40))
    # Worker processes see the epoch too: identical (flip-dependent) data with 2 workers ...
    with_workers = epoch_batches(2, 1)
    for a, b in zip(batches, with_workers, strict=True):
        assert a.keys() == b.keys()
        if "rgb" in a:
            assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["valid"], b["valid"])
    # ... and the epoch really changes what they produce.
    epoch0 = epoch_batches(2, 0)
    assert any(
        "rgb" in a and "rgb" in b and a["rgb"].shape == b["rgb"].shape and not torch.equal(a["rgb"], b["rgb"])
        for a, b in zip(batches, epoch0, strict=True)
    )
