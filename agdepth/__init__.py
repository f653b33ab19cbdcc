"""agdepth: autoencoder-guided latent-diffusion monocular depth, from training to deployment."""

__version__ = "0.1.0"
