"""Transit fitting: the model, the planet's parameters, the fit with errors, and its products.

=============  ====================================================================================
module         what it holds
=============  ====================================================================================
``model``      the limb-darkened transit (batman) and its geometry: durations, b, Kipping q1 q2
``planet``     `PlanetParameters`: from the options, or the NASA Exoplanet Archive (cached)
``fit``        `fit_transit`: transit times detrending, least squares, outliers, emcee errors
``noise``      `NoiseModel`: white plus correlated noise, fitted; the binned-scatter diagnostics
``results``    `TransitFit` and its parts: parameter estimates, coverage, the chain summary
``products``   `fit_run_transit_full` for a run; the table, figure, AAVSO report, JSON, report data
``timing``     `fit_transit_time`: the mid-time only with the shape fixed (prayer-bead errors)
``simulate``   `simulated_transit_night`: nights with injected transits, for tests and benchmarks
=============  ====================================================================================
"""

from lcdask.transit.fit import LINEAR_TERMS, fit_transit
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
from lcdask.transit.noise import (
    NoiseModel,
    binned_scatter,
    fit_noise_model,
    red_noise_beta,
)
from lcdask.transit.planet import (
    PlanetError,
    PlanetParameters,
    archive_name,
    planet_from_row,
    query_planet,
    resolve_planet,
)
from lcdask.transit.products import (
    aavso_filter,
    aavso_report,
    fit_run_transit_full,
    plot_run_transit,
    plot_transit,
    posterior_table,
    read_transit,
    transit_figure,
    transit_section,
    write_transit_products,
)
from lcdask.transit.results import ChainSummary, Coverage, ParameterEstimate, TransitFit
from lcdask.transit.timing import TransitTimeFit, fit_run_transit, fit_transit_time

__all__ = [
    "LINEAR_TERMS",
    "TRANSIT_BAD",
    "ChainSummary",
    "Coverage",
    "NoiseModel",
    "ParameterEstimate",
    "PlanetError",
    "PlanetParameters",
    "TransitCurve",
    "TransitFit",
    "TransitShape",
    "TransitTimeFit",
    "aavso_filter",
    "aavso_report",
    "archive_name",
    "binned_scatter",
    "fit_noise_model",
    "fit_run_transit",
    "fit_run_transit_full",
    "fit_transit",
    "fit_transit_time",
    "full_duration_d",
    "impact_parameter",
    "inclination_deg",
    "planet_from_row",
    "plot_run_transit",
    "plot_transit",
    "posterior_table",
    "q_to_u",
    "query_planet",
    "read_transit",
    "red_noise_beta",
    "resolve_planet",
    "total_duration_d",
    "transit_figure",
    "transit_model",
    "transit_section",
    "u_to_q",
    "write_transit_products",
]
