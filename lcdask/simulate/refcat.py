"""An SDSS-like reference catalog of the field, with realistic errors, incompleteness and mistakes.

- Every non-moving star (variables at their catalog, i.e. mean/out-of-eclipse, magnitude), over the
  detector plus the layout margin; movers are absent.
- Photometric errors ``err(m) = hypot(0.015, 10**(0.4 (m - 23.25)))`` (0.02 at r = 18, 0.05 at
  20, 0.2 at 21.5); the listed magnitudes are scattered by them. Positions scattered by
  ``hypot(0.03", 0.1" err(r)/0.05)`` per axis.
- Completeness 1 for r <= 20, falling linearly to 0 at r = 22.
- A fraction ``refcat_bad_fraction`` of the entries is wrong: one third are blends (a star and its
  nearest neighbour within 6 arcsec merged: flux-weighted position, summed flux) as far as such
  pairs exist, the rest have g and r off by 0.3-2 mag (either sign).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

REFCAT_COLUMNS = ("objid", "ra", "dec", "g", "g_err", "r", "r_err")
REFCAT_TRUTH_COLUMNS = ("objid", "star_id", "star_id2", "problem")
OBJID_BASE = 1237650000000000000
BLEND_RADIUS_ARCSEC = 6.0


def mag_error(mag: np.ndarray) -> np.ndarray:
    """SDSS-like 1-sigma magnitude error."""
    return np.hypot(0.015, 10.0 ** (0.4 * (np.asarray(mag, dtype=float) - 23.25)))


def completeness(r: np.ndarray) -> np.ndarray:
    """Detection probability of a star of magnitude r: 1 to r = 20, linear to 0 at r = 22."""
    return np.clip((22.0 - np.asarray(r, dtype=float)) / 2.0, 0.0, 1.0)


def make_refcat(
    stars: pd.DataFrame, bad_fraction: float, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build the reference catalog from the truth stars.

    Parameters
    ----------
    stars
        ``stars.parquet`` (movers are dropped here).
    bad_fraction
        Fraction of entries that are wrong or blended.
    rng
        The night's catalog stream.

    Returns
    -------
    refcat, refcat_truth : pandas.DataFrame
        The catalog (``objid``, ``ra``, ``dec``, ``g``, ``g_err``, ``r``, ``r_err``) and, per
        entry, the truth star(s) behind it and its ``problem`` ("", ``wrong_mag``, ``blend``).
    """
    fixed = stars[stars["kind"] != "moving"].reset_index(drop=True)
    n = len(fixed)
    ra = fixed["ra"].to_numpy(float).copy()
    dec = fixed["dec"].to_numpy(float).copy()
    r_true = fixed["mag"].to_numpy(float).copy()
    g_true = fixed["g_mag"].to_numpy(float).copy()
    star_id = fixed["star_id"].to_numpy(np.int64)
    star_id2 = np.full(n, -1, dtype=np.int64)
    problem = np.full(n, "", dtype=object)
    alive = np.ones(n, dtype=bool)
    # detection depends on the real brightness of the star, not on what the catalog then lists
    detected = rng.uniform(0.0, 1.0, n) < completeness(r_true)

    n_bad = int(rng.binomial(int(detected.sum()), bad_fraction)) if n else 0
    # blends: merge a star with its nearest neighbour within BLEND_RADIUS_ARCSEC
    if n > 1 and n_bad:
        cosd = np.cos(np.deg2rad(np.median(dec)))
        xy = np.column_stack([ra * cosd, dec]) * 3600.0
        dist, nbr = cKDTree(xy).query(xy, k=2)
        candidates = np.flatnonzero(dist[:, 1] < BLEND_RADIUS_ARCSEC)
        rng.shuffle(candidates)
        n_blend_target = n_bad // 3
        n_blend = 0
        for i in candidates:
            if n_blend >= n_blend_target:
                break
            j = int(nbr[i, 1])
            if not (detected[i] and alive[i] and alive[j]) or problem[i] or problem[j]:
                continue
            fi, fj = 10 ** (-0.4 * r_true[i]), 10 ** (-0.4 * r_true[j])
            gi, gj = 10 ** (-0.4 * g_true[i]), 10 ** (-0.4 * g_true[j])
            w = fi / (fi + fj)
            ra[i] = w * ra[i] + (1 - w) * ra[j]
            dec[i] = w * dec[i] + (1 - w) * dec[j]
            r_true[i] = -2.5 * np.log10(fi + fj)
            g_true[i] = -2.5 * np.log10(gi + gj)
            star_id2[i] = star_id[j]
            problem[i] = "blend"
            alive[j] = False
            n_blend += 1
        n_wrong = n_bad - n_blend
    else:
        n_wrong = n_bad
    pool = np.flatnonzero(alive & detected & (problem == ""))
    wrong = rng.choice(pool, min(n_wrong, pool.size), replace=False) if pool.size else pool
    offset = rng.uniform(0.3, 2.0, wrong.size) * rng.choice([-1.0, 1.0], wrong.size)
    r_true[wrong] += offset
    g_true[wrong] += offset + rng.normal(0.0, 0.1, wrong.size)
    problem[wrong] = "wrong_mag"

    r_err = mag_error(r_true)
    g_err = mag_error(g_true)
    r_obs = r_true + rng.normal(0.0, 1.0, n) * r_err
    g_obs = g_true + rng.normal(0.0, 1.0, n) * g_err
    pos_err = np.hypot(0.03, 0.1 * r_err / 0.05) / 3600.0
    dec_obs = dec + rng.normal(0.0, 1.0, n) * pos_err
    ra_obs = ra + rng.normal(0.0, 1.0, n) * pos_err / np.cos(np.deg2rad(dec))
    keep = alive & detected

    objid = OBJID_BASE + np.arange(n, dtype=np.int64)
    refcat = pd.DataFrame(
        {
            "objid": objid,
            "ra": np.mod(ra_obs, 360.0),
            "dec": dec_obs,
            "g": g_obs,
            "g_err": g_err,
            "r": r_obs,
            "r_err": r_err,
        }
    )[keep].reset_index(drop=True)
    truth = pd.DataFrame(
        {"objid": objid, "star_id": star_id, "star_id2": star_id2, "problem": problem.astype(str)}
    )[keep].reset_index(drop=True)
    return refcat, truth
