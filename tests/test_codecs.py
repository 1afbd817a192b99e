"""The quantised calibrated cube (issue 18): `lcdask.io.codecs.NoiseQuantize` against truth."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import zarr
from numcodecs import Blosc

from lcdask.config import CalibrationConfig, Level2Config
from lcdask.io import codecs
from lcdask.io import cube as cube_io
from lcdask.io.codecs import CODEC_NAME, NoiseQuantize, noise_sigma, read_header

ROOT = Path(__file__).resolve().parents[1]


def _frame(size: int = 512, *, sigma: float = 10.0, sky: float = 800.0, seed: int = 0):
    """Sky with a gradient, 150 Gaussian stars (FWHM 3 px) and white noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = sky + 0.2 * xx - 0.1 * yy
    s = 3.0 / 2.3548
    for x0, y0, peak in zip(
        rng.uniform(0, size, 150),
        rng.uniform(0, size, 150),
        10 ** rng.uniform(1.5, 4.5, 150),
        strict=True,
    ):
        lo_y, hi_y = max(int(y0) - 8, 0), min(int(y0) + 9, size)
        lo_x, hi_x = max(int(x0) - 8, 0), min(int(x0) + 9, size)
        sub = np.s_[lo_y:hi_y, lo_x:hi_x]
        image[sub] += peak * np.exp(-((xx[sub] - x0) ** 2 + (yy[sub] - y0) ** 2) / (2 * s * s))
    return (image + rng.normal(0, sigma, image.shape)).astype(np.float32)


def _array(path: Path, shape, *, level: float = 16.0, dtype="float32") -> zarr.Array:
    return zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(1, *shape[1:]),
        dtype=dtype,
        fill_value=np.nan,
        **cube_io.frame_codecs("quantised", level=level),
        config=cube_io.FRAME_WRITE_CONFIG,
    )


def _ulp(values: np.ndarray) -> np.ndarray:
    return np.spacing(np.abs(values).astype(np.float32))


def test_noise_sigma_within_two_percent_of_truth_with_stars_and_gradient():
    # 128 rows x 508 second differences: the median's own error is ~0.5%. The 150 stars
    # (peaks 30-30,000 in 512^2) put their wings into ~2% of the second differences and raise
    # the median: +4% measured at a noise of 10, +6% at 3 (more of each wing above the noise).
    # 6% and 8% allowed: the step is then that much larger (0.0096 sigma of added noise at
    # level 32 instead of 0.009), the dither's error still without bias
    for sigma, rel in ((3.0, 0.08), (10.0, 0.06), (40.0, 0.06)):
        estimate = noise_sigma(_frame(sigma=sigma, seed=int(sigma)))
        assert estimate == pytest.approx(sigma, rel=rel)
    # NaN pixels are left out, not propagated
    image = _frame(sigma=10.0, seed=1)
    image[::3, ::7] = np.nan
    assert noise_sigma(image) == pytest.approx(10.0, rel=0.06)
    assert np.isnan(noise_sigma(np.full((10, 10), np.nan)))
    assert np.isnan(noise_sigma(np.ones((10, 4))))  # fewer than five columns


def test_round_trip_error_uniform_within_half_a_step(tmp_path):
    image = _frame(sigma=10.0, seed=2)
    array = _array(tmp_path / "a.zarr", (1, *image.shape))
    array[0] = image
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[0]
    with open(tmp_path / "a.zarr" / "c" / "0" / "0" / "0", "rb") as fh:
        chunk = fh.read()
    header = read_header(Blosc().decode(chunk))
    step = header["step"]
    assert header["mode"] == "quantised"
    assert step == pytest.approx(noise_sigma(image) / 16)
    err = back.astype(np.float64) - image
    # the decoded value is cast to float32: half its spacing beyond the half step
    assert np.all(np.abs(err) <= step / 2 + _ulp(back))
    u = err / step
    # uniform in [-1/2, 1/2]: standard deviation 1/sqrt(12) (0.2886); with 262,144 pixels the
    # estimate's own scatter is 0.1%, 1% allows for the stars' float32 rounding
    assert u.std() == pytest.approx(1 / np.sqrt(12), rel=0.01)
    # flat histogram: 10 bins of 26,214 expected, each within 5 Poisson sigma (810)
    counts, _ = np.histogram(np.clip(u, -0.5, 0.5), bins=10, range=(-0.5, 0.5))
    assert np.all(np.abs(counts - u.size / 10) < 5 * np.sqrt(u.size / 10))
    # no bias: the mean error's standard error is 0.29 / 512 = 0.0006 step; 5 of them
    assert abs(u.mean()) < 0.003
    # the stored bytes: ~6 bits a pixel for the noise (log2(16 sqrt(2 pi e)) = 6.05) and the
    # frame's gradient (10 sigma across, 160 steps) in the second byte: ~1 byte, not 4
    # (0.8 measured on the simulator's calibrated frames, whose sky is flatter)
    assert len(chunk) / image.size < 1.1


@pytest.mark.parametrize("level", [4.0, 16.0, 64.0])
def test_dither_leaves_no_bias_on_flat_regions_at_sub_step_offsets(tmp_path, level):
    # a noisy frame (it sets the step) whose left 160 columns are perfectly flat at values that
    # plain rounding would bias by up to half a step; with the subtractive dither the mean
    # error of each flat region is zero
    rng = np.random.default_rng(3)
    image = (1000 + rng.normal(0, 10, (512, 512))).astype(np.float32)
    offsets = (0.0, 0.13, 0.25, 0.37, 0.5, 0.81, 0.97, 0.5)

    def with_flats(step: float, zero: float) -> np.ndarray:
        # flat strips of 64 rows at zero + (1000 + k + offset) steps: far above the noise, so
        # that neither the noise estimate nor the zero point (a median) depends on their values
        out = image.copy()
        for k, offset in enumerate(offsets):
            out[64 * k : 64 * (k + 1), :160] = np.float32(zero + (1000 + k + offset) * step)
        return out

    header = read_header(codecs.encode_chunk(with_flats(1.0, 1000.0)[None], level=level))
    image = with_flats(header["step"], header["zero"])
    encoded = codecs.encode_chunk(image[None], level=level)
    assert read_header(encoded)["step"] == header["step"]
    assert read_header(encoded)["zero"] == header["zero"]
    step, zero = header["step"], header["zero"]
    back = codecs.decode_chunk(encoded, (1, 512, 512), np.float32)[0]
    worst_plain = 0.0
    for k in range(8):
        flat = np.s_[64 * k : 64 * (k + 1), :160]
        err = (back[flat].astype(np.float64) - image[flat]) / step
        # 10,240 pixels: the mean error's standard error is 0.29 / 101 = 0.003 step; 0.015 is 5
        assert abs(err.mean()) < 0.015, (k, err.mean())
        assert np.all(np.abs(err) <= 0.5 + 1e-3)
        # what plain rounding on the same grid would give (the test can fail)
        y = (image[flat].astype(np.float64) - zero) / step
        worst_plain = max(worst_plain, abs(float((np.round(y) - y).mean())))
    assert worst_plain > 0.1


def test_nan_inf_fill_and_constant_chunks(tmp_path):
    image = _frame(256, seed=4)
    image[10, :50] = np.nan
    image[20, 5] = np.inf
    image[30, 7] = -np.inf
    array = _array(tmp_path / "a.zarr", (5, 256, 256))
    array[0] = image
    array[1] = np.full((256, 256), 123.25, np.float32)  # constant: no noise, kept exactly
    array[2] = np.full((256, 256), np.nan, np.float32)  # the fill, written
    spiky = np.zeros((256, 256), np.float32) + np.float32(1e-3) * np.random.default_rng(
        5
    ).standard_normal((256, 256)).astype(np.float32)
    spiky[0, 0] = 3e9  # its range does not fit 32-bit integers at sigma / 16: kept exactly
    array[3] = spiky
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    got = back[0]
    assert np.array_equal(np.isnan(got), np.isnan(image))
    assert got[20, 5] == np.inf and got[30, 7] == -np.inf
    finite = np.isfinite(image)
    step = noise_sigma(image) / 16
    assert np.all(np.abs(got[finite] - image[finite]) <= step / 2 + _ulp(got[finite]))
    assert np.array_equal(back[1], np.full((256, 256), 123.25, np.float32))
    assert np.isnan(back[2]).all()
    assert np.array_equal(back[3], spiky)
    assert np.isnan(back[4]).all()  # never written: the fill value
    for data, mode in ((array[1:2], "lossless"), (np.full((1, 8, 8), np.nan), "lossless")):
        assert read_header(codecs.encode_chunk(np.asarray(data, np.float32)))["mode"] == mode
    narrow = np.random.default_rng(6).normal(0, 1, (1, 64, 4)).astype(np.float32)
    assert np.array_equal(
        codecs.decode_chunk(codecs.encode_chunk(narrow), narrow.shape, np.float32), narrow
    )


def test_float64_arrays_and_refused_types(tmp_path):
    image = _frame(128, seed=7).astype(np.float64)
    array = _array(tmp_path / "d.zarr", (1, 128, 128), dtype="float64")
    array[0] = image
    back = zarr.open_array(str(tmp_path / "d.zarr"), mode="r")[0]
    assert back.dtype == np.float64
    assert np.all(np.abs(back - image) <= noise_sigma(image) / 32 * (1 + 1e-9))
    with pytest.raises(ValueError, match=r"float32 or float64.*BytesCodec"):
        zarr.create_array(
            store=str(tmp_path / "i.zarr"),
            shape=(1, 8, 8),
            dtype="int32",
            serializer=NoiseQuantize(),
        )
    with pytest.raises(ValueError, match="level must be a number > 0"):
        NoiseQuantize(level=0)


def test_deterministic_bytes_and_seeds_per_frame(tmp_path):
    image = _frame(256, seed=8)
    first, second = codecs.encode_chunk(image[None]), codecs.encode_chunk(image[None].copy())
    assert np.array_equal(first, second)
    for name in ("a.zarr", "b.zarr"):
        _array(tmp_path / name, (1, 256, 256))[0] = image
    chunk = Path("c") / "0" / "0" / "0"
    assert (tmp_path / "a.zarr" / chunk).read_bytes() == (tmp_path / "b.zarr" / chunk).read_bytes()
    other = codecs.encode_chunk(_frame(256, seed=9)[None])
    assert read_header(other)["seed"] != read_header(first)["seed"]  # its own dither


def test_metadata_names_the_codec_and_plain_zarr_reads_it(tmp_path):
    image = _frame(128, seed=10)
    _array(tmp_path / "a.zarr", (1, 128, 128), level=32)[0] = image
    meta = (tmp_path / "a.zarr" / "zarr.json").read_text()
    assert f'"name": "{CODEC_NAME}"' in meta and '"level": 32.0' in meta
    array = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    assert array.metadata.codecs[0] == NoiseQuantize(level=32)
    assert np.all(np.abs(array[0] - image) <= noise_sigma(image) / 64 + _ulp(image))


def test_entry_point_lets_zarr_find_the_codec_without_importing_lcdask(tmp_path):
    """pyproject.toml's entry point, installed as a distribution's metadata, is what zarr reads.

    A fresh interpreter gets a stand-in distribution (a dist-info folder with the entry points
    written from pyproject.toml) and opens the array with plain zarr: the codec is found through
    the ``zarr.codecs`` group, not by an import of lcdask.
    """
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    target = table["zarr.codecs"][CODEC_NAME]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is NoiseQuantize
    image = _frame(64, seed=11)
    _array(tmp_path / "a.zarr", (1, 64, 64))[0] = image
    site = tmp_path / "site"
    dist = site / "lcdask_codecs_probe-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lcdask-codecs-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[zarr.codecs]\n{CODEC_NAME} = {target}\n")
    code = (
        "import sys, zarr, numpy as np\n"
        f"a = zarr.open_array({str(tmp_path / 'a.zarr')!r}, mode='r')\n"
        "assert 'lcdask.io.codecs' in sys.modules  # loaded by zarr, through the entry point\n"
        "print(a[0].tobytes().hex())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    expected = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")[0]
    assert done.stdout.strip() == expected.tobytes().hex()


# --- photometry on a simulated night: quantised against float32 ---------------------------------


@pytest.fixture(scope="module")
def night_both_ways(tmp_path_factory):
    """A small simulated night calibrated twice: float32 and quantised (the default)."""
    from lcdask.simulate import SimConfig, simulate_night
    from lcdask.stages.calibrate import calibrate_cube
    from lcdask.stages.ingest import ingest

    out = tmp_path_factory.mktemp("quant")
    simulate_night(out / "night", SimConfig(n_frames=5, size=384, seed=5), n_workers=1)
    ingest(out / "night" / "raw", out / "f32")
    shutil.copytree(out / "f32", out / "q")
    calibrate_cube(out / "f32", config=CalibrationConfig(calibrated_storage="float32"))
    calibrate_cube(out / "q")
    return out


def test_calibrated_cube_quantised_by_default_and_smaller(night_both_ways):
    out = night_both_ways
    quantised = zarr.open_array(str(out / "q" / "cube.zarr" / "calibrated"), mode="r")
    plain = zarr.open_array(str(out / "f32" / "cube.zarr" / "calibrated"), mode="r")
    assert isinstance(quantised.metadata.codecs[0], NoiseQuantize)
    assert quantised.metadata.codecs[0].level == CalibrationConfig().quantise_level
    assert not isinstance(plain.metadata.codecs[0], NoiseQuantize)

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

    # ~1 byte a pixel against ~2.8 (measured 0.97 and 2.8 on the demo's 512^2 frames)
    ratio = size(out / "q" / "cube.zarr" / "calibrated") / size(
        out / "f32" / "cube.zarr" / "calibrated"
    )
    assert ratio < 0.45
    # raw stays lossless and identical
    raw_q = zarr.open_array(str(out / "q" / "cube.zarr" / "raw"), mode="r")
    raw_f = zarr.open_array(str(out / "f32" / "cube.zarr" / "raw"), mode="r")
    assert np.array_equal(raw_q[:], raw_f[:])


def test_two_calibrations_of_a_night_store_identical_bytes(night_both_ways, tmp_path):
    from lcdask.stages.calibrate import calibrate_cube

    out = night_both_ways
    shutil.copytree(out / "f32", tmp_path / "again")
    calibrate_cube(tmp_path / "again")  # the default: quantised

    def chunks(run: Path) -> dict[str, bytes]:
        root = run / "cube.zarr" / "calibrated" / "c"
        return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}

    first, second = chunks(out / "q"), chunks(tmp_path / "again")
    assert len(first) == 5 and first == second


def test_photometry_unchanged_within_two_hundredths_of_its_error(night_both_ways):
    """Level 3 per frame (the pipeline's `prepared_frame` and `photometer_frame`) on the
    quantised and the float32 frames, at the same positions, FWHM and ePSF.

    Tolerances: with step = sigma / 32 each pixel gains step / sqrt(12) = 0.009 sigma of
    noise, so an aperture sum moves by at most 0.009 of its error; the sky estimates (sep's
    background, a mode of each mesh, and the annulus's clipped mean) are order statistics,
    which move by ~sqrt(step / sigma) of their own error rather than step / sigma: measured
    0.014 in all (0.022 at level 16, which is why the default is 32). rms <= 0.02 holds that
    with margin. The mean: ~1,200 values, correlated across a star's apertures (~200
    independent), rms 0.014: its standard error is 0.001; 0.005 is 5 of them. The aperture
    correction is left out: it is one factor per frame, common to every star (the ensemble and
    the zero point take it out), and its estimate jumps with any change of the pixels.
    """
    from lcdask.io.cube import open_cube
    from lcdask.photometry import photometer_frame
    from lcdask.stages.level2 import frame_detections, prepared_frame, reference_psf

    out = night_both_ways
    f32, q = out / "f32" / "cube.zarr", out / "q" / "cube.zarr"
    cube = open_cube(f32, dask_arrays=False)
    lights = [int(i) for i in np.nonzero(cube["frame_type"].values == "light")[0]]
    config = Level2Config()
    z = []
    psf = None
    for index in lights:
        _, detections, stats = frame_detections(f32, index, config)
        fwhm = float(stats["fwhm_px"])
        psf = psf or reference_psf(f32, lights[0], fwhm, config)
        tables = []
        for path in (f32, q):
            prepared = prepared_frame(path, index, config, fwhm, psf)
            image, sky, mask, cosmic, gain, repaired = prepared
            table, _ = photometer_frame(
                image,
                fwhm_px=fwhm,
                gain=gain,
                rms=sky.rms,
                x=detections["x"].to_numpy(),
                y=detections["y"].to_numpy(),
                background=sky.background,
                psf=psf,
                mask=mask,
                cosmic_mask=cosmic,
                repaired_mask=repaired,
                aperture_correction=False,
            )
            tables.append(table)
        plain, quantised = tables
        columns = [c for c in plain if c.startswith(("flux_ap", "flux_psf")) and "_err" not in c]
        assert "flux_psf" in columns and len(columns) >= 4
        for column in columns:
            z.append(((quantised[column] - plain[column]) / plain[f"{column}_err"]).to_numpy())
    z = np.concatenate(z)
    z = z[np.isfinite(z)]
    assert z.size > 500
    assert np.sqrt(np.mean(z**2)) <= 0.02  # measured 0.0141 (1,610 values)
    assert abs(z.mean()) <= 0.005  # measured -0.0001
