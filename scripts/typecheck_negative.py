"""Deliberate misuse that mypy MUST reject (scripts/typecheck_tensorrt.sh checks every line marked ``expect-error``).

If mypy accepts one of these lines, Polygraphy or torch resolved to ``Any`` in .venv-types and the type check of the
TensorRT code proves nothing about those calls. Never imported or run.

Not checkable this way: CreateConfig's keywords (``profiles=``, ``builder_optimization_level=`` ...), which its
``__init__`` passes on through ``**kwargs`` under an untyped decorator, so mypy accepts any keyword there.
"""

import torch
from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

network = NetworkFromOnnxPath("unet.onnx", strongly_typd=True)  # expect-error: misspelt keyword
Profile().add("sample", min=(1, 8, 4, 4), opt=(1, 8, 8, 8), maximum=(2, 8, 16, 16))  # expect-error: it is `max`
plan = EngineBytesFromNetwork(network, None, "timing.cache", "extra")  # expect-error: too many arguments
latent = torch.zeros(1, 4, 8, 8, dtyp=torch.float16)  # expect-error: misspelt keyword
size: str = torch.ones(1).numel()  # expect-error: numel() returns int
