"""agdepth: autoencoder-guided latent-diffusion monocular depth, from training to deployment."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Ranges are chosen to admit the versions this project is tested with (see README) and their minor successors.
# torch is deliberately a lower bound only: the Makefile picks a CPU or CUDA build before installing this package.
INSTALL_REQUIRES = [
    "torch>=2.1",
    "diffusers>=0.32,<0.50",
    "safetensors>=0.4,<1",
    "numpy>=1.24,<3",
    "pillow>=10,<14",
    "scikit-image>=0.22,<0.30",  # offline photographed textures for the procedural scenes
    "tqdm>=4.66,<5",
    "click>=8.1,<9",
    "pyyaml>=6,<7",
    "cmap>=0.8,<1",  # matplotlib's Spectral (ColorBrewer) without matplotlib, for coloured depth
    # deployment: export, graph cleanup (constant folding), fp16 conversion (onnxruntime.transformers), runtime
    "onnx>=1.16,<2",
    "onnxslim>=0.1.40,<0.2",
    # onnxruntime is in the cpu/gpu extras, not here: onnxruntime and onnxruntime-gpu install the same `onnxruntime`
    # module, so a requirement on one would bring the CPU build back over the GPU build on every reinstall
    # 0.53: cosine/SNR compare functions, and libcudart found in the pip CUDA wheels (0.49 has neither)
    "polygraphy>=0.53,<0.60",  # TensorRT engine build and the backend comparator (pure Python; TensorRT optional)
    "matplotlib>=3.7,<4",  # depth-bench frontier's plot (Agg backend, no display needed)
    "plyfile>=1.0,<2",  # point clouds (depth-run --ply): pure Python on numpy
]

EXTRAS = {
    # exactly one of cpu / gpu / gpu-cu13 (the Makefile picks it): ONNX Runtime, and TensorRT for the CUDA of torch.
    # onnxruntime-gpu on PyPI is built for CUDA 11 up to 1.18, CUDA 12 in 1.19-1.26 and CUDA 13 from 1.27.
    "cpu": ["onnxruntime>=1.18,<2"],
    "gpu": ["onnxruntime-gpu>=1.19,<1.27", "tensorrt-cu12>=10.1,<12"],  # CUDA 12; TensorRT >= 10.1 (MIN_VERSION)
    "gpu-cu13": ["onnxruntime-gpu>=1.27,<2", "tensorrt-cu13>=11,<12"],  # CUDA 13
    # video input and output (depth-run clip.mp4, coloured depth videos): PyAV, FFmpeg's libraries in its wheels
    "video": ["av>=14,<20"],
    # beyond one machine: batch inference on Ray Data (depth-batch), a service on Ray Serve (depth-serve)
    "cluster": ["ray[data,serve]>=2.40,<3"],
    # OpenEXR depth maps in a folder dataset (depth-eval --dataset folder, depth-train's folder source, depth-data)
    "exr": ["OpenEXR>=3.2,<4"],
    # CLIP text encoder for the sd2 preset's empty-prompt embedding (computed once, stored in the checkpoint)
    "train": ["transformers>=4.40,<6"],
    # trimesh: the tests read the PLY files back with a library other than the writer
    "dev": ["pytest>=8,<10", "ruff>=0.6", "mypy>=1.10", "import-linter>=2.1,<3", "transformers>=4.40,<6",
            "trimesh>=4,<6"],
}

setup(
    name="agdepth",
    version="0.1.0",
    description="Autoencoder-guided latent diffusion for monocular depth: training, ONNX/TensorRT export, runtime",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["agdepth", "agdepth.*"]),
    # the bundled tiny model ships inside the package (agdepth.default_checkpoint())
    package_data={"agdepth": ["configs/*.yaml", "weights/tiny/*.json", "weights/tiny/*.safetensors",
                              "weights/tiny/*/*.json", "weights/tiny/*/*.safetensors"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": [
        "depth-train=agdepth.training.cli:main",
        "depth-export=agdepth.export.cli:main",
        "depth-run=agdepth.launch:depth_run",
        "depth-bench=agdepth.bench.cli:main",
        "depth-eval=agdepth.evaluation.cli:main",
        "depth-data=agdepth.data.cli:main",
        "depth-doctor=agdepth.doctor:main",
        "depth-batch=agdepth.cluster.batch_cli:main",
        "depth-serve=agdepth.cluster.serve:main",
    ]},
)
