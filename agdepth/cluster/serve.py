"""Depth as an HTTP service on Ray Serve (``depth-serve``): replicas each holding one
:class:`~agdepth.cluster.predictor.DepthPredictor`, with requests from many clients batched into pipeline calls.

Endpoints (a loopback address by default; there is no authentication, so expose it only behind something that has):

* ``POST /depth``: the body is an image file (PNG, JPEG, TIFF, BMP, WebP, GIF), decoded as ``depth-run`` reads files
  (:mod:`agdepth.imageio`: EXIF orientation applied, alpha dropped, 16-bit kept). The answer is the depth, [H,W] at
  the input size, as a 16-bit PNG (``image/png``, ``round(depth * 65535)`` as
  :func:`agdepth.imageio.write_depth_png16` writes it) or as ``.npy`` bytes (``application/x-npy``, float32), by
  ``?format=png16|npy`` or else by the ``Accept`` header (default png16). The header ``X-Depth-Settings`` holds the
  settings used (JSON: model, steps, ensemble, timestep_spacing, processing_res, vae, seed). Every image is predicted
  with the service's seed at index 0: exactly ``DepthPredictor(spec).predict([image], [0])``, however requests are
  batched.
* ``GET /health``: JSON with ``status: ok``, the settings, the limits and the replica's histogram of batch sizes.

Requests that reach a replica together (up to ``max_batch_size``, waiting at most ``batch_wait_timeout_s`` for more)
are predicted in one pipeline call (``@serve.batch``). Bad requests are answered with a 4xx status and a one-line
JSON body ``{"error": reason}``, and the replica keeps serving: empty body 400, not an image 415, corrupt image 400,
more pixels than ``max_pixels`` 413 (read from the header, before decoding), a body over ``max_body_bytes`` 413
(from Content-Length, else while reading), an unknown ``?format`` 400, an ``Accept`` that allows neither format 406,
a wrong method 405, an unknown path 404; an image the model refuses (e.g. a size an engine cannot take) 422.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image, ImageOps

from agdepth import imageio
from agdepth.cluster.predictor import DepthPredictor, ModelSpec
from agdepth.cluster.ray_env import LOCAL, init_ray
from agdepth.runtime.options import inference_options, model_options

try:
    import ray
    from ray import serve
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
except ImportError as exc:  # the cluster extra is optional; say which one this needs
    raise ImportError("depth-serve needs Ray Serve: pip install 'agdepth[cluster]' (ray[data,serve])") from exc

logger = logging.getLogger("ray.serve")  # Serve's logger: lines land in the replica's log with its request ids

APP_NAME = "agdepth-depth"
MEDIA_TYPES: dict[str, str] = {"png16": "image/png", "npy": "application/x-npy"}
SETTINGS_HEADER = "X-Depth-Settings"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_S = 0.01
DEFAULT_MAX_BODY_BYTES = 32 * 1024**2
DEFAULT_MAX_PIXELS = 16_000_000
# a replica of a whole CPU on a 2-core machine left Serve's proxy and controller starved (measured in this project);
# a fraction keeps them scheduled. Ray also sets a replica's OpenMP (torch) threads to floor(num_cpus), at least 1,
# unless OMP_NUM_THREADS is set: on a larger CPU machine, give replicas whole CPUs.
DEFAULT_NUM_CPUS = 0.5
# the formats depth-run looks for in folders (imageio.IMAGE_EXTENSIONS); no others from a network client, so no
# request can make Pillow run an external program (EPS goes through Ghostscript)
PIL_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "GIF")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) is this machine's loopback interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RequestError(Exception):
    """A request the service refuses: the HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = " ".join(reason.split())
        super().__init__(f"{status}: {self.reason}")


def choose_format(query: str | None, accept: str | None) -> str:
    """``png16`` or ``npy``: the ``?format`` value if given (else 400), else the first of the ``Accept`` header's
    media ranges by quality that one of them matches (none: 406); no header means png16."""
    if query is not None:
        if query not in MEDIA_TYPES:
            raise RequestError(400, f"unknown format {query!r}: use {' or '.join(MEDIA_TYPES)}")
        return query
    if not accept or not accept.strip():
        return "png16"
    ranges: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranges.append((-quality, i, media.lower()))
    for _, _, media in sorted(ranges):
        if media in ("image/png", "image/*", "*/*"):
            return "png16"
        if media in ("application/x-npy", "application/*"):
            return "npy"
    raise RequestError(406, f"Accept {accept!r} allows neither image/png (png16) nor application/x-npy (npy)")


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file's bytes as ``[H,W,3]`` uint8 (uint16 for 16-bit sources), by :func:`agdepth.imageio.read_image`'s
    rules; the pixel count is checked from the header before anything is decoded. Raises :class:`RequestError`."""
    if not data:
        raise RequestError(400, "empty body: send the bytes of an image file (PNG, JPEG, TIFF, ...)")
    try:
        img_file = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"{exc} (refused as a possible decompression bomb)") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's format probes raise many unrelated types for non-images
        raise RequestError(415, f"not an image file, or not one of {', '.join(PIL_FORMATS)}") from exc
    with img_file:
        w, h = img_file.size
        if max_pixels is not None and w * h > max_pixels:
            raise RequestError(413, f"{w}x{h} is {w * h} pixels, over the limit of {max_pixels}")
        try:
            img_file.load()  # decode all now: truncated data must fail here, not become grey pixels
        except MemoryError:
            raise
        except Exception as exc:
            raise RequestError(400, f"corrupt or truncated image data ({imageio.describe_error(exc)})") from exc
        try:
            # read_image's own conversion, so the service and depth-run read pixels the same way
            return imageio.pil_to_array(ImageOps.exif_transpose(img_file))
        except MemoryError:
            raise
        except Exception as exc:  # modes and values read_image refuses (e.g. float images outside [0, 1])
            raise RequestError(400, imageio.describe_error(exc)) from exc


def encode_depth(depth: np.ndarray, fmt: str) -> bytes:
    """A [H,W] depth map in [0, 1] as a response body: a 16-bit PNG as ``write_depth_png16`` writes it, or .npy."""
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, np.asarray(depth, dtype=np.float32), allow_pickle=False)
    else:
        q = np.round(np.clip(np.asarray(depth, dtype=np.float64), 0.0, 1.0) * 65535).astype("<u2")
        Image.fromarray(q).save(buf, format="PNG", compress_level=imageio.PNG_COMPRESS_LEVEL)
    return buf.getvalue()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes: from Content-Length when
    given, else while the chunks arrive, so an oversized upload is never held whole."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise RequestError(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise RequestError(413, f"body of {int(length)} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def keep_replica_grpc_on_loopback() -> bool:
    """On a loopback-only Ray, make this replica's inter-deployment gRPC server listen on the node's loopback address.

    Ray Serve (2.60) opens it on ``[::]:0`` — every interface — whatever the HTTP options say, which would let any
    host that reaches this machine call the deployment past the proxy. Callers reach it at the node's address, so
    binding there changes nothing else. Call in the replica's constructor (the server starts right after it). Returns
    whether the bind was redirected; joined clusters (a routable node address) and Ray versions without this code
    path are left alone."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    node_ip = ray.util.get_node_ip_address()
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or not is_loopback(node_ip) or getattr(original, "_agdepth_loopback", False):
        return False

    def add_port(server: Any, address: str) -> int:
        return original(server, f"{node_ip}:0" if address == "[::]:0" else address)

    add_port._agdepth_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
    return True


@serve.deployment
class DepthService:
    """One replica: the predictor, the request handling and the batch-size counts (see the module docstring)."""

    def __init__(self, spec: ModelSpec, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        keep_replica_grpc_on_loopback()
        self.predictor = DepthPredictor(spec)
        self.settings = self.predictor.settings()
        self.settings_header = json.dumps(self.settings, separators=(",", ":"))  # ASCII: any model path fits
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self.max_body_bytes, self.max_pixels = max_body_bytes, max_pixels
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: Counter[int] = Counter()
        self.answered: Counter[int] = Counter()  # responses by status
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (a direct instantiation): no id to report
            self.replica = ""
        logger.info("depth service replica ready: %s", self.settings_header)

    async def __call__(self, request: Request) -> Response:
        response = await self.route(request)
        self.answered[response.status_code] += 1
        return response

    async def route(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        try:
            if path == "/depth":
                if request.method != "POST":
                    return error_response(405, f"{request.method} /depth: POST the image", {"Allow": "POST"})
                return await self.depth(request)
            if path == "/health":
                if request.method not in ("GET", "HEAD"):
                    return error_response(405, f"{request.method} /health: use GET", {"Allow": "GET, HEAD"})
                return JSONResponse(self.health())
            return error_response(404, f"no endpoint {path}: POST /depth or GET /health")
        except RequestError as e:
            return error_response(e.status, e.reason)
        except Exception as e:  # one request's failure is its answer; the replica keeps serving
            logger.exception("depth request failed")
            return error_response(500, f"{type(e).__name__}: {' '.join(str(e).split())}")

    async def depth(self, request: Request) -> Response:
        fmt = choose_format(request.query_params.get("format"), request.headers.get("accept"))
        body = await read_body(request, self.max_body_bytes)
        # decoding and encoding run off the event loop, so requests keep arriving (and batching) meanwhile
        image = await asyncio.to_thread(decode_image, body, self.max_pixels)
        depth = await self.predict_batch(image)
        if isinstance(depth, ValueError):
            raise RequestError(422, f"the model cannot take this image: {depth}")
        content = await asyncio.to_thread(encode_depth, depth, fmt)
        return Response(content, media_type=MEDIA_TYPES[fmt], headers={SETTINGS_HEADER: self.settings_header})

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_S)
    async def predict_batch(self, images: list[np.ndarray]) -> list[np.ndarray | ValueError]:
        """The images of the requests waiting together, in one pipeline call (each at seed offset 0)."""
        self.batch_sizes[len(images)] += 1
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self._predict, images)  # off the loop: the next batch gathers meanwhile
        logger.info("depth batch of %d image(s) in %.0f ms", len(images), 1000 * (time.perf_counter() - t0))
        return out

    def _predict(self, images: list[np.ndarray]) -> list[np.ndarray | ValueError]:
        try:
            return list(self.predictor.predict(images, [0] * len(images)))
        except ValueError:
            if len(images) == 1:
                raise
        # one image the engines refuse (a size they cannot take) must fail alone, not its whole batch
        out: list[np.ndarray | ValueError] = []
        for img in images:
            try:
                out.append(self.predictor.predict([img], [0])[0])
            except ValueError as e:
                out.append(e)
        return out

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "settings": self.settings,
            "replica": self.replica,
            "max_batch_size": self.max_batch_size,
            "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "limits": {"max_body_bytes": self.max_body_bytes, "max_pixels": self.max_pixels},
            "torch_threads": torch.get_num_threads(),
            "batches": sum(self.batch_sizes.values()),
            "images": sum(n * k for n, k in self.batch_sizes.items()),
            "batch_sizes": {str(n): self.batch_sizes[n] for n in sorted(self.batch_sizes)},
            "responses": {str(s): self.answered[s] for s in sorted(self.answered)},
        }


def build_app(spec: ModelSpec, replicas: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
              batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, num_cpus: float = DEFAULT_NUM_CPUS,
              num_gpus: float = 0.0) -> Application:
    """The Serve application: ``replicas`` replicas of :class:`DepthService`, each of ``num_cpus`` CPUs and
    ``num_gpus`` GPUs (a GPU replica: e.g. 1, or 0.5 for two per GPU)."""
    if replicas < 1 or max_batch_size < 1 or max_body_bytes < 1 or (max_pixels is not None and max_pixels < 1):
        raise ValueError("replicas, max_batch_size, max_body_bytes and max_pixels must be at least 1")
    if batch_wait_timeout_s < 0 or num_cpus <= 0 or num_gpus < 0:
        raise ValueError("batch_wait_timeout_s and num_gpus must be >= 0, num_cpus > 0")
    return DepthService.options(
        num_replicas=replicas,
        # room for a full batch being predicted and the next one gathering (Serve's default of 5 would cap batches)
        max_ongoing_requests=2 * max_batch_size,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_constructor_retry_count=1,  # a model that cannot be opened fails the deployment now, not after 20 tries
    ).bind(spec, max_batch_size, batch_wait_timeout_s, max_body_bytes, max_pixels)


def serve_depth(spec: ModelSpec, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, replicas: int = 1,
                max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s: float = DEFAULT_BATCH_WAIT_S,
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                num_cpus: float = DEFAULT_NUM_CPUS, num_gpus: float = 0.0, address: str | None = None,
                blocking: bool = False) -> DeploymentHandle:
    """Start (``address`` None/local: a loopback-only Ray of this machine) or join Ray, start Serve with its HTTP
    proxy on ``host:port`` (on the head node only), and run the app; returns its handle once it is running
    (``blocking``: runs until Ctrl-C instead). Serve keeps its first HTTP options while it runs: a Serve already
    started on the cluster with others keeps them (``serve.shutdown()`` first)."""
    init_ray(address)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    except Exception as e:  # e.g. the port is taken: the proxy actor's error, a traceback ending in the reason
        raise RuntimeError(f"Serve's HTTP proxy did not start on {host}:{port}: {_last_line(str(e))}") from e
    app = build_app(spec, replicas, max_batch_size, batch_wait_timeout_s, max_body_bytes, max_pixels, num_cpus,
                    num_gpus)
    try:
        return serve.run(app, name=APP_NAME, route_prefix="/", blocking=blocking)
    except RuntimeError as e:  # Serve says only "failed to update the deployments"; the replica's error says why
        raise RuntimeError(f"the depth service did not start: {_deploy_failure() or e}") from e


def stop_service(address: str | None) -> None:
    """Stop what :func:`serve_depth` started: all of Serve on a local Ray, only this app on a joined cluster (its
    Serve may hold other applications)."""
    if not ray.is_initialized():
        return
    if address in (None, LOCAL):
        serve.shutdown()
    else:
        serve.delete(APP_NAME)


def _deploy_failure() -> str:
    """The last line of the failed deployment's message (the replica constructor's exception), or ''."""
    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:
        return ""
    for deployment in (app.deployments.values() if app else ()):
        if deployment.message:
            return _last_line(deployment.message)
    return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@inference_options
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address the HTTP proxy listens on. The service has no authentication: anything but a loopback "
                   "address (e.g. 0.0.0.0) opens it to every machine that can reach this one.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Replicas, each holding the model.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=DEFAULT_MAX_BATCH_SIZE, show_default=True,
              help="Most requests a replica predicts together (--batch-size still caps rows per network call).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=1000 * DEFAULT_BATCH_WAIT_S,
              show_default=True, help="Longest a request waits for others to share its batch.")
@click.option("--max-body-mib", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_BODY_BYTES / 1024**2,
              show_default=True, help="Largest request body; larger ones are refused (413).")
@click.option("--max-megapixels", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_PIXELS / 1e6,
              show_default=True, help="Largest image, checked before decoding; larger ones are refused (413).")
@click.option("--num-cpus", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_NUM_CPUS, show_default=True,
              help="CPUs per replica. Fractions leave room for Serve's proxy and controller on a small machine; "
                   "Ray also gives a replica floor(this) OpenMP/torch threads, at least 1, unless OMP_NUM_THREADS is "
                   "set.")
@click.option("--num-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per replica on a GPU machine (e.g. 1, or 0.5 for two replicas per GPU).")
@click.option("--address", default=LOCAL, show_default=True,
              help="Ray cluster to join (`ray start --head` prints it; auto: RAY_ADDRESS), or local: a Ray of this "
                   "machine, bound to the loopback interface.")
def main(engine: Path | None, checkpoint: Path | None, device: str, steps: int | None, ensemble: int | None,
         timestep_spacing: str | None, processing_res: int | None, vae: str | None, seed: int, batch_size: int,
         host: str, port: int, replicas: int, max_batch_size: int, batch_wait_ms: float, max_body_mib: float,
         max_megapixels: float, num_cpus: float, num_gpus: float, address: str) -> None:
    """Serve depth over HTTP on Ray Serve: POST an image to /depth, get its depth (16-bit PNG or .npy)."""
    if engine is not None and not engine.exists():
        raise click.UsageError(f"--engine {engine}: no such file or folder")
    spec = ModelSpec(engine=None if engine is None else str(engine.resolve()),
                     checkpoint=None if checkpoint is None else str(checkpoint.resolve()), device=device, steps=steps,
                     ensemble=ensemble, timestep_spacing=timestep_spacing, processing_res=processing_res, vae=vae,
                     seed=seed, batch_size=batch_size)
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}: anyone who can reach this machine can use the service (no "
                   "authentication)", err=True)
    try:
        serve_depth(spec, host, port, replicas, max_batch_size, batch_wait_ms / 1000, int(max_body_mib * 1024**2),
                    int(max_megapixels * 1e6), num_cpus, num_gpus, address)
    except (RuntimeError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        stop_service(address)
        raise SystemExit(2) from None
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"depth service at {url} ({replicas} replica(s), Ray at {address}); health: {url}/health; "
               "Ctrl-C stops it")
    click.echo(f"try: curl --data-binary @photo.jpg {url}/depth -o depth.png   (npy: {url}/depth?format=npy)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping the service")
    finally:
        stop_service(address)


__all__ = ["DepthService", "RequestError", "build_app", "choose_format", "decode_image", "encode_depth", "main",
           "serve_depth", "stop_service"]


if __name__ == "__main__":
    main()
