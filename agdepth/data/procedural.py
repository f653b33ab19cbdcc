"""Fast procedural RGB-D scene generator (vectorised numpy ray casting).

Scenes are built from a handful of analytic primitives (infinite planes, axis-aligned boxes, vertical capped
cylinders, spheres), textured with world-space UVs, lit by one light (Lambertian + ambient) with cast shadows.
Depth is *planar* z (distance along the optical axis) in metres: camera rays are generated with a camera-space
z component of exactly 1, so the ray parameter of the first hit is the z-depth itself.

Domains: ``indoor`` and ``street`` (scene layouts) and ``shapes`` (FlyingThings-style textured primitives under any
camera) are for training; ``forest`` and ``tabletop`` are unseen evaluation domains with different geometry, a
disjoint set of texture sources, and camera statistics (FOV, height, pitch) unlike the layout domains'.

Seeding: a scene is a pure function of ``(domain, split, index, size)``. The integer scene seed is
``SPLIT_BASE[split] + index`` with ``index`` in ``[0, 2**30)``: train uses seeds ``[0, 2**30)``, test
``[2**30, 2**31)``, val ``[2**31, 3 * 2**30)``, so splits can never produce the same scene. The RNG is
``numpy.random.default_rng([crc32(domain), seed])`` (a SeedSequence), so domains are independent too. Outputs are
bitwise reproducible for a given numpy version and platform.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

SPLIT_BASE: dict[str, int] = {"train": 0, "test": 2**30, "val": 2**31}
SPLIT_SPAN = 2**30
# Sky (rays that hit nothing) is invalid but needs a depth value for the training target: Virtual KITTI's sky value,
# which the target normaliser clips to far. Hits outside the domain's range are invalid too and keep their depth.
SKY_DEPTH = 655.35
_SEED_STRIDE = 2**20  # ProceduralDataset: scene indices per (domain, dataset seed) block
_EPS = 1e-4
_TEX_SIZE = 128
_TEX_LEVELS = 5  # mip levels 128 .. 8 texels; picking a level per pixel avoids shimmering far-away texture noise
_TRAIN_PHOTOS = ("brick", "camera", "coffee", "astronaut", "text", "coins")
_EVAL_PHOTOS = ("grass", "gravel", "moon", "chelsea", "rocket")
_COLOUR_PHOTOS = ("coffee", "astronaut", "chelsea", "rocket")


# ----------------------------------------------------------------------------------------------------- textures
def _fractal(rng: np.random.Generator, s: int, beta: float, aniso: float = 1.0) -> np.ndarray:
    """Tileable 1/f^beta noise in [0, 1] (FFT synthesis is periodic by construction); aniso>1 smooths along v."""
    fy = np.fft.fftfreq(s)[:, None] * aniso
    fx = np.fft.rfftfreq(s)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f ** (beta / 2)
    spec[0, 0] = 0.0
    img = np.fft.irfft2(spec, s=(s, s))
    return (img - img.min()) / (img.max() - img.min())


def _procedural_textures(rng: np.random.Generator) -> dict[str, np.ndarray]:
    s = _TEX_SIZE
    x, y = np.meshgrid(np.arange(s) / s, np.arange(s) / s)
    k = 4
    cell = (y * k).astype(int), (x * k).astype(int)
    grout = ((x * k) % 1 < 0.06) | ((y * k) % 1 < 0.06)
    tex = {
        # training sources
        "noise": 0.55 + 0.45 * _fractal(rng, s, 2.2),
        "stripes": 0.6 + 0.25 * (np.sin(2 * np.pi * 4 * x) > 0) + 0.15 * _fractal(rng, s, 1.5),
        "tiles": np.where(grout, 0.35, rng.uniform(0.7, 1.0, (k, k))[cell] * (0.9 + 0.1 * _fractal(rng, s, 2.5))),
        "wood": 0.6 + 0.2 * np.sin(2 * np.pi * (6 * x + 1.5 * _fractal(rng, s, 3.0, 6.0)))
        + 0.2 * _fractal(rng, s, 1.0, 8.0),
        "checker": np.where((cell[0] + cell[1]) % 2 == 0, 0.5, 0.95) + 0.05 * _fractal(rng, s, 2.0),
        # unseen-domain sources (never used by training domains)
        "bark": 0.25 + 0.75 * _fractal(rng, s, 2.0, 6.0) ** 1.5,
        "marble": 0.55 + 0.4 * np.abs(np.sin(2 * np.pi * (2 * x + y) + 6 * _fractal(rng, s, 2.2))),
        "leaves": 0.25 + 0.75 * np.clip((_fractal(rng, s, 0.9) - 0.45) * 4, 0, 1) * (0.7 + 0.3 * _fractal(rng, s, 2)),
    }
    # periodic Voronoi cells: distance to the nearest of 20 sites, with wrap-around
    pts = rng.random((20, 2))
    d = np.abs(np.stack([x, y], -1)[:, :, None, :] - pts)
    d = np.minimum(d, 1 - d)
    dist = np.sort(np.hypot(d[..., 0], d[..., 1]), -1)
    shade = rng.uniform(0.5, 1.0, 20)[np.argmin(np.hypot(d[..., 0], d[..., 1]), -1)]
    tex["cells"] = shade * (0.6 + 0.4 * np.clip((dist[..., 1] - dist[..., 0]) * 15, 0, 1))
    return {n: np.repeat(np.clip(t, 0, 1)[..., None], 3, -1).astype(np.float32) for n, t in tex.items()}


def _photo(name: str) -> np.ndarray:
    import skimage.data
    import skimage.transform

    img = getattr(skimage.data, name)().astype(np.float32) / 255.0
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]
    h, w = img.shape[:2]
    m = min(h, w)
    img = img[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    img = skimage.transform.resize(img, (_TEX_SIZE, _TEX_SIZE), anti_aliasing=True)
    return (img * (0.6 / max(img.mean(), 0.05))).clip(0, 1).astype(np.float32)  # equalise brightness across photos


@functools.cache
def _texture_bank() -> tuple[dict[str, int], tuple[np.ndarray, ...]]:
    """Module-level cache: name -> id, and a mip pyramid of float32 [T, S_l, S_l, 3] arrays (built once, ~0.3 s)."""
    tex = _procedural_textures(np.random.default_rng(20240611))
    tex.update({n: _photo(n) for n in _TRAIN_PHOTOS + _EVAL_PHOTOS})
    names = sorted(tex)
    levels = [np.stack([tex[n] for n in names])]
    for _ in range(_TEX_LEVELS - 1):
        t, s = levels[-1].shape[:2]
        levels.append(levels[-1].reshape(t, s // 2, 2, s // 2, 2, 3).mean((2, 4)))
    return {n: i for i, n in enumerate(names)}, tuple(levels)


# ----------------------------------------------------------------------------------------------------- geometry
@dataclass
class Camera:
    """Pinhole camera; yaw turns +z towards +x, pitch > 0 looks up, roll about the optical axis (radians)."""

    position: np.ndarray
    yaw: float
    pitch: float
    roll: float
    hfov: float  # horizontal field of view

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation; columns are the camera's right, up and forward axes."""
        cy, sy, cp, sp, cr, sr = (f(a) for a in (self.yaw, self.pitch, self.roll) for f in (np.cos, np.sin))
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
        rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return ry @ rx @ rz

    def intrinsics(self, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        f = 0.5 * w / np.tan(0.5 * self.hfov)
        return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float32)


@dataclass
class Light:
    vec: np.ndarray  # unit direction towards the light, or the light position when point=True
    point: bool = False
    intensity: float = 0.8
    ambient: float = 0.3
    falloff: float = 4.0  # point lights: distance (m) at which irradiance halves


@dataclass
class Geometry:
    planes: np.ndarray  # [P, 4] unit normal n and offset o of {p : n.p = o}
    boxes: np.ndarray  # [B, 6] lo xyz, hi xyz
    cylinders: np.ndarray  # [C, 5] cx, cz, radius, y0, y1 (vertical, top cap only)
    spheres: np.ndarray  # [S, 4] centre xyz, radius
    materials: np.ndarray  # [P+B+C+S, 6] texture id, metres per texture tile, tint rgb, uv offset


class _Builder:
    def __init__(self, rng: np.random.Generator, spec: DomainSpec) -> None:
        self.rng, self.spec = rng, spec
        self.prims: list[list[np.ndarray]] = [[], [], [], []]
        self.mats: list[list[np.ndarray]] = [[], [], [], []]
        self.count = 0

    def mat(self, role: str, scale: float) -> np.ndarray:
        names, base, jitter = self.spec.textures[role]
        name = str(self.rng.choice(names))
        jitter *= 0.4 if name in _COLOUR_PHOTOS else 1.0  # photos already carry colour
        tint = np.asarray(base) * self.rng.uniform(1 - jitter, 1 + jitter, 3) * self.rng.uniform(0.75, 1.1)
        return np.array([_texture_bank()[0][name], scale, *tint.clip(0.05, 1.2), self.rng.uniform(0, 8)], np.float32)

    def _add(self, kind: int, prim: npt.ArrayLike, mat: np.ndarray) -> None:
        self.prims[kind].append(np.asarray(prim, np.float32))
        self.mats[kind].append(mat)
        self.count += 1

    def plane(self, n: npt.ArrayLike, o: float, mat: np.ndarray) -> None:
        nv = np.asarray(n, np.float64)
        norm = np.linalg.norm(nv)
        self._add(0, np.append(nv / norm, o / norm), mat)

    def box(self, lo: npt.ArrayLike, hi: npt.ArrayLike, mat: np.ndarray) -> None:
        self._add(1, np.append(np.minimum(lo, hi), np.maximum(lo, hi)), mat)

    def cylinder(self, cx: float, cz: float, r: float, y0: float, y1: float, mat: np.ndarray) -> None:
        self._add(2, [cx, cz, r, y0, y1], mat)

    def sphere(self, c: npt.ArrayLike, r: float, mat: np.ndarray) -> None:
        self._add(3, np.append(c, r), mat)

    def build(self) -> Geometry:
        widths = (4, 6, 5, 4)
        arr = [np.stack(p) if p else np.zeros((0, w), np.float32) for p, w in zip(self.prims, widths, strict=True)]
        return Geometry(arr[0], arr[1], arr[2], arr[3], np.stack([m for ms in self.mats for m in ms]))


def _intersect(geo: Geometry, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameters t [N, n_prims] of the first hit with t > eps (inf = miss); o is [1, 3] or [N, 3]."""
    ts = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if len(geo.planes):
            n = geo.planes[:, :3].T
            ts.append((geo.planes[:, 3] - o @ n) / (d @ n))
        if len(geo.boxes):  # slab method over rays x boxes, one axis at a time (small-axis reductions are slow)
            tn, tf = np.full((len(d), len(geo.boxes)), -np.inf, np.float32), np.inf
            for k in range(3):
                inv = 1.0 / d[:, k:k + 1]
                t1 = (geo.boxes[:, k] - o[:, k:k + 1]) * inv
                t2 = (geo.boxes[:, k + 3] - o[:, k:k + 1]) * inv
                tn, tf = np.maximum(tn, np.minimum(t1, t2)), np.minimum(tf, np.maximum(t1, t2))
            # entry point, or the exit point when the origin is inside the box
            ts.append(np.where(tf >= tn, np.where(tn > _EPS, tn, tf), np.inf))
        if len(geo.cylinders):
            cx, cz, r, y0, y1 = geo.cylinders.T
            ox, oy, oz = o[:, 0:1] - cx, o[:, 1:2], o[:, 2:3] - cz
            dx, dy, dz = d[:, 0:1], d[:, 1:2], d[:, 2:3]
            a = np.maximum(dx * dx + dz * dz, 1e-12)
            b = ox * dx + oz * dz
            disc = b * b - a * (ox * ox + oz * oz - r * r)
            sq = np.sqrt(np.maximum(disc, 0))
            side = np.full(disc.shape, np.inf, np.float32)
            for t in ((-b + sq) / a, (-b - sq) / a):  # near root last so it wins when both are in range
                y = oy + t * dy
                side = np.where((disc >= 0) & (t > _EPS) & (y >= y0) & (y <= y1), t, side)
            tc = (y1 - oy) / dy
            cap = (tc > _EPS) & ((ox + tc * dx) ** 2 + (oz + tc * dz) ** 2 <= r * r)
            ts.append(np.minimum(side, np.where(cap, tc, np.inf)))
        if len(geo.spheres):  # per-axis accumulation keeps float32 precise (no |o|^2 - 2 o.c + |c|^2 cancellation)
            b = cc = 0.0
            for k in range(3):
                ock = o[:, k:k + 1] - geo.spheres[:, k]
                b, cc = b + d[:, k:k + 1] * ock, cc + ock * ock
            a = (d * d).sum(1, keepdims=True)
            disc = b * b - a * (cc - geo.spheres[:, 3] ** 2)
            sq = np.sqrt(np.maximum(disc, 0))
            t0 = (-b - sq) / a
            ts.append(np.where(disc >= 0, np.where(t0 > _EPS, t0, (-b + sq) / a), np.inf))
        t = np.concatenate(ts, 1).astype(np.float32, copy=False)
        return np.where(t > _EPS, t, np.inf)  # also maps NaN (degenerate 0 * inf) to a miss


def _surface(geo: Geometry, p: np.ndarray, pid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometric normal and world-space texture coordinates (metres) at hit points p of primitives pid."""
    counts = [len(geo.planes), len(geo.boxes), len(geo.cylinders), len(geo.spheres)]
    kind = np.repeat(np.arange(4), counts)[pid]  # 0 plane, 1 box, 2 cylinder, 3 sphere
    local = pid - np.concatenate([[0], np.cumsum(counts)])[kind]
    n = np.zeros_like(p)
    m = kind == 0
    n[m] = geo.planes[local[m], :3]
    m = np.flatnonzero(kind == 1)
    if len(m):  # box face = the bounding coordinate the hit point is closest to
        bx = geo.boxes[local[m]]
        face = np.abs(np.concatenate([p[m], p[m]], 1) - bx).argmin(1)
        n[m, face % 3] = np.where(face < 3, -1.0, 1.0)
    radial = np.zeros(len(p), bool)
    m = np.flatnonzero(kind == 2)
    if len(m):
        cx, cz, r = geo.cylinders[local[m], :3].T
        dx, dz = p[m, 0] - cx, p[m, 2] - cz
        side = dx * dx + dz * dz > (r * 0.998) ** 2  # points strictly inside the rim lie on the top cap
        n[m] = np.where(side[:, None], np.stack([dx / r, 0 * dx, dz / r], 1), [0.0, 1.0, 0.0])
        radial[m] = side
    m = np.flatnonzero(kind == 3)
    if len(m):
        n[m] = (p[m] - geo.spheres[local[m], :3]) / geo.spheres[local[m], 3:]
        radial[m] = True
    # planar faces: drop the dominant normal axis; curved surfaces: arc length around y and height
    axis = np.abs(n).argmax(1)
    u = np.where(axis == 0, p[:, 2], p[:, 0])
    v = np.where(axis == 1, p[:, 2], -p[:, 1])
    r = np.zeros(len(p), np.float32)
    r[kind == 2] = geo.cylinders[local[kind == 2], 2]
    r[kind == 3] = geo.spheres[local[kind == 3], 3]
    u = np.where(radial, np.arctan2(n[:, 2], n[:, 0]) * r, u)
    return n, np.stack([u, v], 1)


def _sample_texture(mat: np.ndarray, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup with mirrored tiling; mip level from the pixel footprint in texels."""
    _, levels = _texture_bank()
    tid, scale = mat[:, 0].astype(np.int64), mat[:, 1:2]
    tuv = uv / scale + mat[:, 5:6]
    lvl = np.clip(np.round(np.log2(np.maximum(footprint / scale[:, 0] * _TEX_SIZE, 1e-6))), 0, _TEX_LEVELS - 1)
    out = np.empty((len(uv), 3), np.float32)
    for lv, tex in enumerate(levels):  # one gather per mip level
        m = np.flatnonzero(lvl == lv)
        if len(m):
            s = tex.shape[1]
            i = np.floor(tuv[m] * s).astype(np.int64) % (2 * s)
            i = np.where(i >= s, 2 * s - 1 - i, i)
            out[m] = tex[tid[m], i[:, 1], i[:, 0]]
    return out * mat[:, 2:5]


@dataclass
class RenderOutput:
    rgb: np.ndarray  # float32 [H, W, 3] linear-ish radiance, not clipped
    depth: np.ndarray  # float32 [H, W] planar z; inf where no surface was hit
    hit: np.ndarray  # bool [H, W]


def render_geometry(geo: Geometry, cam: Camera, size: tuple[int, int], light: Light, *, shadows: bool = True,
                    sky: tuple[Sequence[float], Sequence[float]] = ((0.75, 0.8, 0.85), (0.35, 0.55, 0.9)),
                    fog: float = np.inf) -> RenderOutput:
    """Ray cast one ray per pixel (size = (H, W)); sky = (horizon, zenith) colours; fog = extinction length (m)."""
    h, w = size
    f = float(cam.intrinsics(size)[0, 0])
    dc = np.empty((h, w, 3), np.float32)
    dc[..., 0] = (np.arange(w, dtype=np.float32) + 0.5 - 0.5 * w) / f
    dc[..., 1] = -(np.arange(h, dtype=np.float32)[:, None] + 0.5 - 0.5 * h) / f
    dc[..., 2] = 1.0  # camera-space z = 1 makes the ray parameter equal to planar depth
    d = dc.reshape(-1, 3) @ cam.rotation().T.astype(np.float32)
    o = np.asarray(cam.position, np.float32)[None]
    tt = _intersect(geo, o, d)
    pid = tt.argmin(1)
    t = np.take_along_axis(tt, pid[:, None], 1)[:, 0]
    hit = np.isfinite(t)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    horizon, zenith = np.asarray(sky[0], np.float32), np.asarray(sky[1], np.float32)
    rgb = horizon + (zenith - horizon) * np.sqrt(np.clip(dn[:, 1:2], 0, 1))
    hi = np.flatnonzero(hit)
    th, dh, pid = t[hi], d[hi], pid[hi]
    p = o + th[:, None] * dh
    n, uv = _surface(geo, p, pid)
    cos = (n * dn[hi]).sum(1)
    n[cos > 0] *= -1  # shade the side facing the camera (room walls, inside of surfaces)
    # texel footprint grows with distance and at grazing angles (capped to keep floors from blurring out)
    footprint = th * np.linalg.norm(dh, axis=1) / f / np.maximum(np.abs(cos), 0.3)
    albedo = _sample_texture(geo.materials[pid], uv, footprint)
    if light.point:
        lv = np.asarray(light.vec, np.float32) - p
        dist = np.linalg.norm(lv, axis=1, keepdims=True)
        ldir, tmax = lv / dist, 1.0
        irr = light.intensity / (1 + (dist[:, 0] / light.falloff) ** 2)
    else:
        ldir = np.broadcast_to(np.asarray(light.vec, np.float32), p.shape)
        lv, tmax, irr = ldir, np.inf, light.intensity
    ndl = np.clip((n * ldir).sum(1), 0, None) * irr
    if shadows:  # any-hit shadow rays from lit points (offset along the normal to avoid self-intersection)
        m = np.flatnonzero(ndl > 0)
        so = p[m] + n[m] * (1e-3 + 1e-4 * th[m, None])
        blocked = (_intersect(geo, so, np.ascontiguousarray(lv[m])) < tmax).any(1)
        ndl[m[blocked]] = 0.0
    col = albedo * (light.ambient * (0.75 + 0.25 * n[:, 1:2]) + ndl[:, None])
    if np.isfinite(fog):
        a = np.exp(-th * np.linalg.norm(dh, axis=1) / fog)[:, None]
        col = col * a + horizon * (1 - a)
    rgb[hi] = col
    return RenderOutput(rgb.reshape(h, w, 3), t.reshape(h, w), hit.reshape(h, w))


# ------------------------------------------------------------------------------------------------------ domains
@dataclass
class Layout:
    geo: Geometry
    camera: Camera
    light: Light
    sky: tuple[tuple[float, ...], tuple[float, ...]] = ((0.75, 0.8, 0.85), (0.35, 0.55, 0.9))
    fog: float = np.inf


@dataclass
class DomainSpec:
    """Per-domain camera statistics, metric range and texture sources; ``build`` samples a Layout."""

    name: str
    role: str  # "train" or "eval"
    hfov_deg: tuple[float, float]
    height: tuple[float, float]  # camera height above the ground (above the table top for tabletop)
    pitch_deg: tuple[float, float]
    roll_deg: float  # max |roll|
    yaw_deg: float  # max |yaw| around the domain's reference heading
    depth_range: tuple[float, float]
    # surface role -> (texture sources, base tint rgb, per-channel tint jitter)
    textures: dict[str, tuple[tuple[str, ...], tuple[float, float, float], float]]
    build: Callable[[np.random.Generator, DomainSpec], Layout] = field(repr=False)


def _camera(rng: np.random.Generator, spec: DomainSpec, pos: npt.ArrayLike, yaw0: float = 0.0) -> Camera:
    rad = np.deg2rad
    return Camera(np.asarray(pos, np.float64), yaw0 + rad(rng.uniform(-spec.yaw_deg, spec.yaw_deg)),
                  rad(rng.uniform(*spec.pitch_deg)), rad(rng.uniform(-spec.roll_deg, spec.roll_deg)),
                  rad(rng.uniform(*spec.hfov_deg)))


def _sun(rng: np.random.Generator, elev_deg: tuple[float, float], az: float | None = None) -> np.ndarray:
    el, az = np.deg2rad(rng.uniform(*elev_deg)), rng.uniform(0, 2 * np.pi) if az is None else az
    return np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])


def _build_indoor(rng: np.random.Generator, spec: DomainSpec) -> Layout:
    b = _Builder(rng, spec)
    w, dp, h = rng.uniform(3, 7), rng.uniform(3.5, 8), rng.uniform(2.4, 3.2)
    wall = b.mat("wall", rng.uniform(1, 3))
    b.plane((0, 1, 0), 0, b.mat("floor", rng.uniform(0.6, 2)))
    b.plane((0, -1, 0), -h, b.mat("ceiling", 2.0))
    for n, o in (((1, 0, 0), 0), ((-1, 0, 0), -w), ((0, 0, 1), 0), ((0, 0, -1), -dp)):
        b.plane(n, o, wall if rng.random() < 0.7 else b.mat("wall", rng.uniform(1, 3)))
    cam = np.array([rng.uniform(0.5, w - 0.5), rng.uniform(*spec.height), rng.uniform(0.3, min(1.2, dp / 3))])

    def wall_box(side: int, a0: float, a1: float, o0: float, o1: float, y0: float, y1: float) -> tuple:
        # (along-wall, out-of-wall) coordinates -> world AABB, for the walls x=0, x=w, z=dp, z=0
        xs = ((o0, o1), (w - o1, w - o0), (a0, a1), (a0, a1))[side]
        zs = ((a0, a1), (a0, a1), (dp - o1, dp - o0), (o0, o1))[side]
        return (xs[0], y0, zs[0]), (xs[1], y1, zs[1])

    target = rng.integers(8, 19)
    for _ in range(25):
        if b.count >= target:
            break
        kind = rng.choice(["table", "cabinet", "shelf", "bed", "sofa", "lamp", "ball", "picture"])
        side = int(rng.integers(4))
        along = w if side >= 2 else dp
        ln = rng.uniform(0.6, min(2.2, along - 0.4))
        a0 = rng.uniform(0.1, along - ln - 0.1)
        parts: list[tuple] = []
        if kind in ("cabinet", "shelf"):
            dep, top = (rng.uniform(0.4, 0.6), rng.uniform(0.8, 2.0)) if kind == "cabinet" else (0.3, h - 0.3)
            parts = [(*wall_box(side, a0, a0 + ln, 0, dep, 0, top), kind)]
        elif kind == "bed":
            ln2 = rng.uniform(1.9, 2.1)
            parts = [(*wall_box(side, a0, a0 + ln, 0, ln2, 0, 0.45), "bed"),
                     (*wall_box(side, a0, a0 + ln, 0, 0.08, 0, 1.0), "furniture"),
                     (*wall_box(side, a0 + 0.1, a0 + ln - 0.1, 0.1, 0.45, 0.45, 0.6), "bed")]
        elif kind == "sofa":
            dep = rng.uniform(0.8, 0.95)
            parts = [(*wall_box(side, a0, a0 + ln, 0, dep, 0, 0.42), "sofa"),
                     (*wall_box(side, a0, a0 + ln, 0, 0.2, 0, 0.85), "sofa"),
                     (*wall_box(side, a0, a0 + 0.2, 0, dep, 0, 0.6), "sofa"),
                     (*wall_box(side, a0 + ln - 0.2, a0 + ln, 0, dep, 0, 0.6), "sofa")]
        elif kind == "picture":
            y0 = rng.uniform(1.0, 1.5)
            parts = [(*wall_box(side, a0, a0 + min(ln, 1.2), 0, 0.03, y0, y0 + rng.uniform(0.4, 0.9)), "picture")]
        else:  # free-standing: table, lamp, ball
            sx, sz = rng.uniform(0.8, 1.8), rng.uniform(0.6, 1.0)
            x0, z0 = rng.uniform(0.2, w - sx - 0.2), rng.uniform(0.2, dp - sz - 0.2)
            if kind == "table":
                th = rng.uniform(0.7, 0.78)
                parts = [((x0, th - 0.04, z0), (x0 + sx, th, z0 + sz), "furniture")]
                parts += [((x, 0, z), (x + 0.05, th - 0.04, z + 0.05), "furniture")
                          for x in (x0 + 0.03, x0 + sx - 0.08) for z in (z0 + 0.03, z0 + sz - 0.08)]
            else:
                sx = sz = 2 * rng.uniform(0.12, 0.3)
                parts = [((x0, 0, z0), (x0 + sx, rng.uniform(0.3, 1.7) if kind == "lamp" else sx, z0 + sz), kind)]
        # keep a clear zone around the camera so it never starts inside (or touching) furniture
        if any(lo[0] - 0.5 < cam[0] < hi[0] + 0.5 and lo[2] - 0.5 < cam[2] < hi[2] + 0.5 for lo, hi, _ in parts):
            continue
        for lo, hi, role in parts:
            if role == "lamp":
                b.cylinder((lo[0] + hi[0]) / 2, (lo[2] + hi[2]) / 2, (hi[0] - lo[0]) / 2, 0, hi[1],
                           b.mat("furniture", 0.5))
            elif role == "ball":
                r = (hi[0] - lo[0]) / 2
                b.sphere(((lo[0] + hi[0]) / 2, r, (lo[2] + hi[2]) / 2), r, b.mat("furniture", 0.5))
            else:
                b.box(lo, hi, b.mat("picture" if role == "picture" else "furniture", 1.0 if role == "picture" else 0.8))
    lamp = np.array([rng.uniform(0.5, w - 0.5), h - rng.uniform(0.4, 0.8), rng.uniform(dp / 3, dp - 0.5)])
    light = Light(lamp, point=True, intensity=rng.uniform(0.8, 1.2), ambient=rng.uniform(0.2, 0.35),
                  falloff=rng.uniform(3, 6))
    return Layout(b.build(), _camera(rng, spec, cam, np.deg2rad(rng.choice([0, 15, -15]))), light)


def _build_street(rng: np.random.Generator, spec: DomainSpec) -> Layout:
    b = _Builder(rng, spec)
    road, walk, curb = rng.uniform(6, 12), rng.uniform(1.5, 4), rng.uniform(0.1, 0.2)
    b.plane((0, 1, 0), 0, b.mat("road", rng.uniform(2, 4)))
    for s in (-1, 1):
        b.box((s * road / 2, 0, -20), (s * (road / 2 + walk), curb, 200), b.mat("sidewalk", rng.uniform(1, 2)))
        z = rng.uniform(-15, -5)
        for _ in range(int(rng.integers(2, 5))):
            wid, x0 = rng.uniform(8, 25), road / 2 + walk + rng.uniform(0, 2)
            b.box((s * x0, 0, z), (s * (x0 + rng.uniform(10, 20)), rng.uniform(5, 30), z + wid),
                  b.mat("building", rng.uniform(3, 8)))
            z += wid + (rng.uniform(2, 8) if rng.random() < 0.3 else 0)
    if rng.random() < 0.3:  # street closed by a far building
        zf = rng.uniform(60, 120)
        b.box((-60, 0, zf), (60, rng.uniform(8, 40), zf + 20), b.mat("building", rng.uniform(3, 8)))
    for _ in range(int(rng.integers(1, 4))):
        s = rng.choice([-1, 1])
        x = s * (road / 2 - 1.1) if rng.random() < 0.5 else s * road / 4 + rng.uniform(-0.3, 0.3)
        ln, wd, hb, z = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9), rng.uniform(0.55, 0.8), rng.uniform(5, 50)
        paint = b.mat("vehicle", 2.0)
        b.box((x - wd / 2 + 0.1, 0, z + 0.5), (x + wd / 2 - 0.1, 0.3, z + ln - 0.5), b.mat("tyre", 1.0))
        b.box((x - wd / 2, 0.25, z), (x + wd / 2, 0.25 + hb, z + ln), paint)
        if rng.random() < 0.8:  # cabin
            b.box((x - wd / 2 + 0.1, 0.25 + hb, z + 0.3 * ln), (x + wd / 2 - 0.1, 0.75 + hb, z + 0.8 * ln), paint)
    for _ in range(int(rng.integers(0, 4))):
        b.cylinder(rng.choice([-1, 1]) * (road / 2 + 0.4), rng.uniform(3, 60), rng.uniform(0.08, 0.15), 0,
                   rng.uniform(4, 8), b.mat("pole", 1.0))
    cam = (rng.uniform(-road / 4, road / 4), rng.uniform(*spec.height), 0.0)
    light = Light(_sun(rng, (20, 65)), intensity=rng.uniform(0.8, 1.1), ambient=rng.uniform(0.25, 0.4))
    sky = ((0.8, 0.85, 0.9), tuple(rng.uniform([0.3, 0.45, 0.75], [0.5, 0.65, 0.95])))
    return Layout(b.build(), _camera(rng, spec, cam), light, sky, fog=rng.uniform(150, 400))


def _build_forest(rng: np.random.Generator, spec: DomainSpec) -> Layout:
    b = _Builder(rng, spec)
    sx, sz = rng.uniform(-0.12, 0.12, 2)  # gently sloped terrain y = sx * x + sz * z

    def ground(x: float, z: float) -> float:
        return sx * x + sz * z

    b.plane((-sx, 1, -sz), 0, b.mat("ground", rng.uniform(1, 3)))
    crowns = 0
    for _ in range(int(rng.integers(10, 18))):
        x, z = rng.uniform(-12, 12), rng.uniform(1, 28)
        if np.hypot(x, z) < 1.5:
            continue
        r, top = np.exp(rng.uniform(np.log(0.1), np.log(0.6))), rng.uniform(3, 12)
        y0 = ground(x, z) - 0.3
        b.cylinder(x, z, r, y0, y0 + top, b.mat("trunk", rng.uniform(0.5, 1.5)))
        if crowns < 5 and rng.random() < 0.5:
            rc = rng.uniform(1.2, 3.5)
            b.sphere((x, y0 + top + 0.3 * rc, z), rc, b.mat("crown", rng.uniform(1, 3)))
            crowns += 1
    for _ in range(int(rng.integers(0, 4))):
        x, z, r = rng.uniform(-8, 8), rng.uniform(2, 20), rng.uniform(0.2, 0.8)
        b.sphere((x, ground(x, z) - 0.3 * r, z), r, b.mat("rock", rng.uniform(0.5, 1.5)))
    cam = (0.0, ground(0, 0) + rng.uniform(*spec.height), 0.0)
    light = Light(_sun(rng, (15, 45)), intensity=rng.uniform(0.9, 1.2), ambient=rng.uniform(0.15, 0.3))
    sky = ((0.78, 0.8, 0.72), tuple(rng.uniform([0.45, 0.55, 0.65], [0.6, 0.7, 0.85])))
    return Layout(b.build(), _camera(rng, spec, cam), light, sky, fog=rng.uniform(25, 60))


def _build_tabletop(rng: np.random.Generator, spec: DomainSpec) -> Layout:
    b = _Builder(rng, spec)
    th, tw, td = rng.uniform(0.7, 0.8), rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.0)
    b.plane((0, 1, 0), 0, b.mat("floor", rng.uniform(0.5, 1.5)))
    b.plane((0, 0, -1), -(td / 2 + rng.uniform(0.2, 1.2)), b.mat("wall", rng.uniform(0.5, 2)))
    top = b.mat("table", rng.uniform(0.3, 1.0))
    b.box((-tw / 2, th - 0.04, -td / 2), (tw / 2, th, td / 2), top)
    for x in (-tw / 2 + 0.03, tw / 2 - 0.08):
        for z in (-td / 2 + 0.03, td / 2 - 0.08):
            b.box((x, 0, z), (x + 0.05, th - 0.04, z + 0.05), top)
    ax, az = min(tw / 2 - 0.1, 0.4), td / 2 - 0.12
    for _ in range(int(rng.integers(3, 9))):
        x, z, kind = rng.uniform(-ax, ax), rng.uniform(-az, az), rng.integers(3)
        m = b.mat("object", rng.uniform(0.08, 0.3))
        if kind == 0:
            hx, hz = rng.uniform(0.03, 0.12, 2)
            b.box((x - hx, th, z - hz), (x + hx, th + rng.uniform(0.03, 0.3), z + hz), m)
        elif kind == 1:
            b.cylinder(x, z, rng.uniform(0.025, 0.07), th, th + rng.uniform(0.06, 0.25), m)
        else:
            r = rng.uniform(0.03, 0.1)
            b.sphere((x, th + r, z), r, m)
    # look at a point near the table centre from the front; keep the camera beyond the table's front edge
    cam = _camera(rng, spec, (0, 0, 0))
    hh, tx, tz = rng.uniform(*spec.height), rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.15)
    dist = max(hh / np.tan(-cam.pitch), (tz + td / 2) / np.cos(cam.yaw) + 0.1)
    cam.pitch = -np.arctan2(hh, dist)
    cam.position = np.array([tx - np.sin(cam.yaw) * dist, th + hh, tz - np.cos(cam.yaw) * dist])
    # light from the camera side: the back wall is an infinite plane and must not occlude it
    light = Light(_sun(rng, (35, 75), rng.uniform(0.6, 1.4) * np.pi), intensity=rng.uniform(0.8, 1.1),
                  ambient=rng.uniform(0.2, 0.35))
    return Layout(b.build(), cam, light)


def _build_shapes(rng: np.random.Generator, spec: DomainSpec) -> Layout:
    # FlyingThings-style: textured primitives at random distances in front of a random camera, with an optional
    # ground and a far backdrop. No room or street layout to memorise, so depth must come from the image itself.
    b = _Builder(rng, spec)
    cam = _camera(rng, spec, (0.0, rng.uniform(*spec.height), 0.0), rng.uniform(-np.pi, np.pi))
    if rng.random() < 0.75:
        b.plane((0, 1, 0), 0, b.mat("ground", rng.uniform(0.5, 4)))
    rot, far = cam.rotation(), np.exp(rng.uniform(np.log(4), np.log(60)))
    back = rot[:, 2] * np.array([1, 0.3, 1])  # backdrop roughly facing the camera, never horizontal
    back /= np.linalg.norm(back)
    b.plane(-back, -(back @ cam.position + far), b.mat("backdrop", rng.uniform(1, 6)))
    tan_h = np.tan(cam.hfov / 2)
    for _ in range(int(rng.integers(4, 16))):
        u, v = rng.uniform(-1.1, 1.1, 2) * tan_h
        ray = rot @ np.array([u, v, 1.0])
        dist = np.exp(rng.uniform(np.log(0.6), np.log(0.8 * far)))
        c = cam.position + dist * ray
        size = dist * tan_h * np.exp(rng.uniform(np.log(0.05), np.log(0.5)))
        m = b.mat("object", rng.uniform(0.1, 1.0) * size)
        kind = rng.integers(3)
        if kind == 0:
            half = size * rng.uniform(0.3, 1.0, 3)
            b.box(c - half, c + half, m)
        elif kind == 1:
            r = size * rng.uniform(0.2, 0.6)
            b.cylinder(c[0], c[2], r, c[1] - size, c[1] + size * rng.uniform(0.2, 1.0), m)
        else:
            b.sphere(c, size * rng.uniform(0.4, 0.8), m)
    light = Light(_sun(rng, (10, 80)), intensity=rng.uniform(0.7, 1.2), ambient=rng.uniform(0.15, 0.4))
    sky = ((0.8, 0.85, 0.9), tuple(rng.uniform([0.3, 0.45, 0.6], [0.6, 0.7, 0.95])))
    return Layout(b.build(), cam, light, sky)


_GREY = (0.85, 0.85, 0.85)
DOMAINS: dict[str, DomainSpec] = {
    "indoor": DomainSpec(
        "indoor", "train", (55, 75), (1.2, 1.7), (-20, 5), 3, 35, (0.1, 12.0),
        {"floor": (("wood", "tiles", "checker", "noise"), (0.8, 0.65, 0.5), 0.25),
         "wall": (("noise", "stripes", "brick", "text"), (0.9, 0.88, 0.82), 0.2),
         "ceiling": (("noise",), (0.95, 0.95, 0.95), 0.05),
         "furniture": (("wood", "noise", "checker", "coins", "stripes"), (0.75, 0.6, 0.45), 0.35),
         "picture": (("astronaut", "coffee", "camera"), _GREY, 0.1)}, _build_indoor),
    "street": DomainSpec(
        "street", "train", (50, 80), (1.4, 2.2), (-10, 5), 2, 20, (0.5, 80.0),
        {"road": (("noise",), (0.45, 0.45, 0.47), 0.05), "sidewalk": (("tiles", "brick"), (0.75, 0.72, 0.7), 0.1),
         "building": (("brick", "tiles", "stripes", "text", "camera", "noise"), (0.85, 0.75, 0.65), 0.3),
         "vehicle": (("noise", "checker", "stripes", "coffee"), (0.7, 0.7, 0.75), 0.5),
         "tyre": (("noise",), (0.2, 0.2, 0.2), 0.0), "pole": (("noise",), (0.5, 0.5, 0.5), 0.05)}, _build_street),
    "shapes": DomainSpec(
        "shapes", "train", (30, 100), (0.3, 3.0), (-60, 30), 10, 0, (0.05, 80.0),
        {"ground": (("wood", "tiles", "checker", "noise", "brick"), (0.7, 0.65, 0.55), 0.3),
         "backdrop": (("noise", "stripes", "brick", "text", "camera"), (0.8, 0.8, 0.8), 0.3),
         "object": (("wood", "noise", "checker", "coins", "stripes", "tiles", "astronaut", "coffee"), _GREY, 0.5)},
        _build_shapes),
    "forest": DomainSpec(
        "forest", "eval", (75, 100), (0.4, 1.2), (-8, 15), 6, 30, (0.2, 60.0),
        {"ground": (("grass", "gravel", "leaves"), (0.55, 0.65, 0.35), 0.15),
         "trunk": (("bark",), (0.5, 0.38, 0.28), 0.15), "crown": (("leaves", "moon"), (0.35, 0.6, 0.25), 0.2),
         "rock": (("gravel", "moon", "marble"), (0.7, 0.7, 0.68), 0.1)}, _build_forest),
    "tabletop": DomainSpec(
        "tabletop", "eval", (25, 45), (0.3, 0.9), (-55, -25), 4, 30, (0.05, 5.0),
        {"floor": (("marble", "cells"), (0.7, 0.65, 0.6), 0.15), "wall": (("moon", "cells"), (0.9, 0.88, 0.85), 0.1),
         "table": (("marble", "bark", "gravel"), (0.8, 0.7, 0.6), 0.2),
         "object": (("chelsea", "rocket", "cells", "marble", "leaves", "grass"), _GREY, 0.5)}, _build_tabletop),
}
TRAIN_DOMAINS: tuple[str, ...] = ("indoor", "street", "shapes")
DEFAULT_SOURCE_DOMAINS: tuple[str, ...] = ("indoor", "street")  # a training source that names no domains
EVAL_DOMAINS: tuple[str, ...] = ("forest", "tabletop")
DEPTH_RANGES: dict[str, tuple[float, float]] = {k: v.depth_range for k, v in DOMAINS.items()}


# ------------------------------------------------------------------------------------------------- public API
@dataclass
class Scene:
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W] metres (planar z); sky = SKY_DEPTH; invalid where ~valid
    valid: np.ndarray  # bool [H, W]
    domain: str
    seed: int  # SPLIT_BASE[split] + index
    intrinsics: np.ndarray | None = None  # float32 [3, 3] pinhole K in pixels


def scene_seed(split: str, index: int) -> int:
    """Integer scene seed; disjoint ranges per split (see module docstring)."""
    if split not in SPLIT_BASE:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_BASE)}")
    if not 0 <= index < SPLIT_SPAN:
        raise ValueError(f"index must be in [0, 2**30), got {index}")
    return SPLIT_BASE[split] + int(index)


CAMERA_FIELDS = ("hfov_deg", "height", "pitch_deg", "roll_deg", "yaw_deg")
CameraOverrides = tuple[tuple[str, "float | tuple[float, float]"], ...]


def camera_overrides(camera: dict[str, Any] | None) -> CameraOverrides | None:
    """Validate ``{field: value}`` replacements of a domain's camera statistics (see DomainSpec) into the hashable
    form that ``sample_layout`` takes; ranges are (low, high), roll_deg and yaw_deg are a maximum |angle|."""
    if not camera:
        return None
    out: list[tuple[str, float | tuple[float, float]]] = []
    for name, value in sorted(camera.items()):
        if name not in CAMERA_FIELDS:
            raise ValueError(f"unknown camera field {name!r}; valid fields: {', '.join(CAMERA_FIELDS)}")
        if name in ("roll_deg", "yaw_deg"):
            out.append((name, float(value)))
            continue
        lo, hi = (float(v) for v in value)
        limit = {"hfov_deg": (0, 180), "pitch_deg": (-90, 90), "height": (0, float("inf"))}[name]
        if not limit[0] < lo <= hi < limit[1]:
            raise ValueError(f"camera {name} must be a range (low, high) inside {limit}, got {value}")
        out.append((name, (lo, hi)))
    return tuple(out)


def sample_layout(domain: str, seed: int, camera: CameraOverrides | None = None) -> Layout:
    """Geometry, camera and light of a scene (before rendering); useful for inspecting camera statistics.

    ``camera`` (from ``camera_overrides``) replaces some of the domain's camera statistics; the random draws stay
    the same, so a scene keeps its geometry and only the camera changes.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    spec = DOMAINS[domain] if not camera else replace(DOMAINS[domain], **dict(camera))
    return spec.build(np.random.default_rng([zlib.crc32(domain.encode()), seed]), spec)


def render_scene(domain: str, index: int, size: tuple[int, int] = (128, 128), split: str = "train", *,
                 shadows: bool = True, camera: CameraOverrides | None = None) -> Scene:
    """Render scene ``index`` of ``domain``/``split`` at size (H, W); a deterministic function of its arguments.

    ``camera``: see ``sample_layout``."""
    seed = scene_seed(split, index)
    lay = sample_layout(domain, seed, camera)  # raises ValueError for unknown domains
    out = render_geometry(lay.geo, lay.camera, size, lay.light, shadows=shadows, sky=lay.sky, fog=lay.fog)
    rgb, depth, valid = _finish(out, domain, seed, size)
    return Scene(rgb, depth, valid, domain, seed, lay.camera.intrinsics(size))


def _finish(out: RenderOutput, domain: str, seed: int, size: tuple[int, int],
            frame: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera effects and targets of a rendered frame: (rgb uint8, depth float32 with sky = SKY_DEPTH, valid).

    Gain, vignetting and the noise level are per scene; the sensor noise of ``frame`` 0 continues their stream
    (as ``render_scene``), later frames of a sequence draw fresh noise from their own stream."""
    lo, hi = DEPTH_RANGES[domain]
    valid = out.hit & (out.depth >= lo) & (out.depth <= hi)
    # camera effects from a separate stream so they never perturb the layout sampling
    rng = np.random.default_rng([zlib.crc32(domain.encode()), seed, 1])
    h, w = size
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    gain = rng.uniform(0.9, 1.15) * (1 - rng.uniform(0, 0.3) * (xx**2 + yy**2) / 2)
    sigma = rng.uniform(0.003, 0.015)
    if frame:
        rng = np.random.default_rng([zlib.crc32(domain.encode()), seed, 1, frame])
    img = out.rgb * gain[..., None].astype(np.float32) + rng.normal(0, sigma, out.rgb.shape)
    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    depth = np.where(out.hit, out.depth, SKY_DEPTH).astype(np.float32)
    return rgb, depth, valid


# Rendered scenes kept in memory for `ProceduralDataset(cache=True)`: ~130 KB each at 128x128, so the bound is ~2.6 GB.
# A scene is a pure function of its arguments, so a hit returns exactly what rendering would.
_render_cached = functools.lru_cache(maxsize=20_000)(render_scene)


class ProceduralDataset(torch.utils.data.Dataset):
    """Map-style dataset over procedural scenes, in the project's common sample-dict format.

    Item ``i`` renders ``domains[i % len(domains)]`` with scene index ``(seed % 1024) * 2**20 + i // len(domains)``,
    so datasets whose seeds differ modulo 1024 never share scenes. ``hflip`` flips rgb/depth/valid together with
    probability 0.5, deterministically given ``(seed, i)``. ``cache=True`` keeps rendered scenes in memory (shared by
    every dataset of the process, up to 20 000 scenes): use it with a small ``length`` to train for many epochs on a
    fixed pool without paying for rendering again. ``camera`` replaces camera statistics of the domains, e.g.
    ``{"pitch_deg": (-45, 5)}`` (see ``camera_overrides``).
    """

    def __init__(self, domains: str | Sequence[str], length: int, size: tuple[int, int] = (128, 128),
                 split: str = "train", hflip: bool = False, seed: int = 0, cache: bool = False,
                 camera: dict[str, Any] | None = None) -> None:
        self.domains = (domains,) if isinstance(domains, str) else tuple(domains)
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown or not self.domains:
            raise ValueError(f"unknown domains {unknown}; valid domains: {', '.join(DOMAINS)}")
        if seed < 0 or not 0 <= length <= len(self.domains) * _SEED_STRIDE:
            raise ValueError(f"need seed >= 0 and 0 <= length <= len(domains) * 2**20, got {seed=}, {length=}")
        scene_seed(split, 0)  # validates split
        self.length, self.split, self.hflip, self.seed, self.cache = length, split, hflip, seed, cache
        self.size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.camera = camera_overrides(camera)

    def __len__(self) -> int:
        return self.length

    def locate(self, i: int) -> tuple[str, int]:
        """(domain, scene index) of item i."""
        n = len(self.domains)
        return self.domains[i % n], self.seed % (SPLIT_SPAN // _SEED_STRIDE) * _SEED_STRIDE + i // n

    def __getitem__(self, i: int) -> dict:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        domain, index = self.locate(i)
        s = (_render_cached if self.cache else render_scene)(domain, index, self.size, self.split,
                                                             camera=self.camera)
        # numpy, not torch, for these small ops: torch's intra-op threading made them ~3x slower than rendering
        arrays = [s.rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - np.float32(1),
                  s.depth[None].copy(), s.valid[None].copy()]  # copies: a cached scene must never be written
        if self.hflip and np.random.default_rng([self.seed, i, 0x666C6970]).random() < 0.5:
            arrays = [a[..., ::-1] for a in arrays]
        rgb, depth, valid = (torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)
        return {"rgb": rgb, "depth": depth, "valid": valid, "name": f"{domain}/{self.split}/{index:06d}",
                "domain": domain}
