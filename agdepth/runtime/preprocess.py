"""Image pre/post-processing, operation for operation as diffusers' ``MarigoldImageProcessor``.

Input: to float, divide by the dtype's maximum ([0, 1]), map to [-1, 1], resize so the longer edge equals the
processing resolution (``F.interpolate`` with antialiasing for bilinear/bicubic), replicate-pad bottom/right to a
multiple of 8. Output: drop the padding, resize back to the input size (no antialiasing). Same order as diffusers, so
float results agree with its pipeline, not just approximately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESAMPLE_METHODS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


@dataclass(frozen=True)
class PreparedImage:
    """One image after :func:`preprocess` (``DepthPipeline.prepare``): normalised, resized and padded for one set of
    preprocessing settings. A pipeline call given it skips that work, so it can run ahead on other threads."""

    image: torch.Tensor  # [1,3,PPH,PPW] in [-1,1], padded
    padding: tuple[int, int]  # (bottom, right) rows/columns of padding
    original_size: tuple[int, int]  # (H, W) of the input
    settings: tuple[Any, ...]  # what it was prepared for: see :func:`preprocess_settings`


# numpy channels-last, torch channels-first (diffusers' layouts), or already prepared
ImageInput = Image.Image | np.ndarray | torch.Tensor | PreparedImage


@dataclass
class SizeGroup:
    """Input images of one size, preprocessed together."""

    indices: list[int]  # positions in the caller's image list
    image: torch.Tensor  # [n,3,PPH,PPW] in [-1,1], padded
    padding: tuple[int, int]  # (bottom, right) rows/columns of padding
    original_size: tuple[int, int]  # (H, W) of the inputs


def as_image_list(images: Any) -> list[ImageInput]:
    """One image, a batch ([N,H,W,C] array, [N,C,H,W] tensor) or a list of either -> a list of single images."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        return [one for img in images for one in as_image_list(img)]
    if isinstance(images, (Image.Image, PreparedImage)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim not in (2, 3, 4):
            raise ValueError(f"image arrays must be 2-, 3- or 4-dimensional, got shape {tuple(images.shape)}")
        return list(images) if images.ndim == 4 else [images]
    raise TypeError(f"expected a PIL image, a numpy array, a torch tensor or a list of them, got "
                    f"{type(images).__name__}")


def image_size(image: ImageInput) -> tuple[int, int]:
    """(H, W) of a PIL image, a [H,W(,C)] array, a [(C,)H,W] tensor or a prepared image's input, without converting
    it."""
    if isinstance(image, PreparedImage):
        return image.original_size
    if isinstance(image, Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, torch.Tensor) and image.ndim >= 2:
        return int(image.shape[-2]), int(image.shape[-1])
    raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A PIL image or numpy array -> [H,W,3] numpy array (dtype kept; PIL modes other than RGB converted).

    PIL RGBA/LA/P/L/I;16… go through ``convert("RGB")`` (alpha dropped, grey replicated). Numpy: [H,W], [H,W,1]
    (replicated, as diffusers does), [H,W,3] or [H,W,4] (alpha dropped, like PIL).
    """
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a PIL image or numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"numpy images must be [H,W], [H,W,1], [H,W,3] or [H,W,4], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image[..., :3]


def load_image_canonical(
    image: ImageInput, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """-> [1,3,H,W] in [0,1] on device/dtype (diffusers' ``load_image_canonical`` order: cast, move, divide)."""
    if isinstance(image, torch.Tensor):
        return _tensor_canonical(image, device, dtype)
    arr = to_rgb_array(image)
    kind = arr.dtype.kind
    if kind not in "uf":  # signed ints, bools, complex: diffusers refuses them too
        raise ValueError(f"unsupported image dtype {arr.dtype}: use unsigned integers or floats in [0, 1]")
    dtype_max = np.iinfo(arr.dtype).max if kind == "u" else None
    t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32, copy=False).transpose(2, 0, 1))[None])
    t = t.to(device=device, dtype=dtype)
    if dtype_max is not None:
        t = t / dtype_max
    elif t.min().item() < 0.0 or t.max().item() > 1.0:
        raise ValueError("float images must lie in [0, 1]")
    return t


def _tensor_canonical(image: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """A [H,W] or [C,H,W] tensor (C = 1 or 3; uint8, or floats in [0, 1]) -> [1,3,H,W], as diffusers loads it."""
    t = image[None] if image.ndim == 3 else image[None, None]
    if t.shape[1] not in (1, 3):
        raise ValueError(f"image tensors must be [H,W], [1,H,W] or [3,H,W] (channels first), got {tuple(image.shape)}")
    if t.shape[1] == 1:
        t = t.repeat(1, 3, 1, 1)
    if not torch.is_floating_point(t) and t.dtype != torch.uint8:
        raise ValueError(f"unsupported image dtype {t.dtype}: use uint8 or floats in [0, 1]")
    dtype_max = 255 if t.dtype == torch.uint8 else None
    t = t.to(device=device, dtype=dtype)
    if dtype_max is not None:
        return t / dtype_max
    if t.min().item() < 0.0 or t.max().item() > 1.0:
        raise ValueError("float images must lie in [0, 1]")
    return t


def resize_to_max_edge(image: torch.Tensor, max_edge: int, mode: str = "bilinear") -> torch.Tensor:
    """[N,C,H,W] -> longer edge = max_edge, sizes floored as diffusers does; antialiased for bilinear/bicubic."""
    h, w = image.shape[-2:]
    longer = max(h, w)
    new_h, new_w = h * max_edge // longer, w * max_edge // longer
    if new_h == 0 or new_w == 0:
        raise ValueError(f"extreme aspect ratio of the input image: [{w} x {h}]")
    return resize(image, (new_h, new_w), mode, antialias=True)


def resize(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """``F.interpolate``; antialiasing only where torch supports it (bilinear/bicubic), as diffusers decides."""
    if mode not in RESAMPLE_METHODS:
        raise ValueError(f"resample method must be one of {RESAMPLE_METHODS}, got {mode!r}")
    antialias = antialias and mode in ("bilinear", "bicubic")
    if image.device.type == "cpu" and image.dtype in (torch.float16, torch.bfloat16):
        # torch's CPU kernels lack half-precision antialiased/bicubic paths: resize in float32 there (on GPUs the
        # pipeline dtype is kept, as diffusers does)
        return F.interpolate(image.float(), size, mode=mode, antialias=antialias).to(image.dtype)
    return F.interpolate(image, size, mode=mode, antialias=antialias)


def processed_size(size: tuple[int, int], processing_resolution: int | None) -> tuple[int, int]:
    """(H, W) after :func:`resize_to_max_edge` (unchanged for None/0), before padding."""
    h, w = size
    if not processing_resolution:
        return h, w
    longer = max(h, w)
    return h * processing_resolution // longer, w * processing_resolution // longer


def pad_to_multiple(image: torch.Tensor, align: int = 8) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad bottom/right so H and W are multiples of ``align``; returns (image, (pad_h, pad_w))."""
    h, w = image.shape[-2:]
    ph, pw = -h % align, -w % align
    return F.pad(image, (0, pw, 0, ph), mode="replicate"), (ph, pw)


def pad_to_size(image: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Replicate-pad bottom/right to exactly ``size`` (a static engine's canvas); returns (image, (pad_h, pad_w))."""
    h, w = image.shape[-2:]
    ph, pw = size[0] - h, size[1] - w
    if ph < 0 or pw < 0:
        raise ValueError(f"a {h}x{w} image does not fit the static canvas {size[0]}x{size[1]}")
    return F.pad(image, (0, pw, 0, ph), mode="replicate"), (ph, pw)


def unpad(image: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pad_to_multiple` on [..., H, W]."""
    ph, pw = padding
    return image[..., : image.shape[-2] - ph, : image.shape[-1] - pw]


def preprocess_settings(processing_resolution: int | None, device: torch.device | str, dtype: torch.dtype,
                        resample_method: str, align: int, canvas: tuple[int, int] | None) -> tuple[Any, ...]:
    """What a :class:`PreparedImage` depends on: one made for other settings is refused, not silently mixed in."""
    return (processing_resolution or 0, torch.device(device), dtype, resample_method, align, canvas)


def preprocess(
    images: Sequence[ImageInput],
    processing_resolution: int | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    resample_method: str = "bilinear",
    align: int = 8,
    canvas: tuple[int, int] | None = None,
) -> list[SizeGroup]:
    """Load, normalise, resize and pad; images of equal size share one group (groups in order of first appearance).

    ``processing_resolution`` None or 0 keeps the native resolution (padding still applies). ``canvas``: pad to this
    (H, W) instead of to a multiple of ``align`` (static engines). :class:`PreparedImage` inputs are taken as they
    are (a ValueError if they were prepared for other settings); each image is resized on its own, so a prepared
    image equals the same image preprocessed in a group.
    """
    if processing_resolution is not None and processing_resolution < 0:
        raise ValueError("processing_resolution must be >= 0 (0 = native resolution)")
    settings = preprocess_settings(processing_resolution, device, dtype, resample_method, align, canvas)
    loaded: dict[int, torch.Tensor] = {}
    prepared: dict[int, PreparedImage] = {}
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        if isinstance(img, PreparedImage):
            if img.settings != settings:
                raise ValueError(f"image {i} was prepared for other settings ({_describe(img.settings)}) than this "
                                 f"call's ({_describe(settings)}): prepare it with the call's settings")
            prepared[i], size = img, img.original_size
        else:
            t = loaded[i] = load_image_canonical(img, device, dtype)
            size = (int(t.shape[-2]), int(t.shape[-1]))
        by_size.setdefault(size, []).append(i)
    groups = []
    for size, indices in by_size.items():
        fresh = [i for i in indices if i in loaded]
        padding = (0, 0)
        if fresh:
            x = torch.cat([loaded[i] for i in fresh], dim=0)  # a new tensor: normalised in place
            x = x.mul_(2.0).sub_(1.0)  # diffusers normalises before resizing (x * 2 - 1, the same roundings)
            if processing_resolution:
                x = resize_to_max_edge(x, processing_resolution, resample_method)
            x, padding = pad_to_multiple(x, align) if canvas is None else pad_to_size(x, canvas)
        if len(fresh) < len(indices):  # prepared images among them: the rows in input order
            rows = dict(zip(fresh, x.split(1), strict=True)) if fresh else {}
            rows.update((i, prepared[i].image) for i in indices if i in prepared)
            padding = prepared[next(i for i in indices if i in prepared)].padding
            x = torch.cat([rows[i] for i in indices])
        groups.append(SizeGroup(indices=indices, image=x, padding=padding, original_size=size))
    return groups


def _describe(settings: tuple[Any, ...]) -> str:
    res, device, dtype, method, align, canvas = settings
    where = f"canvas {canvas[0]}x{canvas[1]}" if canvas else f"multiple of {align}"
    return f"processing res {res}, {method}, {where}, {str(dtype).removeprefix('torch.')} on {device}"


def prepare(
    images: Sequence[ImageInput],
    processing_resolution: int | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    resample_method: str = "bilinear",
    align: int = 8,
    canvas: tuple[int, int] | None = None,
) -> list[PreparedImage]:
    """:func:`preprocess` per image: one :class:`PreparedImage` per input, in order."""
    settings = preprocess_settings(processing_resolution, device, dtype, resample_method, align, canvas)
    out: list[PreparedImage | None] = [None] * len(images)
    for g in preprocess(images, processing_resolution, device, dtype, resample_method, align, canvas):
        for i, row in zip(g.indices, g.image.split(1), strict=True):
            out[i] = PreparedImage(image=row, padding=g.padding, original_size=g.original_size, settings=settings)
    return out  # type: ignore[return-value]
