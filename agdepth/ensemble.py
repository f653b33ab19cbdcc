"""Test-time ensembling of affine-invariant depth predictions (Marigold / diffusers ``ensemble_depth``), batched.

Every method aligns the members ``d_i`` of an image by a per-member scale and shift, reduces the aligned members
``s_i d_i + t_i`` per pixel (median + MAD, or mean + std) and renormalises the result to [0, 1] by its min and max
(scale-only: by its max), dividing the uncertainty by the same range. The methods (``method=``, in
:data:`ENSEMBLE_METHODS`) differ in how they choose ``s, t``; they solve on a nearest-exact copy whose longer side is
at most ``max_res`` and apply the parameters at full resolution.

``"least_squares"`` (the default): each member is fitted by least squares to a common reference ``r``, the reduction
of the aligned members, alternating until ``r`` settles::

    r <- normalise(reduce_i((d_i - mean(d_i)) / std(d_i)))        start: the standardised members
    repeat:  s_i, t_i = argmin_{s,t} mean((s d_i + t - r)^2)     closed form: s_i = cov(d_i, r) / var(d_i),
                                                                 t_i = mean(r) - s_i mean(d_i)
             r <- normalise(reduce_i(s_i d_i + t_i))             normalise: mean 0, std 1

per image, until a fit moves the aligned members by at most ``tol`` (max abs, in units of ``r``'s std; ``r`` then
moves by no more) or ``max_iter`` times. Scale-only: no shift, ``s_i = <d_i, r> / <d_i, d_i>``, and ``r``
normalised to root mean square 1. With the mean reduction this minimises the members' summed squared distance to
their consensus (generalised Procrustes alignment: the fixed point is the first principal component of the
standardised members); the median is its robust counterpart. It is well conditioned: the fit is a smooth function of
the members' means and covariances, which any one pixel sways by O(1/pixels); a pixelwise median or mean moves by no
more than its inputs; min/max renormalisation moves by at most 4x its input's change over the range. So members that
change by ``delta`` (max abs) change the output by ``O(delta / range of a member)``: measured ~2 delta, at most 4, on
the bundled model's members, where diffusers' objective reaches 3e4 delta
(benchmarks/results/ensemble_conditioning.md). The iteration contracts by roughly the members' disagreement over
their spread: a few iterations (3-5 measured); exact affine copies of one map converge in one. (Members without a
common map, e.g. independent noise, have no well-defined consensus: slow contraction, up to ``max_iter``.)
``regularizer_strength`` is not used.

``"lbfgs"``: diffusers' ``MarigoldDepthPipeline.ensemble_depth`` objective::

    f(s, t) = sum_{i<j} RMSE(s_i d_i + t_i, s_j d_j + t_j) + lambda * (|min m| + |1 - max m|)

with ``m`` the per-pixel median (or mean) of the aligned members, solved exactly (below). It is ill-conditioned: the
range term hinges on single extreme pixels of ``m``, so near-equal alignments compete and members that differ by
1e-6 can give ensembled maps 5e-2 apart. Kept for compatibility with diffusers (and compared with it by
``depth-bench ensemble``).

``"diffusers"``: diffusers' own ``MarigoldDepthPipeline.ensemble_depth`` (scipy's BFGS with finite differences on
that objective, stopped after ``max_iter`` iterations), called per image: equal to diffusers' output, for code that
needs exactly diffusers' numbers. It is slow and as ill-conditioned as the objective.

How the ``"lbfgs"`` method solves the objective (and why it differs from diffusers' finite-difference BFGS loop):

* The pairwise term depends on the members only through their means and E x E covariance, computed once; each
  evaluation is then O(E^2) instead of O(E^2 * pixels), with an exact gradient.
* ``min m`` / ``max m`` are attained at a few pixels: evaluations use only the pixels that can hold the extremes
  (those within a margin of them at the last full pass), and a cheap bound on how far any pixel can move decides
  when a full pass is due, so the value and gradient are exact.
  Near the extremes, pixels that another candidate dominates (all members >=, e.g. members clipped at the same
  value) are dropped while all scales are non-negative.
* One L-BFGS (weak-Wolfe line search) runs on all images at once with per-image inner products, step sizes and
  stopping, so a batch gives the same result as one image at a time.
* The solver is many small tensor ops: on a CPU shared with other work, ``torch.set_num_threads(1)`` avoids OpenMP
  spin-waits (measured 10x faster here with a training run on the same 2 cores; diffusers' loop suffers likewise).
* **Gauge.** ``f`` scales with the members (pairwise term degree 1) while the regulariser pays at most ``lambda`` to
  shrink them, so whenever the aligned members disagree more than ``lambda`` in total, ``f`` has no minimiser: its
  infimum ``lambda`` is approached by collapsing every member to a constant (diffusers only escapes this because
  BFGS stops after a couple of finite-difference steps). The ensembled output is invariant to a common positive
  scale and shift of all members, so what matters is the direction; this module minimises ``f`` over the
  unit-range representatives (``m`` spanning exactly [0, 1]; scale-only: ``max m = 1``). That equals ``f``'s own
  minimiser whenever one exists and otherwise is the best alignment at unit range; :func:`solve_alignment`
  returns parameters in that gauge.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

_RANGE_EPS = 1e-6  # diffusers' clamp on (max - min) ranges
_SQRT_EPS = 1e-30  # keeps d sqrt(x)/dx finite at perfectly aligned pairs
# candidates: pixels within _MARGIN * range of an extreme; a full pass when the parameters moved pixels by more than
# _FULL_PASS * range since the last one (tuned on 768x768, E=10: few refreshes, small candidate sets)
_MARGIN, _FULL_PASS = 0.05, 0.2
_REDO = 8  # candidates per end re-evaluated exactly (float32 scan order may differ from the exact one near ties)
_VAR_EPS = 1e-30  # least squares: a constant member (variance 0) gets scale 0, not NaN

ENSEMBLE_METHODS: tuple[str, ...] = ("least_squares", "lbfgs", "diffusers")
DEFAULT_METHOD = "least_squares"
# (max_iter, tol) when the caller gives None: "diffusers" takes diffusers' own defaults, so it reproduces its numbers
METHOD_DEFAULTS: dict[str, tuple[int, float]] = {"least_squares": (50, 1e-6), "lbfgs": (50, 1e-6),
                                                  "diffusers": (2, 1e-3)}


# ----------------------------------------------------------------------------------------------------------- layout
def _to_nehw(depth: torch.Tensor) -> torch.Tensor:
    """[N,E,H,W], [N,E,1,H,W] or diffusers' [E,1,H,W] (a 4-D tensor with shape[1] == 1) -> float32 [N,E,H,W]."""
    if depth.dim() == 5 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    elif depth.dim() == 4 and depth.shape[1] == 1:  # diffusers: E members of one image
        depth = depth[:, 0].unsqueeze(0)
    elif depth.dim() != 4:
        raise ValueError(f"expected depth of shape [N,E,H,W], [N,E,1,H,W] or [E,1,H,W]; got {tuple(depth.shape)}")
    return depth.float()


def _check(reduction: str, scale_invariant: bool, shift_invariant: bool) -> None:
    if reduction not in ("mean", "median"):
        raise ValueError(f"Unrecognized reduction method: {reduction}.")
    if shift_invariant and not scale_invariant:
        raise ValueError("Pure shift-invariant ensembling is not supported.")  # as diffusers


def _check_method(method: str) -> None:
    if method not in ENSEMBLE_METHODS:
        choices = ", ".join(map(repr, ENSEMBLE_METHODS))
        raise ValueError(f"Unknown ensembling method {method!r}; choose one of {choices}.")


def _stopping(method: str, max_iter: int | None, tol: float | None) -> tuple[int, float]:
    default_iter, default_tol = METHOD_DEFAULTS[method]
    return (default_iter if max_iter is None else int(max_iter)), (default_tol if tol is None else float(tol))


def _reduce(a: torch.Tensor, reduction: str) -> torch.Tensor:
    """Members on dim 1. torch.median is the lower median for even E, exactly as diffusers."""
    return a.median(dim=1).values if reduction == "median" else a.mean(dim=1)


def _resize_max_edge(d: torch.Tensor, max_res: int | None) -> torch.Tensor:
    """diffusers' ``resize_to_max_edge(..., "nearest-exact")`` on [N,E,H,W] (members as channels)."""
    h, w = d.shape[-2:]
    if max_res is None or max(h, w) <= max_res:
        return d
    nh, nw = h * max_res // max(h, w), w * max_res // max(h, w)
    if nh == 0 or nw == 0:
        raise ValueError(f"Extreme aspect ratio of the input image: [{w} x {h}]")
    return F.interpolate(d, (nh, nw), mode="nearest-exact")


def _work_dtype(device: torch.device) -> torch.dtype:
    # The E x E algebra cancels large terms when members align well: float64 where the device has it (tiny tensors).
    return torch.float32 if device.type == "mps" else torch.float64


# ------------------------------------------------------------------------------------------------------- objective
def ensemble_objective(
    depth: torch.Tensor,
    scales: torch.Tensor,
    shifts: torch.Tensor | None = None,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
) -> torch.Tensor:
    """diffusers' alignment cost at the given parameters, evaluated directly per pixel (float64 where available).

    ``depth`` in any layout :func:`ensemble_depth` accepts (evaluated at the resolution given, no resizing);
    ``scales``/``shifts`` [N,E] (or [E]); ``shifts=None`` means zero (scale-only). Returns [N].
    """
    _check(reduction, True, False)
    d = _to_nehw(depth)
    n, e = d.shape[:2]
    d = d.reshape(n, e, -1).to(_work_dtype(d.device))
    s = scales.to(d).reshape(n, e, 1)
    t = torch.zeros_like(s) if shifts is None else shifts.to(d).reshape(n, e, 1)
    a = s * d + t
    cost = torch.zeros(n, dtype=d.dtype, device=d.device)
    for i in range(e - 1):  # pairs (i, j>i), vectorised over j and pixels
        cost += ((a[:, i : i + 1] - a[:, i + 1 :]) ** 2).mean(-1).sqrt().sum(-1)
    if regularizer_strength > 0:
        m = _reduce(a, reduction)
        cost += regularizer_strength * (m.amin(-1).abs() + (1.0 - m.amax(-1)).abs())
    return cost


def _undominated(z: torch.Tensor, rounds: tuple[int, ...] = (1, 4, 16), chunk: int = 16384) -> torch.Tensor:
    """Mask over the columns of z [E,K]: drop those >= (all rows) some pivot column (the pivot kept once).

    For monotone reductions and non-negative scales a dropped pixel never has a smaller reduced value than its
    pivot, so minima are unchanged. Pivots: the surviving columns of least sum, a few more each round. Cheap and
    aimed at ties (members clipped at the same value), where one pivot removes most columns.
    """
    k = z.shape[1]
    alive = torch.arange(k, device=z.device)
    for r in rounds:
        if len(alive) <= r:
            break
        za = z[:, alive]
        piv = za.sum(0).topk(r, largest=False).indices  # positions within alive
        zp = za[:, piv, None]  # [E,R,1]
        keep = torch.ones(len(alive), dtype=torch.bool, device=z.device)
        for c in range(0, len(alive), chunk):
            zc = za[:, None, c : c + chunk]  # [E,1,C]
            dominated = (zp <= zc).all(0) & ((zp != zc).any(0) | (piv[:, None] < torch.arange(
                c, c + zc.shape[-1], device=z.device)[None]))
            keep[c : c + chunk] = ~dominated.any(0)
        alive = alive[keep]
    mask = torch.zeros(k, dtype=torch.bool, device=z.device)
    mask[alive] = True
    return mask


class _Problem:
    """f over unit-range representatives for a batch of images, in per-member min-max normalised coordinates.

    Parameters x [N, D]: scales (E) then shifts (E, affine only) acting on ``d'_i = (d_i - lo_i) / range_i`` (affine)
    or ``d'_i = d_i / max_i`` (scale-only), so that x ~ O(1) whatever the input units (that is diffusers' init).

    ``min m`` / ``max m`` are found through two levels of candidate pixels, both exact by the same argument: no
    pixel's reduced value moves by more than ``bound(x, x0)`` between parameters x0 and x, so a pixel further than
    twice that from an extreme at x0 cannot hold it at x. A *full pass* (all pixels) is rare: from its map, a
    *refresh* re-evaluates only the pixels that can still be near an extreme and keeps those within ``margin`` of it
    as the candidates that every evaluation scans, until the parameters leave the margin.
    """

    def __init__(self, d: torch.Tensor, shift: bool, reduction: str, lam: float, wd: torch.dtype) -> None:
        n, e = d.shape[:2]
        d = d.reshape(n, e, -1)
        dmin, dmax = d.amin(-1), d.amax(-1)
        if shift:
            self.off, self.rng = dmin, (dmax - dmin).clamp(min=_RANGE_EPS)
        else:
            self.off, self.rng = torch.zeros_like(dmax), dmax.clamp(min=_RANGE_EPS)
        self.d = (d - self.off[..., None]) / self.rng[..., None]  # [N,E,P] float32
        self.n, self.e, self.shift, self.reduction, self.lam, self.wd = n, e, shift, reduction, lam, wd
        # one pass, per image (bounds memory; batched products round differently, and a batch must give the same
        # result as its images one by one): means, centred covariance, and for the least-squares init the
        # reduction m0 of the normalised members and each member's covariance with it, accumulated in float64
        mu, cov, m0, cross = [], [], [], []
        for k in range(n):
            dk = self.d[k].to(wd)
            mk = dk.mean(-1)
            dc = dk - mk[:, None]
            m0k = _reduce(self.d[k : k + 1], reduction)[0]
            mu.append(mk)
            cov.append(dc @ dc.T / dk.shape[-1])
            m0.append(m0k)
            cross.append(dc @ m0k.to(wd) / dk.shape[-1])
        self.mu, self.cov = torch.stack(mu), torch.stack(cov)  # [N,E], [N,E,E]
        self.m0, self.cross = torch.stack(m0), torch.stack(cross)  # [N,P] float32, [N,E]
        # per-member centre/half-width of d' bound how far any pixel's aligned value moves for a parameter change
        lo, hi = self.d.amin(-1).to(wd), self.d.amax(-1).to(wd)
        self.mid, self.half = (hi + lo) / 2, (hi - lo) / 2
        self.iu = torch.triu_indices(e, e, 1, device=d.device)
        self.full_passes = self.refreshes = 0
        self.x_full: torch.Tensor | None = None
        self.x_ref: torch.Tensor | None = None

    # ---- parameters
    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = x[:, : self.e]
        return s, (x[:, self.e :] if self.shift else torch.zeros_like(s))

    def to_input_units(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(s', t') on d' -> (s, t) on the original members: s' (d - off)/rng + t' = s d + t."""
        s, t = self.split(x)
        rng, off = self.rng.to(x), self.off.to(x)
        return s / rng, t - s * off / rng

    def bound(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Upper bound over pixels and members of |aligned value at x - at x0| (so also of the reduced value)."""
        ds, dt = self.split(x.detach() - x0)
        return (ds.abs() * self.half + (dt + ds * self.mid).abs()).amax(-1)

    # ---- the extremes of m, via candidate pixels
    def reduce_at(self, x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        s, t = self.split(x.to(d.dtype))
        if self.reduction == "mean":  # linear: a matrix product, no [N,E,P] temporary
            return torch.bmm(s[:, None] / self.e, d)[:, 0] + t.mean(-1, keepdim=True)
        return _reduce(s[..., None] * d + t[..., None], self.reduction)

    def full_pass(self, x: torch.Tensor, m: torch.Tensor | None = None) -> None:
        """The reduced map at x over all pixels (``m``: already computed)."""
        self.x_full = x.detach().clone()
        self.m_full = self.reduce_at(x, self.d) if m is None else m  # [N,P] float32
        lo, hi = self.m_full.amin(-1), self.m_full.amax(-1)
        self.lo_full, self.hi_full, self.r_full = lo, hi, (hi - lo).clamp(min=_RANGE_EPS)
        self.slack = 1e-5 * (1 + torch.maximum(lo.abs(), hi.abs()))  # float32 rounding of the reduced values
        self.full_passes += 1

    def refresh(self, x: torch.Tensor) -> None:
        x = x.detach()
        reach = None
        if self.x_full is not None:
            reach = 2 * self.bound(x, self.x_full).float()
        if reach is None or bool((reach > _FULL_PASS * self.r_full).any()):  # far from the last full map: redo it
            self.full_pass(x)
            reach = torch.zeros_like(self.r_full)
        margin = _MARGIN * self.r_full
        reach = reach + margin + 2 * self.slack
        # with every scale >= 0, a pixel whose members are all >= another's can never be the strict minimum
        prune = (self.split(x)[0] >= 0).all(-1).tolist()
        sel: list[list[torch.Tensor]] = [[], []]
        for k in range(self.n):
            for end in (0, 1):  # 0: min end, 1: max end
                mk = self.m_full[k]
                sup = torch.nonzero(mk <= self.lo_full[k] + reach[k] if end == 0 else mk >= self.hi_full[k] - reach[k])
                sup = sup[:, 0]
                mx = self.reduce_at(x[k : k + 1], self.d[k : k + 1, :, sup])[0]  # exact at x on the superset
                near = sup[mx <= mx.min() + margin[k] if end == 0 else mx >= mx.max() - margin[k]]
                if prune[k]:
                    z = self.d[k][:, near]
                    near = near[_undominated(z if end == 0 else -z)]
                sel[end].append(near)
        kl, kh = max(len(i) for i in sel[0]), max(len(i) for i in sel[1])
        pad = lambda i, k: torch.cat([i, i[:1].expand(k - len(i))])  # noqa: E731 - repeats are harmless for min/max
        idx = torch.stack([torch.cat([pad(a, kl), pad(b, kh)]) for a, b in zip(*sel, strict=True)])
        self.cand = torch.gather(self.d, 2, idx[:, None].expand(-1, self.e, -1))  # [N,E,kl+kh] float32
        self.k_lo = kl
        self.x_ref = x.clone()
        self.pruned = torch.tensor(prune, device=x.device)
        self.safe_margin = (margin - 2 * self.slack).to(self.wd)
        self.refreshes += 1

    def cover(self, x: torch.Tensor) -> None:
        """Make sure the candidates hold the extremes at x."""
        if (self.x_ref is None or bool((2 * self.bound(x, self.x_ref) >= self.safe_margin).any())
                or bool((self.pruned & (self.split(x)[0] < 0).any(-1)).any())):
            self.refresh(x)

    def extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min m, max m (differentiable in x); needs ``cover(x)``.

        The candidates are scanned in float32 without autograd; the few best of each end are then redone in the
        work dtype with autograd, so the value is exact and the gradient reaches only the extreme pixels' members.
        """
        with torch.no_grad():
            m = self.reduce_at(x, self.cand)  # [N,K]
            kl, kh = min(_REDO, self.k_lo), min(_REDO, m.shape[1] - self.k_lo)
            idx = torch.cat([m[:, : self.k_lo].topk(kl, largest=False).indices,
                             m[:, self.k_lo :].topk(kh).indices + self.k_lo], dim=1)
        sel = torch.gather(self.cand, 2, idx[:, None].expand(-1, self.e, -1)).to(self.wd)  # [N,E,kl+kh]
        s, t = self.split(x)
        m = _reduce(s[..., None] * sel + t[..., None], self.reduction)
        return m[:, :kl].amin(-1), m[:, kl:].amax(-1)

    # ---- the objective
    def pairwise(self, x: torch.Tensor) -> torch.Tensor:
        """sum_{i<j} RMSE from means/covariance: var(s_i d_i - s_j d_j) + (mean difference)^2."""
        s, t = self.split(x)
        u = s * self.mu + t
        q = s[:, :, None] * s[:, None, :] * self.cov
        dq = torch.diagonal(q, dim1=1, dim2=2)
        i, j = self.iu
        msq = dq[:, i] + dq[:, j] - 2 * q[:, i, j] + (u[:, i] - u[:, j]) ** 2
        return msq.clamp(min=_SQRT_EPS).sqrt().sum(-1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """f at the unit-range representative of x (differentiable; needs ``cover(x)``)."""
        lo, hi = self.extremes(x)
        p = self.pairwise(x)
        if self.shift:  # (m - lo) / (hi - lo): regulariser 0, pairwise term / range
            return p / (hi - lo).clamp(min=_RANGE_EPS)
        # m / hi: max is 1, min becomes lo / hi
        h = hi.clamp(min=_RANGE_EPS)
        return (p + self.lam * lo.abs()) / h

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.cover(x)
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.value(x)
            (g,) = torch.autograd.grad(f.sum(), x)
        return f.detach(), g

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The unit-range representative of x."""
        self.cover(x)
        with torch.no_grad():
            lo, hi = self.extremes(x)
        s, t = self.split(x)
        if self.shift:
            r = (hi - lo).clamp(min=_RANGE_EPS)[:, None]
            return torch.cat([s / r, (t - lo[:, None]) / r], dim=1)
        return s / hi.clamp(min=_RANGE_EPS)[:, None]

    def least_squares_init(self) -> torch.Tensor:
        """Each member fitted (closed form) to m0, the reduction of the min-max normalised members."""
        mm, cross = self.m0.to(self.wd).mean(-1), self.cross
        var = torch.diagonal(self.cov, dim1=1, dim2=2)
        if self.shift:
            s = cross / var.clamp(min=1e-12)
            return torch.cat([s, mm[:, None] - s * self.mu], dim=1)
        # no shift: <d_i, m0> / <d_i, d_i>
        return (cross + self.mu * mm[:, None]) / (var + self.mu**2).clamp(min=1e-12)


# --------------------------------------------------------------------------------------------------------- solver
def _lbfgs(
    fun: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    max_iter: int,
    tol: float,
    history: int = 10,
    max_ls: int = 25,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """L-BFGS on N independent problems at once (x [N,D]); weak-Wolfe bisection line search (sound for kinks).

    Per image: stops when the gradient's max-norm <= tol, an iteration lowers f by <= tol * max(1, |f|), or the line
    search finds no decrease. Returns (x, f, iterations run).
    """
    n, dim = x.shape
    f, g = fun(x)
    S = x.new_zeros(n, history, dim)
    Y = x.new_zeros(n, history, dim)
    rho = x.new_zeros(n, history)  # 0 marks an empty slot: it then contributes nothing to the recursion
    active = g.abs().amax(-1) > tol
    c1, c2 = 1e-4, 0.9
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        if not bool(active.any()):
            it -= 1
            break
        # two-loop recursion, newest pair last
        q = g.clone()
        alpha = x.new_zeros(n, history)
        for k in range(history - 1, -1, -1):
            alpha[:, k] = rho[:, k] * (S[:, k] * q).sum(-1)
            q -= alpha[:, k, None] * Y[:, k]
        sy, yy = (S[:, -1] * Y[:, -1]).sum(-1), (Y[:, -1] ** 2).sum(-1)
        first = rho[:, -1] == 0
        # first step: move the largest parameter by 0.01 (x ~ O(1)); later: the usual s.y / y.y scaling
        gamma = torch.where(first, 0.01 / g.abs().amax(-1).clamp(min=1e-12), sy / yy.clamp(min=1e-300))
        r = gamma[:, None] * q
        for k in range(history):
            beta = rho[:, k] * (Y[:, k] * r).sum(-1)
            r += S[:, k] * (alpha[:, k] - beta)[:, None]
        d = -r
        gd = (g * d).sum(-1)
        bad = gd >= 0  # not a descent direction (stale curvature at a kink): restart from steepest descent
        if bool(bad.any()):
            d = torch.where(bad[:, None], -g * (0.01 / g.abs().amax(-1, keepdim=True).clamp(min=1e-12)), d)
            rho[bad] = 0
            gd = (g * d).sum(-1)

        # weak-Wolfe line search, all images at once, each with its own step
        step = torch.ones_like(f)
        lo, hi = torch.zeros_like(f), torch.full_like(f, math.inf)
        done = ~active
        best_t, best_f, best_g = torch.zeros_like(f), f.clone(), g.clone()
        for _ in range(max_ls):
            t = torch.where(done, torch.zeros_like(step), step)
            ft, gt = fun(x + t[:, None] * d)
            armijo = ft <= f + c1 * t * gd
            wolfe = armijo & ((gt * d).sum(-1) >= c2 * gd)
            better = armijo & ~done & (ft < best_f)
            best_t, best_f = torch.where(better, t, best_t), torch.where(better, ft, best_f)
            best_g = torch.where(better[:, None], gt, best_g)
            done = done | wolfe
            if bool(done.all()):
                break
            hi = torch.where(~armijo & ~done, t, hi)
            lo = torch.where(armijo & ~done, t, lo)
            step = torch.where(torch.isinf(hi), 2 * step, (lo + hi) / 2)
        moved = active & (best_t > 0)
        x_new = x + (best_t * moved)[:, None] * d
        f_new = torch.where(moved, best_f, f)
        g_new = torch.where(moved[:, None], best_g, g)
        # curvature pair, kept only when positive (keeps the inverse-Hessian estimate positive definite)
        s_k, y_k = x_new - x, g_new - g
        sy = (s_k * y_k).sum(-1)
        keep = moved & (sy > 1e-12 * s_k.norm(dim=-1) * y_k.norm(dim=-1))
        S = torch.where(keep[:, None, None], torch.cat([S[:, 1:], s_k[:, None]], 1), S)
        Y = torch.where(keep[:, None, None], torch.cat([Y[:, 1:], y_k[:, None]], 1), Y)
        rho = torch.where(keep[:, None], torch.cat([rho[:, 1:], 1 / sy.clamp(min=1e-300)[:, None]], 1), rho)
        decrease = f - f_new
        active = active & moved & (decrease > tol * f_new.abs().clamp(min=1)) & (g_new.abs().amax(-1) > tol)
        x, f, g = x_new, f_new, g_new
    return x, f, it


# ------------------------------------------------------------------------------------------ least-squares method
def _normalise_reference(r: torch.Tensor, shift: bool) -> torch.Tensor:
    """r (work dtype, [P]) with mean 0 and std 1 (scale-only: root mean square 1)."""
    if shift:
        r = r - r.mean()
    return r / r.square().mean().sqrt().clamp(min=_SQRT_EPS)


def _least_squares_one(
    x: torch.Tensor, shift: bool, reduction: str, max_iter: int, tol: float, wd: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One image's members x [E,P] (float32): (scales, shifts) [E] in the work dtype and the iterations run."""
    e, p = x.shape
    xw = x.to(wd)
    mu = xw.mean(-1) if shift else xw.new_zeros(e)
    xc = xw - mu[:, None]  # centred members (scale-only: as they are)
    var = xc.square().mean(-1).clamp(min=_VAR_EPS)  # variance (scale-only: mean square)
    lo, hi = xw.amin(-1), xw.amax(-1)

    def reference(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # aligned in float32, as ensemble_depth does
        a = s.float()[:, None] * x + t.float()[:, None]
        return _normalise_reference(_reduce(a[None], reduction)[0].to(wd), shift)

    s = var.rsqrt()  # start: the standardised members (std 1, the reference's units)
    t = -s * mu
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - reported
        r = reference(s, t)
        s_new = (xc @ r) / p / var  # r has mean 0 when shift
        t_new = -s_new * mu
        # how far the fit moved any aligned pixel (linear in d: attained at a member's min or max)
        ds, dt = s_new - s, t_new - t
        moved = float(torch.maximum((ds * lo + dt).abs(), (ds * hi + dt).abs()).max())
        s, t = s_new, t_new
        if moved <= tol:  # the next reference would move by at most about this much
            break
    return s, t, it


def _solve_least_squares(
    d: torch.Tensor, shift_invariant: bool, reduction: str, max_iter: int, tol: float, max_res: int | None
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The least-squares method on float32 [N,E,H,W] (scale-invariant cases): (scales, shifts) [N,E] float32 and
    the iterations per image. One image at a time: bounded memory, and a batch gives exactly its images' results."""
    n, e = d.shape[:2]
    wd = _work_dtype(d.device)
    x = _resize_max_edge(d, max_res).reshape(n, e, -1)
    sols = [_least_squares_one(x[k], shift_invariant, reduction, max_iter, tol, wd) for k in range(n)]
    s = torch.stack([v[0] for v in sols]).float()
    t = torch.stack([v[1] for v in sols]).float() if shift_invariant else torch.zeros_like(s)
    return s, t, {"iterations": [v[2] for v in sols]}


# ------------------------------------------------------------------------------------------------------------- API
def _solve(
    d: torch.Tensor, shift_invariant: bool, reduction: str, regularizer_strength: float, max_iter: int, tol: float,
    max_res: int | None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """solve_alignment on float32 [N,E,H,W] (scale-invariant cases); also returns solver statistics."""
    n, e = d.shape[:2]
    wd = _work_dtype(d.device)
    prob = _Problem(_resize_max_edge(d, max_res), shift_invariant, reduction, regularizer_strength, wd)
    x_mm = torch.cat([torch.ones(n, e), torch.zeros(n, e if shift_invariant else 0)], 1).to(d.device, wd)
    iters = 0
    if e > 1:
        # start from the better of diffusers' min-max init and a least-squares fit to the reduced members
        prob.full_pass(x_mm, prob.m0)  # at x_mm the reduced map is m0
        f_mm, _ = prob(x_mm)
        x_ls = prob.least_squares_init()
        f_ls, _ = prob(x_ls)
        x0 = torch.where((f_ls < f_mm)[:, None], x_ls, x_mm)
        x, _, iters = _lbfgs(prob, x0, max_iter, tol)
    else:
        x = x_mm
    s, t = prob.to_input_units(prob.normalise(x))
    return s.float(), t.float(), {"iterations": iters, "full_passes": prob.full_passes, "refreshes": prob.refreshes}


def solve_alignment(
    depth: torch.Tensor,
    scale_invariant: bool = True,
    shift_invariant: bool = True,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
    max_iter: int | None = None,
    tol: float | None = None,
    max_res: int | None = 1024,
    *,
    method: str = "lbfgs",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member scales and shifts [N,E] (float32, input device): by default those minimising diffusers' alignment
    objective (``method="lbfgs"``, as :func:`ensemble_objective` evaluates it), or ``method="least_squares"``
    (``"diffusers"``' own solver returns no parameters).

    ``"lbfgs"`` returns them in the unit-range gauge (see the module docstring): ``s_i d_i + t_i`` reduced over
    members spans [0, 1] (scale-only: max 1, shifts 0); ``"least_squares"`` in its reference's gauge (mean 0, std 1;
    scale-only: root mean square 1, shifts 0). Either way ``ensemble_depth(depth, params=...)`` gives that method's
    output. Absolute predictions get ones and zeros. Layouts as :func:`ensemble_depth` (diffusers' [E,1,H,W] gives
    [1,E]).
    """
    _check(reduction, scale_invariant, shift_invariant)
    _check_method(method)
    max_iter, tol = _stopping(method, max_iter, tol)
    if method == "diffusers":
        raise ValueError("solve_alignment: diffusers' ensemble_depth returns no parameters; method='lbfgs' solves the "
                         "same objective")
    d = _to_nehw(depth)
    if not scale_invariant:  # absolute predictions: nothing to align
        return d.new_ones(d.shape[:2]), d.new_zeros(d.shape[:2])
    if method == "least_squares":
        s, t, _ = _solve_least_squares(d, shift_invariant, reduction, max_iter, tol, max_res)
    else:
        s, t, _ = _solve(d, shift_invariant, reduction, regularizer_strength, max_iter, tol, max_res)
    return s, t


def ensemble_depth(
    depth: torch.Tensor,
    scale_invariant: bool = True,
    shift_invariant: bool = True,
    output_uncertainty: bool = False,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
    max_iter: int | None = None,
    tol: float | None = None,
    max_res: int | None = 1024,
    *,
    method: str = DEFAULT_METHOD,
    params: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Align and ensemble depth members, batched: a well-conditioned least-squares alignment by default;
    ``method="diffusers"`` is diffusers' ``MarigoldDepthPipeline.ensemble_depth`` itself, ``"lbfgs"`` its objective
    solved exactly.

    Args:
        depth: [N,E,H,W] (N images, E members each), [N,E,1,H,W], or diffusers' [E,1,H,W] (one image).
        scale_invariant, shift_invariant: affine (both), scale-only (scale only), absolute (neither: no alignment,
            no renormalisation; diffusers documents this but raises). Shift-only raises, as diffusers.
        output_uncertainty: also return median absolute deviation (median) or standard deviation (mean).
        reduction: "median" | "mean".
        regularizer_strength: the diffusers objective's lambda (not used by ``"least_squares"``).
        max_iter, tol: per image; None: the method's defaults (:data:`METHOD_DEFAULTS`: 50 and 1e-6, diffusers'
            2 and 1e-3 for ``"diffusers"``). ``"least_squares"``: fits to the reference at most; stop once a fit
            moves the aligned members by at most ``tol`` (max abs, in units of the reference's std). ``"lbfgs"``: L-BFGS
            iterations at most; stop once an iteration lowers the objective by at most ``tol * max(1, |f|)`` or the
            gradient's max-norm is at most ``tol``.
        max_res: alignment is solved on a nearest-exact copy whose longer side is at most this (None: full size).
        method: the alignment, one of :data:`ENSEMBLE_METHODS` (see the module docstring): ``"least_squares"``
            (default; well conditioned), ``"lbfgs"`` (diffusers' objective, solved exactly) or ``"diffusers"``
            (diffusers' own function, for its exact numbers).
        params: precomputed (scales, shifts) [N,E], e.g. ``solve_alignment(depth, method=...)`` (whose default is
            ``"lbfgs"``); skips the solve (``method`` is then only validated).

    Returns:
        depth [N,1,H,W] in [0,1] (affine: (m - min) / range; scale-only: m / max) and the uncertainty divided by the
        same range, or None. Diffusers' layout returns [1,1,H,W]. float32 on the input's device. E == 1 returns the
        renormalised input and a zero uncertainty (diffusers gives NaN std for ``reduction="mean"``).
    """
    _check(reduction, scale_invariant, shift_invariant)
    _check_method(method)
    max_iter, tol = _stopping(method, max_iter, tol)
    d = _to_nehw(depth)
    n, e = d.shape[:2]
    if method == "diffusers" and params is None and scale_invariant:
        return _diffusers_ensemble(d, shift_invariant, output_uncertainty, reduction, regularizer_strength, max_iter,
                                   tol, max_res)
    if params is None and not scale_invariant:
        params = d.new_ones(n, e), d.new_zeros(n, e)
    elif params is None and method == "least_squares":
        params = _solve_least_squares(d, shift_invariant, reduction, max_iter, tol, max_res)[:2]
    elif params is None:
        params = _solve(d, shift_invariant, reduction, regularizer_strength, max_iter, tol, max_res)[:2]
    s, t = (p.to(d).reshape(n, e, 1, 1) for p in params)
    a = s * d + t
    m = _reduce(a, reduction)[:, None]  # [N,1,H,W]
    unc = None
    if output_uncertainty:
        if e == 1:
            unc = torch.zeros_like(m)
        elif reduction == "median":
            unc = (a - m).abs().median(dim=1, keepdim=True).values
        else:
            unc = a.std(dim=1, keepdim=True)
    if not scale_invariant:
        return m, unc
    hi = m.amax(dim=(-2, -1), keepdim=True)
    lo = m.amin(dim=(-2, -1), keepdim=True) if shift_invariant else torch.zeros_like(hi)
    rng = (hi - lo).clamp(min=_RANGE_EPS)
    return (m - lo) / rng, (None if unc is None else unc / rng)


def _diffusers_ensemble(d: torch.Tensor, shift_invariant: bool, output_uncertainty: bool, reduction: str,
                        regularizer_strength: float, max_iter: int, tol: float, max_res: int | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """diffusers' ``MarigoldDepthPipeline.ensemble_depth`` on each image of [N,E,H,W]; [N,1,H,W] results."""
    from diffusers import MarigoldDepthPipeline

    outs, uncs = [], []
    for members in d:
        out, unc = MarigoldDepthPipeline.ensemble_depth(
            members[:, None], scale_invariant=True, shift_invariant=shift_invariant,
            output_uncertainty=output_uncertainty, reduction=reduction, regularizer_strength=regularizer_strength,
            max_iter=max_iter, tol=tol, max_res=max_res)
        outs.append(out)
        uncs.append(unc)
    return torch.cat(outs), (torch.cat(uncs) if output_uncertainty else None)
