"""depth-serve on a local Ray bound to the loopback interface: one replica of the bundled model (PyTorch, CPU) serving
concurrent clients with dynamic batching. Every answer is the depth ``DepthPredictor.predict([image], [0])`` gives
alone; batches larger than one form under load; each bad request gets its 4xx and a one-line reason, and the replica
keeps serving; nothing Ray or Serve opened listens beyond the loopback interface.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import json
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="needs the cluster extra (ray[serve])")

from agdepth.cluster.client import DepthClient, DepthServiceError  # noqa: E402
from agdepth.cluster.predictor import DepthPredictor, ModelSpec  # noqa: E402
from agdepth.cluster.ray_env import init_ray  # noqa: E402
from agdepth.cluster.serve import choose_format, decode_image, main, serve_depth  # noqa: E402
from agdepth.data.procedural import EVAL_DOMAINS, render_scene  # noqa: E402

SIZE = (48, 64)
SCENES = 16
CLIENTS, REQUESTS = 8, 25
# small limits, so refusals are tested with small bodies: 256 KiB of body, 1 MP of image
MAX_BODY = 256 * 1024
MAX_PIXELS = 1_000_000
READY_S = 60  # the proxy may take a moment after serve.run to route the new app; only a hang guard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, size=SIZE, split="test").rgb for i in range(SCENES)]


@pytest.fixture(scope="module")
def references(images: list[np.ndarray]) -> list[np.ndarray]:
    """Each image predicted alone, in this process: what every answer must equal."""
    predictor = DepthPredictor(ModelSpec())
    return [predictor.predict([img], [0])[0] for img in images]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = init_ray(temp_dir=tmp_path_factory.mktemp("ray"))
    from ray import serve

    port = free_port()
    try:
        serve_depth(ModelSpec(), host="127.0.0.1", port=port, replicas=1, max_batch_size=8,
                    batch_wait_timeout_s=0.01, max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_S
        while True:
            try:
                DepthClient(url, timeout=5).health()
                break
            except DepthServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_concurrent_clients_get_each_image_s_own_depth_and_batches_form(
        service: str, images: list[np.ndarray], references: list[np.ndarray]) -> None:
    encoded = [png_bytes(img) for img in images]

    def run_client(c: int) -> list[tuple[int, str, object, dict | None]]:
        client = DepthClient(service, timeout=120)
        answers = []
        for r in range(REQUESTS):
            k = (c * REQUESTS + r) % SCENES
            if (c + r) % 2:
                answers.append((k, "npy", client.depth(encoded[k]), client.last_settings))
            else:
                answers.append((k, "png16", client.depth_png16(encoded[k]), client.last_settings))
        return answers

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [a for answers in pool.map(run_client, range(CLIENTS)) for a in answers]
    assert len(results) == CLIENTS * REQUESTS  # every request answered 200 (any other status raises)
    for k, fmt, answer, settings in results:
        ref = references[k]
        assert settings is not None and settings["seed"] == 0 and settings["model"] == "bundled"
        if fmt == "npy":
            assert isinstance(answer, np.ndarray) and answer.dtype == np.float32 and answer.shape == ref.shape
            np.testing.assert_allclose(answer, ref, rtol=0, atol=1e-6)
        else:
            png = np.asarray(Image.open(io.BytesIO(answer)))
            assert png.dtype == np.uint16 and png.shape == ref.shape
            # the served depth is within 1e-6 of ref, so its rounding may differ by one step at a .5 boundary
            diff = np.abs(png.astype(np.int64) - np.round(ref.astype(np.float64) * 65535).astype(np.int64))
            assert diff.max() <= 1
    health = DepthClient(service).health()
    assert health["status"] == "ok"
    sizes = {int(n): count for n, count in health["batch_sizes"].items()}
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8
    assert health["images"] >= CLIENTS * REQUESTS


def test_png16_is_the_rounded_npy_and_settings_are_reported(service: str, images: list[np.ndarray],
                                                            references: list[np.ndarray]) -> None:
    client = DepthClient(service)
    depth = client.depth(images[3])  # an array, sent as PNG; alone, so exactly the reference computation
    np.testing.assert_allclose(depth, references[3], rtol=0, atol=1e-6)
    png = np.asarray(Image.open(io.BytesIO(client.depth_png16(images[3]))))
    np.testing.assert_array_equal(png, np.round(depth.astype(np.float64) * 65535).astype(np.uint16))
    health = client.health()
    assert client.last_settings == health["settings"]
    assert set(health["settings"]) >= {"model", "steps", "ensemble", "processing_res", "vae", "seed"}
    assert health["limits"] == {"max_body_bytes": MAX_BODY, "max_pixels": MAX_PIXELS}


def _truncated_png(images: list[np.ndarray]) -> bytes:
    data = png_bytes(images[0])
    return data[: len(data) // 2]


def _chunks(total: int, size: int = 16 * 1024):
    for start in range(0, total, size):
        yield b"\0" * min(size, total - start)


# (name, method, path, body factory, headers, status)
BAD_REQUESTS = [
    ("empty body", "POST", "/depth", lambda im: b"", {}, 400),
    ("not an image", "POST", "/depth", lambda im: b"hello, this is text\n" * 10, {}, 415),
    ("truncated image", "POST", "/depth", _truncated_png, {}, 400),
    ("too many pixels", "POST", "/depth", lambda im: png_bytes(np.zeros((1000, 1001), np.uint8)), {}, 413),
    ("body over the limit", "POST", "/depth", lambda im: b"\0" * (MAX_BODY + 1), {}, 413),
    ("chunked body over the limit", "POST", "/depth", lambda im: _chunks(MAX_BODY + 64 * 1024),
     {"Transfer-Encoding": "chunked"}, 413),
    ("unknown format", "POST", "/depth?format=jpeg", lambda im: png_bytes(im[0]), {}, 400),
    ("unacceptable Accept", "POST", "/depth", lambda im: png_bytes(im[0]), {"Accept": "text/html"}, 406),
    ("GET /depth", "GET", "/depth", lambda im: None, {}, 405),
    ("POST /health", "POST", "/health", lambda im: b"x", {}, 405),
    ("unknown path", "GET", "/nowhere", lambda im: None, {}, 404),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "headers", "status"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_with_a_reason_and_the_replica_keeps_serving(
        service: str, images: list[np.ndarray], references: list[np.ndarray], name: str, method: str, path: str,
        body, headers: dict[str, str], status: int) -> None:
    host, port = service.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        content = body(images)
        conn.request(method, path, body=content, headers=headers,
                     encode_chunked=headers.get("Transfer-Encoding") == "chunked")
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == status, (name, text)
    reason = json.loads(text)["error"]
    assert reason and "\n" not in reason, reason
    depth = DepthClient(service).depth(images[1])  # the replica still answers, with the right depth
    np.testing.assert_allclose(depth, references[1], rtol=0, atol=1e-6)


def test_client_raises_the_status_and_reason(service: str) -> None:
    with pytest.raises(DepthServiceError) as err:
        DepthClient(service).depth(b"not an image")
    assert err.value.status == 415 and "not an image" in err.value.reason
    with pytest.raises(DepthServiceError) as err:
        DepthClient(f"http://127.0.0.1:{free_port()}", timeout=5).health()
    assert err.value.status is None and "cannot reach" in err.value.reason


# ----------------------------------------------------------------------------------------------------- loopback only
def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _listening_sockets() -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, int]]:
    """(address, port, inode) of every listening TCP socket in this network namespace (Linux /proc/net)."""
    found = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net", table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(addr_hex)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # host-order 32-bit words
            found.append((ipaddress.ip_address(raw), int(port_hex, 16), int(fields[9])))
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    out: set[int] = set()
    todo = [root]
    while todo:
        for child in children[todo.pop()]:
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    return inodes


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net")
def test_ray_and_serve_listen_on_the_loopback_interface_only(service: str) -> None:
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    port = int(service.rsplit(":", 1)[1])
    listening = _listening_sockets()
    proxy = {str(ip) for ip, p, _ in listening if p == port}
    assert proxy == {"127.0.0.1"}, proxy  # the HTTP proxy, and nothing else on its port
    ours = _socket_inodes(_descendants(os.getpid()) | {os.getpid()})  # this test's Ray: started by this process
    exposed = sorted(f"{ip}:{p}" for ip, p, inode in listening if inode in ours and not _is_loopback(ip))
    assert not exposed, f"Ray/Serve processes of this test listen beyond the loopback interface: {exposed}"


# ----------------------------------------------------------------------------------------------------- no Ray needed
@pytest.mark.parametrize(("query", "accept", "fmt"), [
    (None, None, "png16"), (None, "*/*", "png16"), (None, "application/x-npy", "npy"),
    (None, "image/png;q=0.5, application/x-npy", "npy"), (None, "text/html, image/*;q=0.1", "png16"),
    ("npy", "image/png", "npy"), ("png16", "application/x-npy", "png16"),
])
def test_format_is_the_query_else_the_accept_header(query: str | None, accept: str | None, fmt: str) -> None:
    assert choose_format(query, accept) == fmt


def test_decode_image_reads_as_imageio_does(tmp_path: Path) -> None:
    from agdepth.imageio import read_image

    rgba = np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    grey16 = (np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    for name, img in (("rgba.png", Image.fromarray(rgba)), ("grey16.png", Image.fromarray(grey16))):
        img.save(tmp_path / name)
        np.testing.assert_array_equal(decode_image((tmp_path / name).read_bytes()), read_image(tmp_path / name))


def test_depth_serve_spells_the_shared_options_as_depth_run() -> None:
    from agdepth.runtime.cli import main as run_main

    mine = {o: p for p in main.params for o in p.opts}
    ref = {o: p for p in run_main.params for o in p.opts}
    for opt in ("--engine", "--checkpoint", "--device", "--steps", "--ensemble", "--timestep-spacing",
                "--processing-res", "--vae", "--seed", "--batch-size"):
        assert (mine[opt].name, mine[opt].default) == (ref[opt].name, ref[opt].default), opt
    assert mine["--host"].default == "127.0.0.1"
