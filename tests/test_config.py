"""Configuration: defaults, TOML round trip, and errors that name the field."""

from __future__ import annotations

import tomllib

import pytest

from lcdask.config import Config, ConfigError, default_toml, load_config


def test_defaults_print_as_commented_toml_that_loads_back(tmp_path):
    text = default_toml()
    assert "[calibration]" in text and "[cluster]" in text and "[catalog]" in text
    assert "# Bad-pixel cleaning" in text  # descriptions come from the Attributes sections
    tomllib.loads(text)  # valid TOML
    path = tmp_path / "lcdask.toml"
    path.write_text(text)
    assert load_config(path) == Config()


def test_values_are_read_and_overrides_win(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[calibration]\nclean = "median"\nhot_sigma = 6\n[cluster]\nworkers = 3\n')
    config = load_config(path, cluster={"workers": 5, "scheduler": None})
    assert config.calibration.clean == "median"
    assert config.calibration.hot_sigma == 6.0 and isinstance(config.calibration.hot_sigma, float)
    assert config.cluster.workers == 5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[calibraton]\n", "unknown section.*'calibraton'"),
        ("[calibration]\nclen = 'x'\n", r"\[calibration\] has no option 'clen'"),
        ("[calibration]\nclean = 'smear'\n", "clean.*interpolate"),
        ("[calibration]\nhot_sigma = 'high'\n", "calibration.hot_sigma must be a number"),
        ("[calibration]\ncalibrated_storage = 'fpack'\n", "calibrated_storage.*'quantised'"),
        ("[calibration]\nquantise_level = 0.5\n", "quantise_level must be at least 1"),
        ("[calibration]\nquantise_level = -4\n", "quantise_level must be a positive number"),
        ("[cluster]\nworkers = -1\n", "cluster.workers must be 0 or more"),
        ("[cluster]\nkind = 'scheduler'\n", "cluster.scheduler"),
        ("[catalog]\nsource = 'file'\n", "catalog.path"),
        ("[level2]\nbackend = 'sextractor'\n", "backend must be 'sep' or 'photutils'"),
        ("[lightcurves]\nforced_min_detections = 0\n", "forced_min_detections must be 1"),
        ("[lightcurves]\nforced = 'yes'\n", "lightcurves.forced must be true or false"),
        ("[lightcurves]\nmax_rate_arcsec_h = 0\n", "max_rate_arcsec_h must be positive"),
        ("[cluster\n", "not valid TOML"),
    ],
)
def test_errors_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_removed_option_loads_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[calibration]\nrows_per_chunk = 128\nhot_sigma = 6.0\n")
    with pytest.warns(UserWarning, match=r"\[calibration\] rows_per_chunk is no longer an option"):
        config = load_config(path)
    assert config.calibration.hot_sigma == 6.0  # the rest of the file is read
    assert not hasattr(config.calibration, "rows_per_chunk")
    with pytest.raises(ConfigError, match="has no option 'row_per_chunk'"):
        load_config(None, calibration={"row_per_chunk": 1})  # a typo is still an error


def test_loading_a_configuration_imports_no_stage():
    """``lcdask.config`` holds every section's options: loading one imports no stage (issue 16:
    it imported the whole Level 2 stack, 42 modules and 2.4 s, for `Level2Config`)."""
    import subprocess
    import sys

    code = (
        "import sys, lcdask.config; lcdask.config.Config();"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('lcdask'))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert found == ["lcdask", "lcdask.config"]


def test_calibrated_storage_quantised_by_default_float32_on_request(tmp_path):
    from lcdask.io.codecs import NoiseQuantize
    from lcdask.io.cube import frame_codecs

    config = load_config(None)
    assert config.calibration.calibrated_storage == "quantised"
    assert config.calibration.quantise_level == 32.0
    assert 'calibrated_storage = "quantised"' in default_toml()
    assert "quantise_level = 32.0" in default_toml()
    path = tmp_path / "f32.toml"
    path.write_text('[calibration]\ncalibrated_storage = "float32"\nquantise_level = 64\n')
    config = load_config(path)
    assert config.calibration.calibrated_storage == "float32"
    assert config.calibration.quantise_level == 64.0
    assert frame_codecs("float32")["serializer"] == "auto"
    assert frame_codecs("quantised", level=64)["serializer"] == NoiseQuantize(level=64)
