"""Normal scores z = Phi^{-1}(F(x)) of chi^2 and Student-t statistics that stay finite in far tails.

Computing z from F or 1 - F fails once the tail probability underflows (below about 1e-308, i.e.
|z| beyond about 37.5): Phi^{-1}(0) = -inf. Here z comes from the log of the smaller tail,
z = Phi^{-1}(exp(log F)) (``scipy.special.ndtri_exp``), and where scipy's tail underflows its log is
computed directly:

- chi^2_d upper tail: Q(a, y) = Gamma(a, y) / Gamma(a) with a = d/2, y = x/2, by Legendre's
  continued fraction Q = e^{-y} y^a / Gamma(a) * 1 / (y + 1 - a - 1 (1 - a) / (y + 3 - a - 2 (2 - a)
  / (y + 5 - a - ...))) (modified Lentz), valid for y > a + 1, which holds wherever Q < 1e-280;
- chi^2_d lower tail: P(a, y) = e^{-y} y^a / Gamma(a + 1) * sum_k y^k / ((a + 1) ... (a + k));
- t_nu tail: P(T > t) = I_x(nu/2, 1/2) / 2 with x = nu / (nu + t^2), and the regularised incomplete
  beta I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * [continued fraction], valid for
  x < (a + 1) / (a + b + 2), which holds wherever the tail is below 1e-280.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import betaln, gammaln, ndtri_exp

_UNDERFLOW = 1e-280
"""Below this, scipy's tail probability is recomputed in log space."""

_TINY = 1e-300
_ITERATIONS = 2000


def _lentz(first, terms):
    """The continued fraction b_0 + a_1 / (b_1 + a_2 / (b_2 + ...)) by modified Lentz, over arrays:
    ``first`` is b_0, ``terms(i)`` gives (a_i, b_i)."""
    f = np.where(first == 0, _TINY, first)
    c, d = f.copy(), np.zeros_like(f)
    for i in range(1, _ITERATIONS):
        a, b = terms(i)
        d = b + a * d
        d = 1.0 / np.where(d == 0, _TINY, d)
        c = b + a / c
        c = np.where(c == 0, _TINY, c)
        delta = c * d
        f = f * delta
        if np.all(np.abs(delta - 1.0) < 1e-16):
            break
    return f


def _log_gamma_upper(a, y):
    """log Q(a, y) for y > a + 1 (module docstring)."""
    cf = _lentz(y + 1.0 - a, lambda i: (-i * (i - a), y + 2.0 * i + 1.0 - a))
    return -y + a * np.log(y) - gammaln(a) - np.log(cf)


def _log_gamma_lower(a, y):
    """log P(a, y) by its power series (module docstring)."""
    total, term = np.ones_like(y), np.ones_like(y)
    for k in range(1, _ITERATIONS):
        term = term * y / (a + k)
        total = total + term
        if np.all(term < 1e-17 * total):
            break
    with np.errstate(divide="ignore"):
        return -y + a * np.log(y) - gammaln(a + 1.0) + np.log(total)


def _log_beta_lower(a, b, x, log_x=None, log_1mx=None):
    """log I_x(a, b) for x < (a + 1) / (a + b + 2) (``log_x``, ``log_1mx``: log x and log(1 - x)
    when known more precisely than from x), by the even/odd continued fraction
    I_x = x^a (1 - x)^b / (a B(a, b)) / (1 + d_1 / (1 + d_2 / (1 + ...))),
    d_{2k+1} = -(a + k)(a + b + k) x / ((a + 2k)(a + 2k + 1)), d_{2k} = k (b - k) x / ((a + 2k - 1)(a + 2k))."""

    def terms(i):
        k = i // 2
        if i % 2:
            num = -(a + k) * (a + b + k) * x / ((a + 2 * k) * (a + 2 * k + 1))
        else:
            num = k * (b - k) * x / ((a + 2 * k - 1) * (a + 2 * k))
        return num, np.ones_like(x)

    cf = _lentz(np.ones_like(x), terms)
    with np.errstate(divide="ignore"):
        log_x = np.log(x) if log_x is None else log_x
        log_1mx = np.log1p(-x) if log_1mx is None else log_1mx
        return a * log_x + b * log_1mx - np.log(a) - betaln(a, b) - np.log(cf)


def chi2_score(x, dof) -> np.ndarray:
    """Phi^{-1}(F(x)) for F the chi^2_dof CDF (broadcast; NaN where x or dof is NaN)."""
    x, dof = np.broadcast_arrays(np.asarray(x, float), np.asarray(dof, float))
    shape, x, dof = x.shape, x.ravel(), dof.ravel()
    cdf, sf = stats.chi2.cdf(x, dof), stats.chi2.sf(x, dof)
    with np.errstate(divide="ignore"):
        log_cdf, log_sf = np.log(cdf), np.log(sf)
    inside = (x > 0) & np.isfinite(x)
    low, high = inside & (cdf < _UNDERFLOW), inside & (sf < _UNDERFLOW)
    log_cdf[low] = _log_gamma_lower(dof[low] / 2.0, x[low] / 2.0)
    log_sf[high] = _log_gamma_upper(dof[high] / 2.0, x[high] / 2.0)
    return np.where(log_cdf < log_sf, ndtri_exp(log_cdf), -ndtri_exp(log_sf)).reshape(shape)


def t_score(t, dof) -> np.ndarray:
    """Phi^{-1}(F(t)) for F the Student-t CDF with ``dof`` degrees of freedom (broadcast)."""
    t, dof = np.broadcast_arrays(np.asarray(t, float), np.asarray(dof, float))
    shape, t, dof = t.shape, t.ravel(), dof.ravel()
    size = np.abs(t)
    log_sf = stats.t.logsf(size, dof)  # P(T > |t|)
    far = (log_sf < np.log(_UNDERFLOW)) & np.isfinite(size)
    if far.any():  # x = nu / (nu + t^2) = r / (1 + r), r = nu / t^2 (t^2 may overflow)
        nu, s = dof[far], size[far]
        r = nu / s / s
        log_x = np.log(nu) - 2.0 * np.log(s) - np.log1p(r)
        tail = _log_beta_lower(nu / 2.0, 0.5, r / (1.0 + r), log_x, -np.log1p(r))
        log_sf[far] = np.log(0.5) + tail
    return (-np.sign(t) * ndtri_exp(log_sf)).reshape(shape)
