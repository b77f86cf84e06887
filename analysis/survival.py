"""The Kaplan-Meier estimator with Greenwood variance and log-log confidence bands.

For event times t_1 < t_2 < ... with d_j events among n_j units still at risk at t_j,

    S(t) = prod_{t_j <= t} (1 - d_j / n_j),
    Var[ln S(t)] ~ sum_{t_j <= t} d_j / (n_j (n_j - d_j))                       (Greenwood),

and the pointwise band at level 1 - alpha is taken on theta = ln(-ln S), whose standard error is
sqrt(Greenwood) / |ln S| (Kalbfleisch-Prentice): S^{exp(+z se)} <= S <= S^{exp(-z se)}, which stays
inside [0, 1]. The median survival time is the first t with S(t) <= 1/2; its interval is the set
of t where the band contains 1/2 (Brookmeyer-Crowley type, as in R's ``survival``).
Censored units leave the risk set after their time (events precede censorings at ties).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def kaplan_meier(times, observed, level: float = 0.95) -> pd.DataFrame:
    """The survival curve at each distinct event time: time, at_risk, events, survival, lower,
    upper (pointwise log-log band at ``level``). ``observed`` is False for censored units."""
    times = np.asarray(times, dtype=float)
    observed = np.asarray(observed, dtype=bool)
    event_times = np.unique(times[observed])
    at_risk = (times[None, :] >= event_times[:, None]).sum(axis=1)
    events = ((times[None, :] == event_times[:, None]) & observed[None, :]).sum(axis=1)
    survival = np.cumprod(1.0 - events / at_risk)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood = np.cumsum(events / (at_risk * (at_risk - events)))
        se = np.sqrt(greenwood) / np.abs(np.log(survival))
        z = stats.norm.isf((1.0 - level) / 2.0)
        lower = np.where(survival > 0, survival ** np.exp(z * se), 0.0)
        upper = np.where(survival > 0, survival ** np.exp(-z * se), 0.0)
    return pd.DataFrame(
        {
            "time": event_times,
            "at_risk": at_risk,
            "events": events,
            "survival": survival,
            "lower": np.nan_to_num(lower, nan=0.0),
            "upper": np.nan_to_num(upper, nan=1.0),
        }
    )


def survival_at(curve: pd.DataFrame, t, column: str = "survival") -> np.ndarray:
    """The step function ``column`` of a Kaplan-Meier table evaluated at times ``t`` (1 before the
    first event)."""
    t = np.asarray(t, dtype=float)
    index = np.searchsorted(curve["time"].values, t, side="right") - 1
    values = np.append(curve[column].values, np.nan)  # index -1 (before any event) reads the pad
    return np.where(index >= 0, values[index], 1.0)


def _first_time_at_or_below(curve: pd.DataFrame, column: str, level: float) -> float:
    hit = curve["time"].values[curve[column].values <= level]
    return float(hit[0]) if hit.size else math.inf


def median_survival(curve: pd.DataFrame) -> tuple[float, float, float]:
    """(median, lower, upper): first times where S, its lower band and its upper band reach 1/2;
    inf where that never happens within the observed times (median beyond censoring)."""
    return (
        _first_time_at_or_below(curve, "survival", 0.5),
        _first_time_at_or_below(curve, "lower", 0.5),
        _first_time_at_or_below(curve, "upper", 0.5),
    )
