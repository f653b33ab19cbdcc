"""agdepth: autoencoder-guided latent-diffusion monocular depth, from training to deployment."""

from pathlib import Path

__version__ = "0.1.0"

_BUNDLED = Path(__file__).resolve().parent / "weights" / "tiny"


def default_checkpoint() -> Path:
    """The bundled tiny model (a diffusers-layout checkpoint trained by this project's own recipe)."""
    if not (_BUNDLED / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled checkpoint is missing from {_BUNDLED}: reinstall agdepth, or train one with "
            "`depth-train all --config tiny --out runs/tiny` and pass runs/tiny/checkpoint"
        )
    return _BUNDLED
