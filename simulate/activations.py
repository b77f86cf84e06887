"""One description of an activation: a continuous piecewise-linear function, and its kernels.

An activation is given by its knots k_1 < ... < k_K, its values y_j = phi(k_j), and the slopes s_0 to
the left of k_1 and s_K to the right of k_K; between knots phi interpolates linearly. That description
alone serves the Gaussian-process theory (``simulate.gp``), the Numba kernels below (used by every
engine), the JAX kernel of the training engine and the stored per-cell description of a sweep, so a new
shape is data, not code.

The named families are constructors of it, each with a threshold ``tau >= 0`` and a clip level
``m > 0`` (``m = inf``: unclipped):

    CReLU_{tau,m}(x) = min(max(x - tau, 0), m)                 knots (tau, tau + m), values (0, m)
    CST_{tau,m}(x)   = sign(x) min(max(|x| - tau, 0), m)       knots (-tau-m, -tau, tau, tau+m)

``m = inf`` gives shifted ReLU / soft thresholding (ReLU_tau, ST_tau); ``tau = 0`` gives ReLU and, for
CST, hard-tanh clip(x, -m, m) (the identity when also ``m = inf``).

Pieces. The evaluation splits the line into pieces [lo_p, hi_p) and writes phi on each as
``anchor_y + slope (x - anchor_x)`` with the anchor at the point of the piece where |phi| is smallest:
the root when the line changes sign inside (the piece is then split there), else the endpoint of
smaller |phi|. Two reasons: phi is then exact to rounding relative to its own size, and for the named
families the formula reduces to the familiar one bit for bit (``x - tau`` on the CReLU pass band), so
results do not depend on how a family is described. The same pieces carry the Gaussian integrals of
``simulate.gp``. Slopes of the named families are exact (1 on the pass bands), not difference quotients
of rounded knots.

phi'(x) is the slope of the piece holding x; at a breakpoint, the slope to its right (a set of measure
zero for Gaussian inputs).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from scipy.special import erfinv, ndtri

FAMILIES = ("crelu", "cst")
"""The named families with a (tau, m) parameterisation, as used by sweeps and labels."""


@njit(cache=True, nogil=True)
def piece_index(x, breaks):
    """Index p of the piece holding x: breaks[p-1] <= x < breaks[p] (``breaks`` sorted, P - 1 long)."""
    p = 0
    while p < len(breaks) and x >= breaks[p]:
        p += 1
    return p


@njit(cache=True, nogil=True)
def phi(x, breaks, anchor_x, anchor_y, slope):
    """phi(x) = anchor_y[p] + slope[p] (x - anchor_x[p]) on the piece p holding x (the last p with
    breaks[p-1] <= x), anchor_y[p] itself on a flat piece.

    Branch-free: every piece is tried in order and the last that starts at or below x is kept.
    Called with the tuples of ``Pieces.kernel``, Numba compiles one version per piece count and
    unrolls the scan, so a loop over x vectorises (with arrays it works, slowly)."""
    y = anchor_y[0] if slope[0] == 0.0 else anchor_y[0] + slope[0] * (x - anchor_x[0])
    for p in range(1, len(slope)):
        if x >= breaks[p - 1]:
            y = anchor_y[p] if slope[p] == 0.0 else anchor_y[p] + slope[p] * (x - anchor_x[p])
    return y


@njit(cache=True, nogil=True)
def dphi(x, breaks, slope):
    """phi'(x) = slope[p] on the piece p holding x (the right slope at a breakpoint); branch-free
    as :func:`phi`."""
    s = slope[0]
    for p in range(1, len(slope)):
        if x >= breaks[p - 1]:
            s = slope[p]
    return s


@njit(cache=True)
def _apply(x, breaks, anchor_x, anchor_y, slope, derivative):
    """phi (or phi') of every entry of a 1-D float array."""
    out = np.empty_like(x)
    for i in range(x.size):
        if derivative:
            out[i] = dphi(x[i], breaks, slope)
        else:
            out[i] = phi(x[i], breaks, anchor_x, anchor_y, slope)
    return out


def _as_param(name: str, value, ok, allowed: str):
    """``value`` as a float (scalar) or float array, or ValueError naming the first bad entry."""
    arr = np.asarray(value, dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~ok(arr)
    if np.any(bad):
        raise ValueError(f"{name}={float(arr[bad].flat[0])!r}: {allowed}")
    return float(arr) if arr.ndim == 0 else arr


def _check_family(family) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: must be one of {', '.join(FAMILIES)}")


class Activation:
    """A continuous piecewise-linear activation (module docstring), possibly a batch of them.

    ``Activation(family, tau, m)`` is the named family member (``family`` in :data:`FAMILIES`);
    :meth:`piecewise_linear` takes any description. Attributes:

    - ``knots``, ``values``: arrays (..., K); ``slopes``: (..., K+1), the first and last outside;
    - ``family``, ``tau``, ``m``: the named family and its parameters (``family`` is ``"custom"`` and
      ``tau``, ``m`` are None for a shape given by points; ``name`` is its label);
    - ``pieces``: the evaluation pieces (module docstring), used by the kernels and by ``simulate.gp``.

    A batch (leading dimensions ``...``, from array-valued tau or m) must share one piece structure:
    the same number of knots, and zero crossings inside the same pieces. ``simulate.gp`` broadcasts over
    it; the kernels and engines take single activations.
    """

    def __init__(self, family: str, tau=0.0, m=math.inf):
        _check_family(family)
        tau = _as_param("tau", tau, lambda t: np.isfinite(t) & (t >= 0), "must be finite, >= 0")
        m = _as_param("m", m, lambda m: m > 0, "must be > 0 (or inf for no clipping)")
        finite = np.isfinite(m)
        if np.ndim(m) and np.any(finite) and not np.all(finite):
            raise ValueError(
                "m: a batch of activations must be all clipped or all unclipped (one piece structure)"
            )
        clipped = bool(np.all(finite))
        shape = np.broadcast_shapes(np.shape(tau), np.shape(m))
        tau_b = np.broadcast_to(np.asarray(tau, dtype=float), shape)
        m_b = np.broadcast_to(np.asarray(m, dtype=float), shape)
        zero = np.zeros(shape)
        if family == "crelu":
            knots = [tau_b, tau_b + m_b] if clipped else [tau_b]
            values = [zero, m_b] if clipped else [zero]
            slopes = [0.0, 1.0, 0.0] if clipped else [0.0, 1.0]
        elif np.any(tau_b > 0) and not np.all(tau_b > 0):
            raise ValueError("tau: a batch of CST activations must be all > 0 or all 0")
        elif np.all(tau_b > 0):
            knots = [-(tau_b + m_b), -tau_b, tau_b, tau_b + m_b] if clipped else [-tau_b, tau_b]
            values = [-m_b, zero, zero, m_b] if clipped else [zero, zero]
            slopes = [0.0, 1.0, 0.0, 1.0, 0.0] if clipped else [1.0, 0.0, 1.0]
        else:  # tau = 0: hard-tanh clip(x, -m, m), or the identity
            knots = [-m_b, m_b] if clipped else [zero]
            values = [-m_b, m_b] if clipped else [zero]
            slopes = [0.0, 1.0, 0.0] if clipped else [1.0, 1.0]
        slopes = np.broadcast_to(np.asarray(slopes), (*shape, len(slopes)))
        self._set(np.stack(knots, -1), np.stack(values, -1), slopes)
        self.family, self.tau, self.m = family, tau, m
        self.name = self.label() if not shape else family

    @classmethod
    def piecewise_linear(
        cls, knots, values, left_slope=0.0, right_slope=0.0, *, name: str = "custom"
    ) -> Activation:
        """phi through the points (knots[j], values[j]), linear in between, with the given slopes
        outside. Knots finite and strictly increasing (at least one), values finite, equal lengths."""
        knots = np.asarray(knots, dtype=float)
        values = np.asarray(values, dtype=float)
        if knots.ndim != 1 or knots.size < 1:
            raise ValueError(f"knots={knots.tolist()!r}: must be a list of at least one number")
        if not np.all(np.isfinite(knots)) or np.any(np.diff(knots) <= 0):
            raise ValueError(f"knots={knots.tolist()!r}: must be finite and strictly increasing")
        if values.shape != knots.shape:
            raise ValueError(
                f"values={values.tolist()!r}: must have one value per knot ({knots.size})"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(f"values={values.tolist()!r}: must be finite")
        for field, slope in (("left_slope", left_slope), ("right_slope", right_slope)):
            if not isinstance(slope, int | float | np.floating) or not math.isfinite(slope):
                raise ValueError(f"{field}={slope!r}: must be a finite number")
        inner = np.diff(values) / np.diff(knots)
        act = cls.__new__(cls)
        act._set(knots, values, np.concatenate([[left_slope], inner, [right_slope]]))
        act.family, act.tau, act.m, act.name = "custom", None, None, str(name)
        return act

    # named constructors -----------------------------------------------------------------------

    @classmethod
    def crelu(cls, tau, m=math.inf) -> Activation:
        """CReLU_{tau,m}(x) = min(max(x - tau, 0), m)."""
        return cls("crelu", tau, m)

    @classmethod
    def cst(cls, tau, m=math.inf) -> Activation:
        """CST_{tau,m}(x) = sign(x) min(max(|x| - tau, 0), m)."""
        return cls("cst", tau, m)

    @classmethod
    def relu_tau(cls, tau) -> Activation:
        """Shifted ReLU max(0, x - tau)."""
        return cls("crelu", tau)

    @classmethod
    def st_tau(cls, tau) -> Activation:
        """Soft thresholding sign(x) max(|x| - tau, 0)."""
        return cls("cst", tau)

    @classmethod
    def relu(cls) -> Activation:
        """max(0, x)."""
        return cls("crelu", 0.0)

    @classmethod
    def hard_tanh(cls, m=1.0) -> Activation:
        """clip(x, -m, m) (CST with tau = 0)."""
        return cls("cst", 0.0, m)

    @classmethod
    def from_sparsity(
        cls, family: str, sparsity: float, q_star: float, m: float = math.inf
    ) -> Activation:
        """The member of a named family whose GP sparsity at variance ``q_star`` equals ``sparsity``.

        Sparsity is P(phi(sqrt(q*) z) = 0), z ~ N(0, 1), the probability of the zero piece:

            CReLU: s = Phi(tau / sqrt(q*))          ->  tau = sqrt(q*) Phi^{-1}(s),        s in [1/2, 1)
            CST:   s = 2 Phi(tau / sqrt(q*)) - 1    ->  tau = sqrt(q*) Phi^{-1}((1+s)/2),  s in [0, 1)

        (the CST inverse is computed as sqrt(2 q*) erfinv(s), exact also for s near 0). Clipping does
        not change the zero set, so ``m`` plays no part.
        """
        _check_family(family)
        q_star = _as_param(
            "q_star", q_star, lambda q: np.isfinite(q) & (q > 0), "must be finite, > 0"
        )
        low = 0.5 if family == "crelu" else 0.0
        s = _as_param(
            "sparsity",
            sparsity,
            lambda s: (s >= low) & (s < 1),
            f"must be in [{low}, 1) for {family}",
        )
        a = ndtri(s) if family == "crelu" else math.sqrt(2.0) * erfinv(s)
        tau = np.maximum(a, 0.0) * np.sqrt(q_star)
        return cls(family, tau, m)

    @classmethod
    def stack(cls, acts) -> Activation:
        """A batch (leading dimension len(acts)) of single activations with one piece structure,
        for ``simulate.gp`` to evaluate at once. ValueError if their structures differ."""
        acts = list(acts)
        if not acts or any(a.batch_shape for a in acts):
            raise ValueError("stack: needs a non-empty list of single activations")
        if len({(a.knots.size, a.pieces.slope.size) for a in acts}) > 1:
            raise ValueError("stack: the activations must share one piece structure")
        batch = cls.__new__(cls)
        batch._set(
            *(np.stack([getattr(a, f) for a in acts]) for f in ("knots", "values", "slopes"))
        )
        batch.family, batch.tau, batch.m, batch.name = "custom", None, None, "stack"
        return batch

    # the description ----------------------------------------------------------------------------

    def _set(self, knots, values, slopes) -> None:
        """Knots and values (..., K); slopes (..., K+1): left of k_1, between knots, right of k_K.
        (Named families give their exact slopes; ``piecewise_linear`` the difference quotients.)"""
        self.knots = np.asarray(knots, dtype=float)
        self.values = np.asarray(values, dtype=float)
        self.slopes = np.asarray(slopes, dtype=float)
        self.pieces = Pieces.of(self)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading dimensions of a batch; () for a single activation."""
        return self.knots.shape[:-1]

    @property
    def left_slope(self) -> np.ndarray:
        return self.slopes[..., 0]

    @property
    def right_slope(self) -> np.ndarray:
        return self.slopes[..., -1]

    @property
    def clipped(self) -> bool:
        """True when phi is bounded (both outer slopes 0); for the named families, m finite."""
        return bool(np.all(self.left_slope == 0.0) and np.all(self.right_slope == 0.0))

    @property
    def kinks(self) -> tuple[float, ...]:
        """Knots where the slope changes, sorted (single activation; for splitting quadratures)."""
        jumps = np.diff(self.slopes)
        return tuple(float(k) for k, d in zip(self.knots, jumps, strict=True) if d != 0.0)

    def description(self) -> dict:
        """The defining data, as plain lists (single activation): knots, values, left/right slope."""
        return {
            "knots": self.knots.tolist(),
            "values": self.values.tolist(),
            "left_slope": float(self.left_slope),
            "right_slope": float(self.right_slope),
        }

    def __call__(self, x):
        """phi(x), elementwise over numpy arrays (single activation)."""
        return self._elementwise(x, derivative=False)

    def derivative(self, x):
        """phi'(x), elementwise over numpy arrays (single activation)."""
        return self._elementwise(x, derivative=True)

    def _elementwise(self, x, derivative: bool):
        x = np.asarray(x, dtype=float)
        p = self.pieces
        flat = _apply(np.ascontiguousarray(x).ravel(), *p.kernel, derivative)
        return flat.reshape(x.shape)

    def label(self) -> str:
        """Human-readable name, e.g. ``CReLU(tau=1.04, m=1)``, ``ST(tau=1.44)`` or a custom name."""
        if self.family == "custom":
            return self.name
        base = {"crelu": "ReLU", "cst": "ST"}[self.family]
        clipped = bool(np.all(np.isfinite(self.m)))
        name = ("C" + base) if clipped else base
        params = [f"tau={self.tau:.3g}"] + ([f"m={self.m:.3g}"] if clipped else [])
        return f"{name}({', '.join(params)})"

    def __repr__(self) -> str:
        if self.family == "custom":
            d = self.description()
            return (
                f"Activation.piecewise_linear({d['knots']}, {d['values']}, "
                f"{d['left_slope']}, {d['right_slope']}, name={self.name!r})"
            )
        return f"Activation({self.family!r}, {self.tau!r}, {self.m!r})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, Activation):
            return NotImplemented
        return (
            self.knots.shape == other.knots.shape
            and np.array_equal(self.knots, other.knots)
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.slopes, other.slopes)
        )

    __hash__ = None


class Pieces:
    """phi on P pieces: piece p is [lo[p], hi[p]) (lo[0] = -inf, hi[P-1] = inf, breaks = lo[1:])
    with phi(x) = anchor_y[p] + slope[p] (x - anchor_x[p]), anchor_x in {lo[p], hi[p]} (module
    docstring). Arrays are (..., P) over the activation's batch."""

    def __init__(self, lo, hi, anchor_x, anchor_y, slope):
        self.lo, self.hi = lo, hi
        self.anchor_x, self.anchor_y, self.slope = anchor_x, anchor_y, slope
        self.breaks = np.ascontiguousarray(lo[..., 1:])
        self.kernel = (
            tuple(tuple(float(v) for v in a) for a in (self.breaks, anchor_x, anchor_y, slope))
            if slope.ndim == 1
            else None
        )
        """(breaks, anchor_x, anchor_y, slope) as tuples of floats, the arguments of the kernels
        :func:`phi` and :func:`dphi` (single activation; None for a batch)."""

    @classmethod
    def of(cls, act: Activation) -> Pieces:
        knots, values, slopes = act.knots, act.values, act.slopes
        batch = act.batch_shape
        lo, hi, ax, ay, sl = [], [], [], [], []

        def add(low, high, x, y, s):
            for target, v in zip((lo, hi, ax, ay, sl), (low, high, x, y, s), strict=True):
                target.append(np.broadcast_to(np.asarray(v, float), batch))

        def same_for_all(flags):
            if np.any(flags) != np.all(flags):
                raise ValueError("a batch of activations must share one piece structure")
            return bool(np.all(flags))

        def ray(low, high, k, y, s):
            """The outer piece [low, high) through (k, y) with slope s, split where it crosses 0."""
            with np.errstate(divide="ignore", invalid="ignore"):
                root = k - y / s
                crossing = (s != 0.0) & (low < root) & (root < high)
            if same_for_all(crossing):
                add(low, root, root, 0.0, s)
                add(root, high, root, 0.0, s)
            else:
                add(low, high, k, y, s)

        ray(-np.inf, knots[..., 0], knots[..., 0], values[..., 0], slopes[..., 0])
        for j in range(knots.shape[-1] - 1):
            k0, k1 = knots[..., j], knots[..., j + 1]
            y0, y1 = values[..., j], values[..., j + 1]
            if same_for_all(y0 * y1 < 0):
                root = k0 - y0 * (k1 - k0) / (y1 - y0)
                add(k0, root, root, 0.0, slopes[..., j + 1])
                add(root, k1, root, 0.0, slopes[..., j + 1])
            else:
                left = np.abs(y0) <= np.abs(y1)
                add(k0, k1, np.where(left, k0, k1), np.where(left, y0, y1), slopes[..., j + 1])
        ray(knots[..., -1], np.inf, knots[..., -1], values[..., -1], slopes[..., -1])
        return cls(*(np.ascontiguousarray(np.stack(v, -1)) for v in (lo, hi, ax, ay, sl)))
