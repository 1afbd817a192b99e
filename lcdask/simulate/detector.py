"""The CCD: bias, dark current, flat-field response, bad pixels, cosmic rays, noise, digitisation.

Raw frame model, per pixel (electrons ``e``, ADU ``a``)::

    e = Poisson(gain * truth_adu * flat + dark_e_s * exptime_s) + cosmic-ray electrons
    e = min(e, full_well_e) + Normal(0, read_noise_e)
    a = clip(round(e / gain + bias_adu_map), 0, 65535)         -> uint16 (BITPIX 16, BZERO 32768)

``flat`` is the true response (mean exactly 1 over the detector); ``truth_adu`` is the light
frame's truth image (`lcdask.simulate.render`); twilight flats use a uniform ``level_adu`` instead;
darks and bias frames have no light. Cosmic rays hit lights, darks and flats at
``cosmic_rate_cm2_s`` events per cm^2 per second of exposure (bias frames, 0 s, get none; the
default 0.05 is 3 per cm^2 per minute, 6 per minute on a 2048 x 2048 array of 9 um pixels): each is
a short straight track 1-10 px long (or a 1-2 px blob) depositing 150-15000 e- per pixel
(log-normal, median 1000 e-).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lcdask.simulate.config import SimConfig

ADC_MAX = 65535
BAD_PIXEL_COLUMNS = ("x", "y", "kind", "origin", "dark_e_s", "response")
COSMIC_COLUMNS = ("frame_index", "filename", "imagetyp", "x", "y", "electrons")


def bias_map(cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """True bias (ADU): level, weak column pattern (``bias_column_rms_adu``), gentle row ramp."""
    size = cfg.size
    cols = rng.normal(0.0, cfg.bias_column_rms_adu, size)
    # a little correlation between neighbouring columns, as from the readout amplifier
    cols = np.convolve(cols, np.array([0.25, 0.5, 0.25]), mode="same") * np.sqrt(8.0 / 3.0)
    ramp = 1.5 * np.linspace(-1.0, 1.0, size) ** 2
    return cfg.bias_adu + cols[None, :] + ramp[:, None]


def dark_and_flat_maps(
    cfg: SimConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """True dark current (e-/s/px), flat response (mean exactly 1) and the bad-pixel table.

    Parameters
    ----------
    cfg
        The configuration.
    rng
        The night's detector stream.

    Returns
    -------
    dark_e_s, flat, bad_pixels
        Two (size, size) float64 maps and a table with one row per bad pixel (``x``, ``y``,
        ``kind`` in {hot, dead}, ``origin`` in {pixel, column}, ``dark_e_s``, ``response``).
        A pixel on a bad column is listed once with origin ``column``.
    """
    size = cfg.size
    n_pix = size * size
    dark = np.full((size, size), cfg.dark_current_e_s) * rng.uniform(0.9, 1.1, (size, size))

    # hot pixels: log-uniform 1-500 e-/s
    n_hot = int(rng.binomial(n_pix, cfg.hot_pixel_fraction))
    hot_flat = rng.choice(n_pix, n_hot, replace=False)
    hot_rate = np.exp(rng.uniform(np.log(1.0), np.log(500.0), n_hot))
    hot_y, hot_x = np.divmod(hot_flat, size)
    dark[hot_y, hot_x] = hot_rate
    # hot columns: a charge trap from a random row to the top, 1-5 e-/s
    hot_cols = rng.choice(size, cfg.n_hot_columns, replace=False) if cfg.n_hot_columns else []
    col_rows = []
    for c in hot_cols:
        y0 = int(rng.integers(0, size // 2))
        rate = float(np.exp(rng.uniform(np.log(1.0), np.log(5.0))))
        dark[y0:, c] += rate
        col_rows.append((int(c), np.arange(y0, size)))

    # flat: vignetting x dust donuts x PRNU
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (2.0 * c * c)
    flat = 1.0 - cfg.vignetting * r2**1.5
    for _ in range(cfg.n_dust):
        dx, dy = rng.uniform(0.05 * size, 0.95 * size, 2)
        radius = rng.uniform(8.0, 30.0)
        width = radius * rng.uniform(0.2, 0.35)
        depth = rng.uniform(0.02, 0.06)
        box = int(radius + 4 * width) + 1
        y0, y1 = max(int(dy) - box, 0), min(int(dy) + box + 1, size)
        x0, x1 = max(int(dx) - box, 0), min(int(dx) + box + 1, size)
        rr = np.hypot(xx[y0:y1, x0:x1] - dx, yy[y0:y1, x0:x1] - dy)
        ring = np.exp(-0.5 * ((rr - radius) / width) ** 2)
        inner = 0.4 * (rr < radius) * (1.0 - ring)
        flat[y0:y1, x0:x1] *= 1.0 - depth * (ring + inner)
    flat *= 1.0 + cfg.prnu * rng.standard_normal((size, size))
    # dead pixels (response 0-0.3) and dead (low-response) columns
    n_dead = int(rng.binomial(n_pix, cfg.dead_pixel_fraction))
    dead_flat = rng.choice(n_pix, n_dead, replace=False)
    dead_y, dead_x = np.divmod(dead_flat, size)
    flat[dead_y, dead_x] = rng.uniform(0.0, 0.3, n_dead)
    dead_cols = rng.choice(size, cfg.n_dead_columns, replace=False) if cfg.n_dead_columns else []
    for col in dead_cols:
        flat[:, col] *= rng.uniform(0.2, 0.5)
    flat /= flat.mean()

    parts = [
        pd.DataFrame(
            {"x": hot_x, "y": hot_y, "kind": "hot", "origin": "pixel"},
        ),
        pd.DataFrame({"x": dead_x, "y": dead_y, "kind": "dead", "origin": "pixel"}),
    ]
    for col, rows in col_rows:
        parts.append(pd.DataFrame({"x": col, "y": rows, "kind": "hot", "origin": "column"}))
    for col in dead_cols:
        parts.append(
            pd.DataFrame({"x": int(col), "y": np.arange(size), "kind": "dead", "origin": "column"})
        )
    table = pd.concat(parts, ignore_index=True).astype({"x": np.int64, "y": np.int64})
    # a pixel on a bad column is listed once, as the column
    table = table.sort_values("origin").drop_duplicates(["x", "y", "kind"], keep="first")
    table = table.sort_values(["kind", "origin", "y", "x"]).reset_index(drop=True)
    table["dark_e_s"] = dark[table["y"], table["x"]]
    table["response"] = flat[table["y"], table["x"]]
    return dark, flat, table[list(BAD_PIXEL_COLUMNS)]


def cosmic_rays(
    cfg: SimConfig, exptime_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosmic-ray hits in one exposure: pixel ``x``, ``y`` and deposited electrons (one per pixel).

    The number of events is Poisson with mean ``cosmic_rate_cm2_s * area_cm2 * exptime_s``.
    """
    area_cm2 = (cfg.size * cfg.pixel_size_um * 1e-4) ** 2
    n_events = int(rng.poisson(cfg.cosmic_rate_cm2_s * area_cm2 * exptime_s))
    xs, ys, es = [], [], []
    for _ in range(n_events):
        x0, y0 = rng.uniform(0.0, cfg.size, 2)
        if rng.uniform() < 0.3:  # blob: 1-2 px
            length = rng.uniform(0.0, 1.0)
        else:  # track: 1-10 px, short ones more frequent
            length = min(10.0, rng.exponential(3.0) + 1.0)
        ang = rng.uniform(0.0, np.pi)
        steps = np.linspace(0.0, length, max(2, int(np.ceil(length * 3)) + 1))
        px = np.floor(x0 + steps * np.cos(ang)).astype(np.int64)
        py = np.floor(y0 + steps * np.sin(ang)).astype(np.int64)
        ok = (px >= 0) & (px < cfg.size) & (py >= 0) & (py < cfg.size)
        pix = np.unique(py[ok] * cfg.size + px[ok])
        if pix.size == 0:
            continue
        electrons = np.clip(rng.lognormal(np.log(1000.0), 0.7, pix.size), 150.0, 15000.0)
        py_u, px_u = np.divmod(pix, cfg.size)
        xs.append(px_u)
        ys.append(py_u)
        es.append(electrons)
    if not xs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    e = np.concatenate(es)
    # merge pixels hit by two events
    flat_idx = y * cfg.size + x
    uniq, inv = np.unique(flat_idx, return_inverse=True)
    e = np.bincount(inv, e)
    y, x = np.divmod(uniq, cfg.size)
    return x, y, e


def expose(
    cfg: SimConfig,
    mean_electrons: np.ndarray,
    bias: np.ndarray,
    rng: np.random.Generator,
    cosmic: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Poisson noise, cosmic rays, full well, read noise, bias and 16-bit digitisation.

    Parameters
    ----------
    cfg
        The configuration (gain, read noise, full well).
    mean_electrons
        Expected photo-electrons plus dark electrons per pixel.
    bias
        True bias map (ADU).
    rng
        The frame's stream (Poisson draws first, then read noise).
    cosmic
        ``(x, y, electrons)`` of cosmic-ray hits, or None.

    Returns
    -------
    numpy.ndarray
        uint16 raw image.
    """
    electrons = rng.poisson(mean_electrons).astype(np.float64)
    if cosmic is not None and cosmic[0].size:
        x, y, e = cosmic
        electrons[y, x] += e
    np.minimum(electrons, cfg.full_well_e, out=electrons)
    electrons += cfg.read_noise_e * rng.standard_normal(electrons.shape, dtype=np.float32)
    adu = electrons / cfg.gain_e_adu + bias
    np.rint(adu, out=adu)
    np.clip(adu, 0, ADC_MAX, out=adu)
    return adu.astype(np.uint16)
