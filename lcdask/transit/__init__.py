"""Transit fitting: the model, the planet's parameters, the fit with errors, and its products.

=============  ====================================================================================
module         what it holds
=============  ====================================================================================
``model``      the limb-darkened transit (batman) and its geometry: durations, b, Kipping q1 q2
``planet``     `PlanetParameters`: from the options, or the NASA Exoplanet Archive (cached)
``fit``        `fit_transit`: transit times detrending, least squares, outliers, emcee errors
``products``   `fit_run_transit_full` for a run; the table, figure, AAVSO report, JSON, report data
``timing``     `fit_transit_time`: the mid-time only with the shape fixed (prayer-bead errors)
``simulate``   `simulated_transit_night`: nights with injected transits, for tests and benchmarks
=============  ====================================================================================
"""

from lcdask.transit.fit import (
    ChainSummary,
    Coverage,
    ParameterEstimate,
    TransitFit,
    binned_scatter,
    fit_transit,
    red_noise_beta,
)
from lcdask.transit.model import (
    TRANSIT_BAD,
    TransitCurve,
    TransitShape,
    full_duration_d,
    impact_parameter,
    inclination_deg,
    q_to_u,
    total_duration_d,
    transit_model,
    u_to_q,
)
from lcdask.transit.planet import (
    PlanetError,
    PlanetParameters,
    archive_name,
    planet_from_row,
    query_planet,
    resolve_planet,
)
from lcdask.transit.timing import TransitTimeFit, fit_run_transit, fit_transit_time

__all__ = [
    "TRANSIT_BAD",
    "ChainSummary",
    "Coverage",
    "ParameterEstimate",
    "PlanetError",
    "PlanetParameters",
    "TransitCurve",
    "TransitFit",
    "TransitShape",
    "TransitTimeFit",
    "archive_name",
    "binned_scatter",
    "fit_run_transit",
    "fit_transit",
    "fit_transit_time",
    "full_duration_d",
    "impact_parameter",
    "inclination_deg",
    "planet_from_row",
    "q_to_u",
    "query_planet",
    "red_noise_beta",
    "resolve_planet",
    "total_duration_d",
    "transit_model",
    "u_to_q",
]
