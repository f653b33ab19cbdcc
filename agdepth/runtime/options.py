"""The command-line options ``depth-run``, ``depth-eval`` and ``depth-bench`` share, spelled once, and the one function
that opens a pipeline from them.

Model: ``--engine``, ``--checkpoint``, ``--device`` (none of the first two: the bundled model on PyTorch).
Inference: ``--steps``, ``--ensemble``, ``--timestep-spacing``, ``--processing-res``, ``--vae``, ``--seed``,
``--batch-size`` (None: the model's own default, see :class:`agdepth.artifacts.defaults.RuntimeDefaults`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agdepth.networks import VAE_CHOICES
from agdepth.runtime.backends import ENGINE_KINDS
from agdepth.schedule import TIMESTEP_SPACINGS

if TYPE_CHECKING:
    from agdepth.runtime.pipeline import DepthPipeline

F = TypeVar("F", bound=Callable[..., Any])

DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**62  # depth-run offsets the seed by each image's index; the sum stays within torch's 64-bit range
DEFAULT_BATCH_SIZE = 8  # rows per network call: several images' members share a call, within any export's batch


def _apply(f: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):  # decorators apply bottom-up: keep the listed order in --help
        f = option(f)
    return f


def model_options(f: F) -> F:
    """``--engine``, ``--checkpoint``, ``--device``."""
    return _apply(f, [
        click.option("--engine", type=click.Path(path_type=Path), default=None,
                     help=f"Exported model: {ENGINE_KINDS}. Default: the bundled model on PyTorch."),
        click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="Checkpoint directory (diffusers layout: agdepth or Marigold), run on PyTorch. Default: "
                          "the bundled model."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where PyTorch runs (auto: CUDA if PyTorch sees a GPU). ONNX Runtime picks its own "
                          "execution provider; TensorRT always runs on the GPU."),
    ])


def inference_options(f: F) -> F:
    """``--steps``, ``--ensemble``, ``--timestep-spacing``, ``--processing-res``, ``--vae``, ``--seed``,
    ``--batch-size``."""
    return _apply(f, [
        click.option("--steps", type=click.IntRange(min=1), default=None, help="DDIM steps. Default: the model's."),
        click.option("--ensemble", type=click.IntRange(min=1), default=None,
                     help="Ensemble members per image. Default: the model's."),
        click.option("--timestep-spacing", type=click.Choice(TIMESTEP_SPACINGS), default=None,
                     help="How the DDIM timesteps are spread (diffusers' names). Default: the model's."),
        click.option("--processing-res", type=click.IntRange(min=0), default=None,
                     help="Longer side the networks see (0 = native). Default: the model's."),
        click.option("--vae", type=click.Choice(list(VAE_CHOICES)), default=None,
                     help="The VAE: the checkpoint's full one, its distilled light one (depth-train distill-vae), or "
                          "the light encoder or decoder alone with the other full. Default: the model's."),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                     help="Initial noise seed."),
        click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="Most rows (ensemble members × images) per network call."),
    ])


def torch_device(name: str) -> str:
    """``--device``: ``auto`` is CUDA when PyTorch sees a GPU, else the CPU; ``cuda`` without a GPU is a usage
    error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu or auto)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def open_pipeline(engine: Path | None, checkpoint: Path | None, device: str = "auto",
                  onnx_threads: int = 0) -> DepthPipeline:
    """The pipeline the model options name: ``--engine`` (backend by what the path is), ``--checkpoint`` (PyTorch on
    ``device``), neither (the bundled model on PyTorch). ``onnx_threads``: ONNX Runtime's intra-op threads (0: its
    default). Usage errors raise :class:`click.UsageError`; a model that cannot be loaded raises FileNotFoundError,
    ValueError, KeyError or RuntimeError naming the file."""
    import torch

    from agdepth.runtime.pipeline import DepthPipeline

    if engine is not None and checkpoint is not None:
        raise click.UsageError("give --engine or --checkpoint, not both")
    if engine is not None and engine.suffix == ".plan":  # TensorRT runs on CUDA; without it the backend says so
        if device == "cpu" and torch.cuda.is_available():
            raise click.UsageError("--device cpu: TensorRT engines run on a CUDA device (drop --device)")
        return DepthPipeline.from_engine(engine)
    dev = torch_device(device)
    if engine is not None:
        return DepthPipeline.from_engine(engine, device=dev, threads=onnx_threads)
    if checkpoint is None:
        from agdepth import default_checkpoint

        checkpoint = default_checkpoint()
    return DepthPipeline.from_checkpoint(checkpoint, device=dev)


def open_run_pipeline(engine: Path | None, checkpoint: Path | None, device: str = "auto") -> DepthPipeline:
    """:func:`open_pipeline` for a run whose reader and writer pools share the CPU with the networks (depth-run,
    depth-batch's actors): ONNX Runtime gets :func:`agdepth.runtime.writer.network_threads`, and where the networks
    run outside PyTorch, PyTorch keeps one thread (its OpenMP threads, idle between the pipeline's few tensor
    operations, would spin on the cores the networks and the pools need)."""
    import torch

    from agdepth.runtime.writer import network_threads

    pipe = open_pipeline(engine, checkpoint, device, onnx_threads=network_threads())
    if not getattr(pipe.backend, "runs_in_torch_threads", True):
        torch.set_num_threads(1)
    return pipe


def output_options(f: F) -> F:
    """``--out``, ``--formats``, ``--recursive``, ``--overwrite``: where and what depth-run and depth-batch write."""
    from agdepth.imageio import OUTPUT_FORMATS

    return _apply(f, [
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs"),
                     show_default=True),
        click.option("--formats", default="png16,npy,color", show_default=True,
                     help=f"Comma-separated outputs: {', '.join(OUTPUT_FORMATS)}."),
        click.option("--recursive", is_flag=True, help="Descend into sub-folders of INPUT folders."),
        click.option("--overwrite", is_flag=True,
                     help="Redo every image and replace existing outputs (inputs are never replaced). Without it, a "
                          "rerun skips images whose outputs are complete."),
    ])


def model_label(engine: Path | None, checkpoint: Path | None) -> str:
    """The model as the outputs record it: the resolved path given, or ``bundled``."""
    given = engine or checkpoint
    return str(given.resolve()) if given is not None else "bundled"
