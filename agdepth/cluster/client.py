"""A small client of the ``depth-serve`` service (:mod:`agdepth.cluster.serve`), on the standard library's urllib.

    client = DepthClient("http://127.0.0.1:8000")
    depth = client.depth("photo.jpg")        # float32 [H,W] in [0, 1], via .npy
    png = client.depth_png16(rgb_array)      # the 16-bit PNG's bytes
    client.health()                          # {"status": "ok", "settings": ..., "batch_sizes": ...}

An image is a path, the bytes of an image file, or a uint8 [H,W,3] / [H,W] array (sent as a PNG). Every HTTP error is
a :class:`DepthServiceError` with the status and the service's one-line reason; so is a service that cannot be
reached (status None).
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from PIL import Image

ImageSource = str | os.PathLike[str] | bytes | np.ndarray


class DepthServiceError(Exception):
    """The service refused or failed a request: ``status`` (None: no answer) and its one-line ``reason``."""

    def __init__(self, status: int | None, reason: str) -> None:
        self.status = status
        self.reason = " ".join(reason.split())
        super().__init__(f"{status}: {self.reason}" if status is not None else self.reason)


def image_bytes(image: ImageSource) -> bytes:
    """The request body for ``image``: a file's bytes as they are, or an array encoded as a PNG."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"an image array must be uint8 [H,W,3] or [H,W], got {image.dtype} {list(image.shape)}")
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)  # fast: loopback, not disk, is the limit
        return buf.getvalue()
    with open(image, "rb") as f:
        return f.read()


class DepthClient:
    """The service at ``url`` (e.g. ``http://127.0.0.1:8000``); ``timeout``: seconds per request."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.last_settings: dict[str, Any] | None = None  # X-Depth-Settings of the last depth answer

    def _request(self, path: str, data: bytes | None = None, accept: str | None = None) -> tuple[bytes, Any]:
        req = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST")
        if data is not None:
            req.add_header("Content-Type", "application/octet-stream")
        if accept is not None:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            with e:
                body = e.read()
            raise DepthServiceError(e.code, _reason(body, e.reason)) from None
        except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timed out
            why = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DepthServiceError(None, f"cannot reach {self.url}: {why}") from None

    def _depth(self, image: ImageSource, fmt: str, accept: str) -> bytes:
        body, headers = self._request(f"/depth?format={fmt}", image_bytes(image), accept)
        settings = headers.get("X-Depth-Settings")
        self.last_settings = json.loads(settings) if settings else None
        return body

    def depth(self, image: ImageSource) -> np.ndarray:
        """The depth of ``image``: float32 [H,W] in [0, 1], at the image's size."""
        body = self._depth(image, "npy", "application/x-npy")
        return np.load(io.BytesIO(body), allow_pickle=False)

    def depth_png16(self, image: ImageSource) -> bytes:
        """The depth of ``image`` as a 16-bit greyscale PNG holding ``round(depth * 65535)``."""
        return self._depth(image, "png16", "image/png")

    def health(self) -> dict[str, Any]:
        """The service's ``GET /health``: status, settings, limits, batch-size histogram."""
        body, _ = self._request("/health")
        return json.loads(body)


def _reason(body: bytes, fallback: str) -> str:
    """The service's ``{"error": ...}``, else the body's text, else the HTTP reason phrase."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or str(fallback)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"]
    return text or str(fallback)


__all__ = ["DepthClient", "DepthServiceError", "image_bytes"]
