"""The sd2 preset on an SD2-layout directory (tiny, random, built from configs): conv_in expansion, the empty-prompt
embedding from the checkpoint's own CLIP, training a step, and the checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from agdepth.artifacts.checkpoint import load_checkpoint
from agdepth.models import expand_conv_in, load_sd2
from agdepth.training.config import load_config
from agdepth.training.trainer import TooManyCorruptSamplesError, train_stage


def test_expand_conv_in_halves_repeated_weights(tiny_sd2_dir: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(tiny_sd2_dir, subfolder="unet")
    conv4 = unet.conv_in
    x = torch.randn(1, 4, 8, 8)
    ref = conv4(x)
    w4, b4 = conv4.weight.detach().clone(), conv4.bias.detach().clone()
    expand_conv_in(unet)
    assert unet.conv_in.in_channels == 8 and unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], w4 * 0.5) and torch.equal(unet.conv_in.weight[:, 4:], w4 * 0.5)
    assert torch.equal(unet.conv_in.bias, b4)
    # a depth latent equal to the rgb latent reproduces the pretrained response
    torch.testing.assert_close(unet.conv_in(torch.cat([x, x], 1)), ref, atol=1e-6, rtol=1e-5)
    assert expand_conv_in(unet) is unet  # already 8-channel: unchanged


def test_load_sd2_computes_clip_empty_prompt_embedding(tiny_sd2_dir: Path) -> None:
    models = load_sd2(tiny_sd2_dir)
    assert models.unet.config.in_channels == 8
    tok = CLIPTokenizer.from_pretrained(tiny_sd2_dir, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(tiny_sd2_dir, subfolder="text_encoder")
    ids = tok("", padding="do_not_pad", return_tensors="pt").input_ids
    assert ids.tolist() == [[0, 1]]  # BOS, EOS only, as Marigold
    with torch.no_grad():
        ref = enc(ids)[0]
    assert models.empty_text_embedding.shape == (1, 2, 16)
    torch.testing.assert_close(models.empty_text_embedding, ref)


def test_load_sd2_errors_name_the_missing_path(tmp_path: Path, tiny_sd2_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_sd2(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"unet.config\.json"):
        load_sd2(partial)


def test_sd2_preset_trains_and_checkpoint_needs_no_clip(tiny_sd2_dir: Path, tmp_path: Path) -> None:
    sets = [s for s in TINY_OVERRIDES if not s.startswith("stages.vae")]
    cfg = load_config("sd2", [*sets, f"pretrained={tiny_sd2_dir}", "data.sources=[]",
                              "stages.autoencoder.iterations=1", "stages.unet.iterations=2", "stages.unet.grad_accum=2",
                              "stages.unet.mixed_precision=fp32", "stages.unet.gradient_checkpointing=true"])
    train_stage("autoencoder", cfg, tmp_path, progress=False)
    ckpt = train_stage("unet", cfg, tmp_path, progress=False)
    emb = load_file(ckpt / "empty_text_embedding.safetensors")["empty_text_embedding"]
    torch.testing.assert_close(emb, load_sd2(tiny_sd2_dir).empty_text_embedding)
    loaded = load_checkpoint(ckpt, with_autoencoder=True)  # no text_encoder/ in our checkpoint: uses the file
    assert not (ckpt / "text_encoder").exists()
    assert loaded.unet.config.in_channels == 8
    assert loaded.extra["scheduler_config"]["prediction_type"] == "v_prediction"
    assert loaded.extra["scheduler_config"]["set_alpha_to_one"] is False
    trained = loaded.unet.state_dict()
    start = load_sd2(tiny_sd2_dir).unet.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start), "fine-tuning changed no weight"


def _write_hypersim(root: Path, n: int, corrupt: set[int]) -> Path:
    lines = []
    for i in range(n):
        d = root / "train" / "ai_001_001"
        d.mkdir(parents=True, exist_ok=True)
        rgb, depth = d / f"rgb_cam_00_fr{i:04d}.png", d / f"depth_plane_cam_00_fr{i:04d}.png"
        Image.fromarray(np.full((32, 32, 3), 40 * i % 255, np.uint8)).save(rgb)
        Image.fromarray(np.full((32, 32), 1000 + 100 * i, np.uint16)).save(depth)
        if i in corrupt:
            rgb.write_bytes(rgb.read_bytes()[:30])  # truncated PNG
        lines.append(f"{rgb.relative_to(root)} {depth.relative_to(root)}")
    flist = root / "filename_list_train.txt"
    flist.write_text("\n".join(lines) + "\n")
    return flist


def test_corrupt_samples_are_counted_then_stop_the_run_with_names(tmp_path: Path) -> None:
    root = tmp_path / "hypersim"
    flist = _write_hypersim(root, 6, corrupt={2})
    base = [*TINY_OVERRIDES, "data.val_domains=[]", "stages.autoencoder.iterations=3",
            f"data.sources=[{{type: hypersim, root: '{root}', filename_list: '{flist}'}}]"]
    # tolerated: skipped and counted in the log
    train_stage("autoencoder", load_config("tiny", base), tmp_path / "ok", progress=False)
    end = (tmp_path / "ok" / "logs" / "autoencoder.jsonl").read_text().splitlines()[-1]
    assert '"corrupt": 1' in end and "fr0002" in end
    # not tolerated: the run stops and names the file
    with pytest.raises(TooManyCorruptSamplesError, match="rgb_cam_00_fr0002.png"):
        train_stage("autoencoder", load_config("tiny", [*base, "data.max_corrupt=0"]), tmp_path / "strict",
                    progress=False)
