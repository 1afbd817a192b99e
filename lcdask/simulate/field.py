"""The star field of the night: field stars, close pairs, bright stars, variables and movers.

Positions are laid out in the pixel frame of the true WCS before any drift (`NightGeometry`), over
the detector plus a margin (10% of the side + the drift + 32 px), and turned into RA/Dec through
that WCS: the truth tables carry only RA/Dec.

- Field stars: r from ``mag_bright`` to ``mag_faint`` with dN/dm ~ 10^(0.3 m), normalised to
  ``stars_per_deg2_r20`` stars per deg^2 brighter than r = 20 (6000/deg^2: about 2000 stars
  brighter than r = 20 in a 2048 x 2048 px frame at 1"/px); uniform positions.
- Colours g - r: 80% from N(0.55, 0.15) (F/G/K disc stars), 20% uniform 0.8-1.5 (K/M), clipped to
  0.2-1.5.
- The target (``is_target``, role ``target``) near the centre with the transit; an eclipsing binary
  and a pulsator; all three isolated (no other star within max(8 FWHM, 20 px)).
- ``n_saturated_stars`` stars of r 9-11.5 inside the frame; ``n_close_pairs`` pairs 1-3 FWHM apart.
- Movers: ``n_slow_movers`` moving 1-3 FWHM and ``n_fast_movers`` moving 30-300 px over the
  sequence (over 10 min for shorter sequences), with their whole track inside the frame.
- With a real sky (``sky_catalog = "tycho2"``) every catalog star over the detector plus margin is
  added at its position with its magnitude (role ``tycho2``), the target is put at
  ``target_ra_deg``/``target_dec_deg`` (replacing the catalog star there), and the synthetic
  field stars start at ``mag_bright``.
- With ``drift_centred`` the variables and movers are kept inside the frame over the whole drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field

import numpy as np
import pandas as pd

from lcdask.simulate.conditions import NightGeometry
from lcdask.simulate.config import SimConfig
from lcdask.simulate.tan import angular_separation_arcsec, pixel_to_world, world_to_pixel

TARGET_MATCH_ARCSEC = 3.0

STAR_COLUMNS = (
    "star_id",
    "ra",
    "dec",
    "mag",
    "g_mag",
    "kind",
    "is_target",
    "role",
    "pair_id",
    "var_type",
    "period_d",
    "t0_mjd",
    "depth",
    "depth2",
    "duration_d",
    "ingress_d",
    "amplitude",
)
LIMB_DARKENED_COLUMNS = ("rp_rs", "a_rs", "inc_deg", "u1", "u2")
"""Columns of ``stars.parquet`` only when the target's transit is limb-darkened
(``SimConfig.transit_shape``): its shape, NaN for every other star."""
MOVER_COLUMNS = (
    "star_id",
    "ra0",
    "dec0",
    "t0_mjd",
    "rate_ra_arcsec_h",
    "rate_dec_arcsec_h",
    "mag",
    "g_mag",
    "speed",
)


def luminosity_function_sample(
    rng: np.random.Generator, n: int, mag_bright: float, mag_faint: float
) -> np.ndarray:
    """Draw ``n`` magnitudes from dN/dm ~ 10^(0.3 m) between ``mag_bright`` and ``mag_faint``."""
    lo, hi = 10.0 ** (0.3 * mag_bright), 10.0 ** (0.3 * mag_faint)
    return np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / 0.3


def expected_star_count(cfg: SimConfig, area_deg2: float) -> float:
    """Expected number of field stars in ``area_deg2`` for the configured luminosity function."""
    frac = 10.0 ** (0.3 * (cfg.mag_faint - 20.0)) - 10.0 ** (0.3 * (cfg.mag_bright - 20.0))
    return cfg.stars_per_deg2_r20 * area_deg2 * frac


def draw_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """g - r colours with a realistic spread (0.2-1.5)."""
    red = rng.uniform(0.0, 1.0, n) < 0.2
    colour = np.where(red, rng.uniform(0.8, 1.5, n), rng.normal(0.55, 0.15, n))
    return np.clip(colour, 0.2, 1.5)


def field_margin_px(cfg: SimConfig) -> float:
    """Margin around the detector over which stars are laid out (and the refcat extends)."""
    if cfg.drift_centred:
        return 0.1 * cfg.size + drift_extent_px(cfg) + 32.0
    return 0.1 * cfg.size + cfg.drift_px_total + cfg.repoint_px + 4.0 * cfg.jitter_px + 32.0


def drift_extent_px(cfg: SimConfig) -> float:
    """How far a star moves on the detector from its mid-night place (``drift_centred``), else 0."""
    if not cfg.drift_centred:
        return 0.0
    return float(
        np.hypot(0.5, 0.15) * cfg.drift_px_total + 0.5 * cfg.repoint_px + 4.0 * cfg.jitter_px
    )


def _empty_var() -> dict[str, object]:
    return {
        "var_type": "",
        "period_d": np.nan,
        "t0_mjd": np.nan,
        "depth": 0.0,
        "depth2": 0.0,
        "duration_d": 0.0,
        "ingress_d": 0.0,
        "amplitude": 0.0,
    }


def _track_clearance(
    xm: float, ym: float, dx: float, dy: float, points: list[tuple[float, float]]
) -> float:
    """Smallest distance from the segment (xm -+ dx, ym -+ dy) to any of ``points``."""
    seg = np.array([2 * dx, 2 * dy])
    start = np.array([xm - dx, ym - dy])
    best = np.inf
    for p in points:
        rel = np.asarray(p) - start
        u = np.clip(rel @ seg / max(seg @ seg, 1e-12), 0.0, 1.0)
        best = min(best, float(np.hypot(*(rel - u * seg))))
    return best


@dataclass
class _FieldLayout:
    """The state `make_stars` carries between its steps, in the pixel frame of the true WCS.

    ``rows`` collects the stars drawn so far (in drawing order), ``special_xy`` the places of the
    variables, which the other stars and the movers' tracks keep clear of.
    """

    cfg: SimConfig
    rng: np.random.Generator
    nominal_fwhm: float
    extent: float
    t_start: float
    t_mid: float
    span: float
    rows: list[dict[str, object]] = dataclass_field(default_factory=list)
    special_xy: list[tuple[float, float]] = dataclass_field(default_factory=list)

    @classmethod
    def start(cls, cfg: SimConfig, time_mjd: np.ndarray, rng: np.random.Generator) -> _FieldLayout:
        """An empty layout timed on the light frames' mid-exposure times ``time_mjd``."""
        nominal_fwhm = cfg.seeing_fwhm_arcsec / cfg.pixel_scale_arcsec
        t = np.asarray(time_mjd, dtype=float)
        half_exp = 0.5 * cfg.exptime_s / 86400.0
        t_start, t_end = t[0] - half_exp, t[-1] + half_exp
        extent = drift_extent_px(cfg)
        span = t_end - t_start
        t_mid = 0.5 * (t_start + t_end)
        return cls(cfg, rng, nominal_fwhm, extent, t_start, t_mid, span)

    def add(
        self,
        x: float,
        y: float,
        mag: float,
        colour: float,
        role: str,
        var: dict[str, object] | None = None,
        pair_id: int = -1,
        kind: str = "stable",
        target: bool = False,
    ) -> None:
        """Append one star (``var``: its variability columns, none by default)."""
        self.rows.append(
            {
                "x": float(x),
                "y": float(y),
                "mag": float(mag),
                "g_mag": float(mag + colour),
                "kind": kind,
                "is_target": target,
                "role": role,
                "pair_id": pair_id,
                **(var or _empty_var()),
            }
        )

    def bounds(self, lo: float, hi: float) -> tuple[float, float]:
        """Pixel range for fractions ``lo``-``hi`` of the side, inside the frame over the drift."""
        size, extent = self.cfg.size, self.extent
        lo_px, hi_px = lo * size, hi * size
        if extent > 0:  # inside the frame over the whole drift
            lo_px = max(lo_px, extent + 0.05 * size)
            hi_px = min(hi_px, size - 1.0 - extent - 0.05 * size)
            if hi_px <= lo_px:
                lo_px = hi_px = (size - 1) / 2.0
        return lo_px, hi_px

    def place(self, lo: float, hi: float) -> tuple[float, float]:
        """Draw an isolated place for a variable (12 FWHM from the others) and record it."""
        for _ in range(1000):
            x, y = self.rng.uniform(*self.bounds(lo, hi), 2)
            if all(np.hypot(x - a, y - b) > 12 * self.nominal_fwhm for a, b in self.special_xy):
                break
        self.special_xy.append((float(x), float(y)))
        return float(x), float(y)


def _project_catalog(
    catalog: pd.DataFrame | None, geom: NightGeometry
) -> tuple[pd.DataFrame | None, np.ndarray | None, np.ndarray | None]:
    """The real stars numbered from 0 and their pixels in the true WCS (None if no catalog)."""
    if catalog is None:
        return None, None, None
    catalog = catalog.reset_index(drop=True)
    cat_x, cat_y = world_to_pixel(
        catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), *geom.reference_wcs()
    )
    return catalog, cat_x, cat_y


def _add_target(
    layout: _FieldLayout,
    geom: NightGeometry,
    catalog: pd.DataFrame | None,
    cat_x: np.ndarray | None,
    cat_y: np.ndarray | None,
) -> tuple[pd.DataFrame | None, np.ndarray | None, np.ndarray | None]:
    """Add the transiting target; return the catalog without the star the target replaces."""
    cfg, rng = layout.cfg, layout.rng
    duration = min(cfg.transit_duration_h / 24.0, 0.5 * layout.span)
    target_mag = cfg.target_mag
    if cfg.target_ra_deg is not None and cfg.target_dec_deg is not None:
        tx, ty = world_to_pixel(
            np.array([cfg.target_ra_deg]), np.array([cfg.target_dec_deg]), *geom.reference_wcs()
        )
        x, y = float(tx[0]), float(ty[0])
        layout.special_xy.append((x, y))
        if catalog is not None and len(catalog):
            sep = angular_separation_arcsec(
                catalog["ra"], catalog["dec"], cfg.target_ra_deg, cfg.target_dec_deg
            )
            nearest = int(np.argmin(sep))
            if sep[nearest] < TARGET_MATCH_ARCSEC:  # the target is this catalog star
                target_mag = float(catalog["mag"].iloc[nearest])
                keep = np.arange(len(catalog)) != nearest
                catalog, cat_x, cat_y = catalog[keep], cat_x[keep], cat_y[keep]
    else:
        x, y = layout.place(0.4, 0.6)
    colour = float(draw_colours(rng, 1)[0])
    period = float(rng.uniform(2.0, 5.0))  # drawn even when given: the stream stays the same
    if cfg.transit_period_d is not None:
        period = float(cfg.transit_period_d)
    var: dict[str, object] = {
        "var_type": "transit",
        "period_d": period,
        "t0_mjd": layout.t_mid + cfg.transit_offset_h / 24.0,
        "depth": cfg.transit_depth,
        "depth2": 0.0,
        "duration_d": duration,
        "ingress_d": 0.12 * duration,
        "amplitude": 0.0,
    }
    if cfg.transit_shape == "limb-darkened":
        var.update(limb_darkened_columns(cfg, period))
    layout.add(x, y, target_mag, colour, "target", var, kind="variable", target=True)
    return catalog, cat_x, cat_y


def limb_darkened_columns(cfg: SimConfig, period_d: float) -> dict[str, float]:
    """The target's truth columns of a limb-darkened transit (``transit_shape``).

    ``depth`` is (Rp/Rs)^2 (the fits' depth; the flux at mid-transit is lower, by the limb
    darkening), ``duration_d`` is T14 and ``ingress_d`` (T14 - T23) / 2 (Winn 2010), and
    `LIMB_DARKENED_COLUMNS` hold the shape that `lcdask.simulate.variability.flux_factor`
    renders.
    """
    from lcdask.transit.model import full_duration_d, inclination_deg, total_duration_d

    rp = cfg.transit_rp_rs if cfg.transit_rp_rs is not None else np.sqrt(cfg.transit_depth)
    t14 = float(total_duration_d(period_d, rp, cfg.transit_a_rs, cfg.transit_b))
    t23 = float(full_duration_d(period_d, rp, cfg.transit_a_rs, cfg.transit_b))
    if not t14 > 0:
        raise ValueError(
            f"SimConfig: a transit of Rp/Rs {rp:.4f}, a/Rs {cfg.transit_a_rs} and impact "
            f"parameter {cfg.transit_b} never crosses the star; lower transit_b"
        )
    return {
        "depth": float(rp) ** 2,
        "duration_d": t14,
        "ingress_d": 0.5 * (t14 - t23),
        "rp_rs": float(rp),
        "a_rs": float(cfg.transit_a_rs),
        "inc_deg": float(inclination_deg(cfg.transit_a_rs, cfg.transit_b)),
        "u1": float(cfg.transit_u1),
        "u2": float(cfg.transit_u2),
    }


def _add_eclipsing_binary(layout: _FieldLayout) -> None:
    """Add the isolated eclipsing binary (r 14-15.5 plus ``variable_mag_shift``)."""
    cfg, rng, span = layout.cfg, layout.rng, layout.span
    eb_duration = min(3.0 / 24.0, 0.4 * span)
    x, y = layout.place(0.2, 0.8)
    layout.add(
        x,
        y,
        rng.uniform(14.0, 15.5) + cfg.variable_mag_shift,
        float(draw_colours(rng, 1)[0]),
        "eclipsing",
        {
            "var_type": "eclipsing",
            "period_d": float(rng.uniform(0.6, 1.5)),
            "t0_mjd": layout.t_start + 0.3 * span,
            "depth": cfg.eclipse_depth,
            "depth2": 0.3 * cfg.eclipse_depth,
            "duration_d": eb_duration,
            "ingress_d": 0.5 * eb_duration,
            "amplitude": 0.0,
        },
        kind="variable",
    )


def _add_pulsator(layout: _FieldLayout) -> None:
    """Add the isolated pulsator (r 13.5-15.5 plus ``variable_mag_shift``)."""
    cfg, rng = layout.cfg, layout.rng
    period = float(np.clip(layout.span / 1.5, 0.03, 0.2))
    x, y = layout.place(0.2, 0.8)
    layout.add(
        x,
        y,
        rng.uniform(13.5, 15.5) + cfg.variable_mag_shift,
        float(draw_colours(rng, 1)[0]),
        "pulsator",
        {
            "var_type": "pulsator",
            "period_d": period,
            "t0_mjd": layout.t_start + float(rng.uniform(0.0, period)),
            "depth": 0.0,
            "depth2": 0.0,
            "duration_d": 0.0,
            "ingress_d": 0.0,
            "amplitude": cfg.pulsator_amplitude,
        },
        kind="variable",
    )


def _add_bright_stars_and_pairs(layout: _FieldLayout) -> None:
    """Add the bright (saturated) stars and the close pairs, inside the frame."""
    cfg, rng, size = layout.cfg, layout.rng, layout.cfg.size
    for _ in range(cfg.n_saturated_stars):
        xy = rng.uniform(0.05 * size, 0.95 * size, 2)
        layout.add(xy[0], xy[1], rng.uniform(9.0, 11.5), float(draw_colours(rng, 1)[0]), "bright")
    for pair in range(cfg.n_close_pairs):
        xy = rng.uniform(0.1 * size, 0.9 * size, 2)
        m1 = rng.uniform(14.0, 17.0)
        sep = rng.uniform(1.0, 3.0) * layout.nominal_fwhm
        ang = rng.uniform(0.0, 2.0 * np.pi)
        layout.add(xy[0], xy[1], m1, float(draw_colours(rng, 1)[0]), "close_pair", pair_id=pair)
        layout.add(
            xy[0] + sep * np.cos(ang),
            xy[1] + sep * np.sin(ang),
            m1 + rng.uniform(0.0, 2.0),
            float(draw_colours(rng, 1)[0]),
            "close_pair",
            pair_id=pair,
        )


def _add_field_stars(
    layout: _FieldLayout,
    catalog: pd.DataFrame | None,
    cat_x: np.ndarray | None,
    cat_y: np.ndarray | None,
) -> None:
    """Add the synthetic field stars and the real catalog stars over the detector plus margin."""
    cfg, rng, size = layout.cfg, layout.rng, layout.cfg.size
    margin = field_margin_px(cfg)
    side_deg = (size + 2 * margin) * cfg.pixel_scale_arcsec / 3600.0
    n_field = int(rng.poisson(expected_star_count(cfg, side_deg**2)))
    fx = rng.uniform(-margin, size - 1 + margin, n_field)
    fy = rng.uniform(-margin, size - 1 + margin, n_field)
    fmag = luminosity_function_sample(rng, n_field, cfg.mag_bright, cfg.mag_faint)
    fcol = draw_colours(rng, n_field)
    for x, y, m, c in zip(fx, fy, fmag, fcol, strict=True):
        layout.add(x, y, m, c, "field")
    if catalog is not None:
        inside = (
            (cat_x >= -margin)
            & (cat_x <= size - 1 + margin)
            & (cat_y >= -margin)
            & (cat_y <= size - 1 + margin)
            & np.isfinite(catalog["mag"].to_numpy(float))
        )
        ccol = draw_colours(rng, int(inside.sum()))
        for x, y, m, c in zip(
            cat_x[inside], cat_y[inside], catalog["mag"].to_numpy(float)[inside], ccol, strict=True
        ):
            layout.add(x, y, m, c, "tycho2")


def _draw_movers(
    layout: _FieldLayout, geom: NightGeometry, iso_radius: float
) -> list[dict[str, object]]:
    """Draw the slow then the fast movers, each whole track inside the frame and clear of the
    variables; one ``movers.parquet`` row (without ``star_id``) per mover."""
    cfg, rng, size, extent = layout.cfg, layout.rng, layout.cfg.size, layout.extent
    span_h = max(layout.span * 24.0, 1.0 / 6.0)
    mover_rows = []
    for speed, count in (("slow", cfg.n_slow_movers), ("fast", cfg.n_fast_movers)):
        for _ in range(count):
            if speed == "slow":
                dist = rng.uniform(1.0, 3.0) * layout.nominal_fwhm
            else:
                longest = min(300.0, 0.5 * size)
                if extent > 0:
                    longest = min(longest, 0.6 * (0.8 * size - 2.0 * extent))
                dist = rng.uniform(30.0, max(30.0, longest))
            ang = rng.uniform(0.0, 2.0 * np.pi)
            # the whole track (over max(sequence, 10 min)) stays inside the frame
            lo = 0.1 * size + 0.5 * dist + extent
            hi = max(lo + 1.0, size - 1 - 0.1 * size - 0.5 * dist - extent)
            dx, dy = 0.5 * dist * np.cos(ang), 0.5 * dist * np.sin(ang)
            for _ in range(200):  # keep the track clear of the (isolated) variables
                xm, ym = rng.uniform(lo, hi, 2)
                if _track_clearance(xm, ym, dx, dy, layout.special_xy) > iso_radius:
                    break
            mag = rng.uniform(cfg.mover_mag_bright, cfg.mover_mag_faint)
            colour = rng.uniform(0.4, 0.8)
            ra, dec = pixel_to_world(
                np.array([xm, xm - dx, xm + dx]),
                np.array([ym, ym - dy, ym + dy]),
                *geom.reference_wcs(),
            )
            dra = (np.mod(ra[2] - ra[1] + 180.0, 360.0) - 180.0) * np.cos(np.deg2rad(dec[0]))
            ddec = dec[2] - dec[1]
            track_h = span_h
            mover_rows.append(
                {
                    "ra0": float(ra[0]),
                    "dec0": float(dec[0]),
                    "t0_mjd": layout.t_mid,
                    "rate_ra_arcsec_h": float(dra * 3600.0 / track_h),
                    "rate_dec_arcsec_h": float(ddec * 3600.0 / track_h),
                    "mag": float(mag),
                    "g_mag": float(mag + colour),
                    "speed": speed,
                }
            )
    return mover_rows


def _isolate_variables(
    stars: pd.DataFrame, special_xy: list[tuple[float, float]], iso_radius: float
) -> pd.DataFrame:
    """Drop every other star (both members of a close pair) within ``iso_radius`` of a variable."""
    near = np.zeros(len(stars), dtype=bool)
    for a, b in special_xy:
        near |= np.hypot(stars["x"] - a, stars["y"] - b).to_numpy() <= iso_radius
    near &= ~stars["role"].isin(["target", "eclipsing", "pulsator"]).to_numpy()
    bad_pairs = set(stars.loc[near & (stars["pair_id"] >= 0).to_numpy(), "pair_id"])
    near |= stars["pair_id"].isin(bad_pairs).to_numpy() & (stars["pair_id"] >= 0).to_numpy()
    return stars[~near].reset_index(drop=True)


def _star_and_mover_tables(
    stars: pd.DataFrame, mover_rows: list[dict[str, object]], geom: NightGeometry
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``stars.parquet`` (pixel places turned into RA/Dec, movers appended) and ``movers.parquet``,
    numbered from 1: the stars first, then the movers."""
    ra, dec = pixel_to_world(stars["x"].to_numpy(), stars["y"].to_numpy(), *geom.reference_wcs())
    stars = stars.drop(columns=["x", "y"])
    stars.insert(0, "dec", dec)
    stars.insert(0, "ra", ra)
    movers = pd.DataFrame(mover_rows, columns=[c for c in MOVER_COLUMNS if c != "star_id"])
    first_mover = len(stars) + 1
    stars.insert(0, "star_id", np.arange(1, len(stars) + 1, dtype=np.int64))
    movers.insert(0, "star_id", np.arange(first_mover, first_mover + len(movers), dtype=np.int64))
    mover_stars = pd.DataFrame(
        {
            "star_id": movers["star_id"],
            "ra": movers["ra0"],
            "dec": movers["dec0"],
            "mag": movers["mag"],
            "g_mag": movers["g_mag"],
            "kind": "moving",
            "is_target": False,
            "role": "mover",
            "pair_id": -1,
            **_empty_var(),
        }
    )
    stars = pd.concat([stars, mover_stars], ignore_index=True) if len(movers) else stars
    columns = list(STAR_COLUMNS) + [c for c in LIMB_DARKENED_COLUMNS if c in stars.columns]
    stars = stars[columns].astype(
        {"star_id": np.int64, "pair_id": np.int64, "is_target": bool, "kind": str, "role": str}
    )
    return stars.reset_index(drop=True), movers[list(MOVER_COLUMNS)].reset_index(drop=True)


def make_stars(
    cfg: SimConfig,
    geom: NightGeometry,
    time_mjd: np.ndarray,
    rng: np.random.Generator,
    *,
    catalog: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the star field, the variables and the movers.

    Parameters
    ----------
    cfg
        The configuration.
    geom
        The night geometry (its drift-free true WCS lays out the field).
    time_mjd
        Mid-exposure times of the light frames (the variables and movers are timed on them).
    rng
        The night's star-field stream.
    catalog
        Real stars (``ra``, ``dec``, ``mag``, e.g. `lcdask.io.anindex.index_stars`) to put in the
        field at their positions, or None (a synthetic sky).

    Returns
    -------
    stars, movers : pandas.DataFrame
        ``stars.parquet`` (movers included with kind ``moving`` at their t0 position) and
        ``movers.parquet``.
    """
    # the steps draw from ``rng`` in this order; reordering them changes every simulated night
    layout = _FieldLayout.start(cfg, time_mjd, rng)
    catalog, cat_x, cat_y = _project_catalog(catalog, geom)
    catalog, cat_x, cat_y = _add_target(layout, geom, catalog, cat_x, cat_y)
    _add_eclipsing_binary(layout)
    _add_pulsator(layout)
    iso_radius = max(8.0 * layout.nominal_fwhm, 20.0)
    _add_bright_stars_and_pairs(layout)
    _add_field_stars(layout, catalog, cat_x, cat_y)
    mover_rows = _draw_movers(layout, geom, iso_radius)
    stars = _isolate_variables(pd.DataFrame(layout.rows), layout.special_xy, iso_radius)
    return _star_and_mover_tables(stars, mover_rows, geom)
