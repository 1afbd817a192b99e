"""RANSAC's pieces as scikit-learn computes them (`lcdask.photcal`, `lcdask.classify`).

The run's process does not import scikit-learn (2 s): these reproduce, draw for draw, what its
``RANSACRegressor`` does with a seeded `numpy.random.RandomState`, so that the fits equal
scikit-learn's to the bit (tests/test_photcal.py, tests/test_classify.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["dynamic_max_trials", "r2_score", "sample_without_replacement"]


def r2_score(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> float:
    """`sklearn.metrics.r2_score` of ``(n,)`` or ``(n, k)`` outputs as it computes it (columns,
    force_finite, uniform average)."""
    if y_true.shape[0] < 2:
        return float("nan")
    yt, yp = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1)
    numerator = np.sum((yt - yp) ** 2, axis=0)
    denominator = np.sum((yt - np.mean(yt, axis=0)) ** 2, axis=0)
    scores = np.ones(yt.shape[1])
    valid = (numerator != 0) & (denominator != 0)
    scores[valid] = 1 - numerator[valid] / denominator[valid]
    scores[(numerator != 0) & (denominator == 0)] = 0.0
    return float(np.mean(scores))


def dynamic_max_trials(
    n_inliers: int, n_samples: int, min_samples: int, stop_probability: float
) -> float:
    """scikit-learn's ``_dynamic_max_trials``: trials enough to have drawn an outlier-free set."""
    nom = max(np.spacing(1), 1.0 - stop_probability)
    denom = max(np.spacing(1), 1.0 - (n_inliers / float(n_samples)) ** min_samples)
    if nom == 1:
        return 0.0
    if denom == 1:
        return float("inf")
    return abs(float(np.ceil(np.log(nom) / np.log(denom))))


def sample_without_replacement(
    rng: np.random.RandomState, n_population: int, n_samples: int
) -> NDArray[np.intp]:
    """``sklearn.utils.random.sample_without_replacement(..., method="auto")``, draw for draw.

    A permutation when ``n_samples / n_population`` is between 0.01 and 0.99, else tracking
    selection (repeated ``randint``) below 0.2 and reservoir sampling above, as scikit-learn
    chooses, so that a seeded `numpy.random.RandomState` gives its subsets.
    """
    ratio = n_samples / n_population if n_population != 0 else 1.0
    if 0.01 < ratio < 0.99:
        return rng.permutation(n_population)[:n_samples]
    out = np.empty(n_samples, dtype=int)
    if ratio < 0.2:
        selected: set[int] = set()
        for i in range(n_samples):
            j = rng.randint(n_population)
            while j in selected:
                j = rng.randint(n_population)
            selected.add(j)
            out[i] = j
        return out
    out[:] = np.arange(n_samples)
    for i in range(n_samples, n_population):
        j = rng.randint(0, i + 1)
        if j < n_samples:
            out[j] = i
    return out
