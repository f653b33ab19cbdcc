"""Shared fixtures: tiny models and an SD2-layout directory built from configs (no hub access here), the hang guard
of subprocess waits, and one torch thread per test process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

# The timeout of a subprocess or wait in a test: it only stops a hung run. An hour is far above any run here, however
# busy the machine (a test must never fail because the machine is slow), and is never a statement about speed.
HANG_GUARD_S = 3600


def pytest_configure(config: pytest.Config) -> None:
    """One torch (OpenMP) thread, here and in the subprocesses the tests start (OMP_NUM_THREADS; an OMP_NUM_THREADS
    already set is kept). On a 2-core machine shared with other work, torch's two spinning OpenMP threads made the
    suite 10x+ slower (the fast tier: 52 s alone, 688 s beside another pytest run; 67 s single-threaded), and the tiny
    models gain little from a second thread. Speed only: no test depends on the thread count."""
    threads = os.environ.setdefault("OMP_NUM_THREADS", "1")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))

# A run small enough for CPU tests: 32x32 images (4x4 latents), batch 2, validation on 1 scene per domain.
TINY_OVERRIDES = [
    "data.size=[32,32]",
    "data.val_count=1",
    "model.sample_size=32",
    "stages.vae.batch_size=2",
    "stages.autoencoder.batch_size=2",
    "stages.unet.batch_size=2",
    "stages.vae.log_every=1",
    "stages.autoencoder.log_every=1",
    "stages.unet.log_every=1",
    "autoencoder.block_out_channels=[4,8,8,8,8]",
    "autoencoder.norm_num_groups=4",
]


def write_tiny_sd2_dir(root: Path, seed: int = 0) -> Path:
    """An SD2-shaped diffusers directory (4-channel U-Net, VAE, CLIP text encoder + tokenizer), tiny and random."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, attention_head_dim=4, norm_num_groups=4, cross_attention_dim=16,
        use_linear_projection=True,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4, sample_size=32,
    ).save_pretrained(root / "vae")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction").save_pretrained(root / "scheduler")
    # SD2's tokenizer layout: vocab.json + merges.txt (a byte-pair vocabulary of single letters suffices here)
    tok = root / "tokenizer"
    tok.mkdir(exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c], vocab[c + "</w>"] = 2 + 2 * i, 3 + 2 * i
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sd2_dir(tmp_path_factory.mktemp("sd2"))
