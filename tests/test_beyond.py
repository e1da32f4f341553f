"""Beyond the paper: chaos, linear scaling, studies and the one-particle theory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import tiny_overrides

import phasearray as pa
from phasearray import rmt
from phasearray.analysis import beyond
from phasearray.analysis.synthetic import synthetic_sweep
from phasearray.config import load_pipeline, log_checkpoints, variant_pipelines
from phasearray.errors import ConfigError, PhasearrayWarning, StoreError
from phasearray.plots.beyond import write_beyond_figures

PNG = b"\x89PNG"
MODEL_AND_T = {"T", "sigma_W", "seed", "t"}
GROWTH_THRESHOLD = np.log(1e3) / 1000  # ln(GROWTH)/t_f at t_f = 1000 steps


# --- helpers --------------------------------------------------------------------


def with_lyapunov(ds: xr.Dataset, medians: np.ndarray, spread: float = 1e-4):
    """``ds`` with λ = median + spread · (−1, 0, 1) over three seeds at every t."""
    offsets = spread * np.array([-1.0, 0.0, 1.0])
    values = medians[:, :, None, None] + offsets[None, None, :, None]
    out = ds.copy()
    out["lyapunov"] = xr.zeros_like(ds["train_loss"]) + values
    return out


def synthetic_study(sizes, steps=lambda b: 1000, factor=lambda b: 1.0) -> xr.Dataset:
    """A batch-size study joined like open_study, from synthetic sweeps.

    The synthetic trajectories depend on t/steps only, so variants with equal
    ``steps`` are identical at equal steps; ``factor(b)`` multiplies the test
    loss of variant b.
    """
    parts = []
    for b in sizes:
        ds = synthetic_sweep(seeds=2, steps=steps(b), batch_size=b)
        ds["test_loss"] = ds["test_loss"] * factor(b)
        keep = [n for n, v in ds.data_vars.items() if set(v.dims) <= MODEL_AND_T]
        parts.append(ds[keep])
    return xr.concat(
        parts,
        dim=pd.Index(list(sizes), name="batch_size"),
        join="outer",
        coords="different",
        compat="equals",
        combine_attrs="drop_conflicts",
    )


# --- chaos ----------------------------------------------------------------------


def test_threshold_is_log_growth_over_time() -> None:
    ds = synthetic_sweep(seeds=1, steps=1000)
    np.testing.assert_allclose(beyond.chaos_threshold(ds), GROWTH_THRESHOLD, rtol=1e-15)
    np.testing.assert_allclose(
        beyond.chaos_threshold(ds, growth=10.0), np.log(10) / 1000, rtol=1e-15
    )
    with pytest.raises(ConfigError, match="step 0"):
        beyond.chaos_threshold(ds, t=0)
    with pytest.raises(ConfigError, match="growth"):
        beyond.chaos_threshold(ds, growth=1.0)


def test_chaos_boundary_interpolates_in_log_T_and_flags_the_grid_edges() -> None:
    T = (0.25, 0.5, 1.0, 2.0)
    ds = synthetic_sweep(T=T, sigma_W=(0.25, 4.0, 64.0), seeds=3, steps=1000)
    medians = np.array(
        [
            [-1e-3, 1e-2, 1e-2],  # T = 0.25: a chaotic blip at σ_W = 4
            [2e-3, 1e-3, 1e-2],
            [1.2e-2, 1e-3, 1e-2],
            [5e-2, 1e-3, 1e-2],
        ]
    )
    ds = with_lyapunov(ds, medians)

    found = beyond.lyapunov_map(ds).compute()
    np.testing.assert_allclose(found["lyapunov_median"], medians, rtol=1e-12)
    np.testing.assert_array_equal(
        beyond.chaos_labels(ds).values, medians > GROWTH_THRESHOLD
    )
    # σ_W = 0.25 crosses between T = 0.5 and 1, linear in log T
    weight = (GROWTH_THRESHOLD - 2e-3) / (1.2e-2 - 2e-3)
    expected = [0.5 * 2.0**weight, np.inf, np.nan]
    np.testing.assert_allclose(beyond.chaos_boundary(ds).values, expected, rtol=1e-12)


def test_diverged_cells_count_as_chaotic() -> None:
    ds = with_lyapunov(
        synthetic_sweep(T=(0.5, 1.0), sigma_W=(1.0,), seeds=3, steps=1000),
        np.array([[-1e-3], [np.nan]]),
    )
    found = beyond.lyapunov_map(ds).compute()
    np.testing.assert_array_equal(found["lyapunov_count"].values.ravel(), [3, 0])
    np.testing.assert_array_equal(found["chaotic_fraction"].values.ravel(), [0, 1])
    np.testing.assert_array_equal(beyond.chaos_labels(ds).values.ravel(), [False, True])
    # no finite value above: the crossing sits at the geometric midpoint
    np.testing.assert_allclose(beyond.chaos_boundary(ds).values, [0.5 * 2**0.5])


def test_chaos_needs_a_lyapunov_store() -> None:
    with pytest.raises(StoreError, match=r"record\.lyapunov: true"):
        beyond.chaos_labels(synthetic_sweep(seeds=1))


def test_chaos_vs_dbm_reads_the_accessor_boundaries() -> None:
    ds = synthetic_sweep(seeds=3, steps=1000)
    medians = np.where(ds["T"].values[:, None] > 0.5, 1e-2, -1e-3) + np.zeros((3, 3))
    ds = with_lyapunov(ds, medians)
    found = beyond.chaos_vs_dbm(ds).compute()
    boundaries = ds.phase.boundaries().compute()
    np.testing.assert_array_equal(
        found["T_dbm"], boundaries["T_boundary"].sel(level=0.68)
    )
    noisy = boundaries["converged_fraction"].transpose("T", "sigma_W").values < 0.68
    np.testing.assert_array_equal(found["noise_dominated"], noisy)
    np.testing.assert_array_equal(found["agree"], (medians > GROWTH_THRESHOLD) == noisy)
    np.testing.assert_allclose(
        float(found["agreement"]), np.mean((medians > GROWTH_THRESHOLD) == noisy)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.log2(found["T_chaos"].values / found["T_dbm"].values)
    np.testing.assert_allclose(found["log2_ratio"], ratio)


@pytest.fixture(scope="module")
def chaos_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real sweep with twins: T = 0.125 (ordered) and 8 (hot), 1000 steps."""
    overrides = tiny_overrides(
        **{
            "grid.T": "[0.125, 8.0]",
            "grid.sigma_W": "[0.125, 32.0]",
            "train.steps": "1000",
            "record.checkpoints": "[0, 10, 100, 1000]",
            "record.lyapunov": "true",
        }
    )
    path = tmp_path_factory.mktemp("chaos") / "c.zarr"
    pa.run_sweep(load_pipeline("quick", overrides), path)
    return path


def test_real_sweep_is_chaotic_only_when_hot(chaos_store: Path, tmp_path: Path) -> None:
    ds = pa.open_sweep(chaos_store)
    labels = beyond.chaos_labels(ds).values
    # SPEC §2: a tiny perturbation stays tiny at T ≤ 0.5 and grows to O(1) at T ≥ 2
    np.testing.assert_array_equal(labels, [[False, False], [True, True]])
    onset = beyond.chaos_boundary(ds).values
    assert np.all((onset > 0.125) & (onset < 8.0))

    paths = write_beyond_figures(chaos_store, tmp_path / "figs")
    assert [p.name for p in paths] == ["beyond_chaos.png", "beyond_one_particle.png"]
    assert all(p.read_bytes()[:4] == PNG for p in paths)


# --- linear scaling rule --------------------------------------------------------------


def test_collapse_spread_of_a_known_dependence() -> None:
    values = xr.DataArray([[1.0, 10.0, 5.0], [10.0, 100.0, 5.0]], dims=("b", "cell"))
    # std over b of log10: 0.5, 0.5, 0 → max 0.5; linear: 4.5, 45, 0
    np.testing.assert_allclose(float(beyond.collapse_spread(values, "b")), 0.5)
    np.testing.assert_allclose(
        float(beyond.collapse_spread(values, "b", log=False)), 45.0
    )
    # a cell with a missing variant is left out
    values[0, 1] = np.nan
    np.testing.assert_allclose(float(beyond.collapse_spread(values, "b")), 0.5)


def test_exact_collapse_gives_zero_and_an_injected_dependence_its_amount() -> None:
    sizes = [1, 2, 4, 8]
    exact = beyond.scaling_collapse(synthetic_study(sizes), match="steps").compute()
    np.testing.assert_array_equal(exact["step"], [1000] * 4)
    np.testing.assert_array_equal(exact["samples"], [1000, 2000, 4000, 8000])
    np.testing.assert_allclose(float(exact["loss_spread"]), 0.0, atol=1e-12)
    np.testing.assert_allclose(float(exact["feature_overlap_spread"]), 0.0, atol=1e-12)

    delta = 0.3  # log10 loss shifted by δ log2|B|: spread δ · std(0, 1, 2, 3)
    injected = synthetic_study(sizes, factor=lambda b: 10 ** (delta * np.log2(b)))
    found = beyond.scaling_collapse(injected, match="steps").compute()
    np.testing.assert_allclose(
        float(found["loss_spread"]), delta * np.std([0, 1, 2, 3]), rtol=1e-10
    )
    np.testing.assert_allclose(found["loss_spread_map"], delta * np.std([0, 1, 2, 3]))
    np.testing.assert_allclose(float(found["feature_overlap_spread"]), 0.0, atol=1e-12)


def test_matched_epochs_compare_equal_samples() -> None:
    # steps ∝ 1/|B|: equal samples at t_f, where the synthetic runs coincide
    sizes = [1, 2, 4, 8]
    study = synthetic_study(sizes, steps=lambda b: 4096 // b)
    matched = beyond.matched_checkpoints(study, match="epochs")
    np.testing.assert_array_equal(matched["step"], [4096, 2048, 1024, 512])
    np.testing.assert_array_equal(matched["samples"], [4096] * 4)
    np.testing.assert_array_equal(
        study["t"].values[matched["position"].values], matched["step"]
    )
    found = beyond.scaling_collapse(study, match="epochs").compute()
    np.testing.assert_allclose(float(found["loss_spread"]), 0.0, atol=1e-12)

    # matched steps: the latest step every variant recorded, at other t/steps
    common = set.intersection(*(set(log_checkpoints(4096 // b, 6)) for b in sizes))
    by_steps = beyond.scaling_collapse(study, match="steps").compute()
    np.testing.assert_array_equal(by_steps["step"], [max(common)] * 4)
    assert float(by_steps["loss_spread"]) > 1e-3


def test_matched_epochs_without_a_checkpoint_warn() -> None:
    study = synthetic_study([1, 2])  # checkpoints 0, 1, 4, 16, 63, 251, 1000
    with pytest.warns(PhasearrayWarning, match="no checkpoint at 1000 samples"):
        matched = beyond.matched_checkpoints(study, match="epochs")
    # |B| = 2 needs step 500; 251 is nearer in log t than 1000
    np.testing.assert_array_equal(matched["step"], [1000, 251])
    with pytest.raises(ConfigError, match="match"):
        beyond.matched_checkpoints(study, match="samples")


def test_boundary_spread_of_identical_variants_is_zero() -> None:
    sizes = [2, 4]
    variants = {b: synthetic_sweep(seeds=2, batch_size=b) for b in sizes}
    found = beyond.scaling_collapse(
        synthetic_study(sizes), match="steps", variants=variants
    ).compute()
    reference = variants[2].phase.boundaries().compute()["T_boundary"].sel(level=0.68)
    for b in sizes:
        np.testing.assert_array_equal(found["T_boundary"].sel(batch_size=b), reference)
    finite = np.isfinite(reference.values)
    np.testing.assert_allclose(found["boundary_spread"].values[finite], 0.0, atol=0)
    assert np.all(np.isnan(found["boundary_spread"].values[~finite]))


def test_batch_size_study_end_to_end(tmp_path: Path) -> None:
    overrides = tiny_overrides(
        **{"train.steps": "64", "record.checkpoints": "{log: 7}"}
    )
    batch = "variants={dim: batch_size, field: train.batch_size, values: [2, 4]}"
    root = tmp_path / "study"
    pa.run_study(load_pipeline("quick", [*overrides, batch]), root)

    dim, variants = beyond.open_variants(root)
    assert dim == "batch_size" and list(variants) == [2, 4]
    found = beyond.scaling_collapse(pa.open_study(root), variants=variants).compute()
    # 2 · 64 samples: |B| = 4 is compared at step 32
    np.testing.assert_array_equal(found["step"], [64, 32])
    np.testing.assert_array_equal(found["samples"], [128, 128])
    assert found["T_boundary"].dims == ("batch_size", "sigma_W")

    paths = write_beyond_figures(root, tmp_path / "figs")
    assert [p.name for p in paths] == ["beyond_variants.png", "beyond_scaling.png"]
    assert all(p.read_bytes()[:4] == PNG for p in paths)


@pytest.mark.parametrize("trainable", ["[W2]", "[W1, W2, W3]"])
def test_width_study_boundaries_and_figures(tmp_path: Path, trainable: str) -> None:
    overrides = tiny_overrides(
        **{
            "train.steps": "20",
            "record.checkpoints": "[0, 20]",
            "model.trainable": trainable,
        }
    )
    widths = (
        "variants={dim: width, field: model.widths, "
        "values: [[3, 32, 16, 1], [3, 64, 32, 1]], labels: [1, 2]}"
    )
    root = tmp_path / "w"
    pa.run_study(load_pipeline("quick", [*overrides, widths]), root)
    dim, variants = beyond.open_variants(root)
    found = beyond.variant_boundaries(variants, dim).compute()
    for label, ds in variants.items():
        own = ds.phase.boundaries().compute()
        np.testing.assert_array_equal(
            found["T_boundary"].sel(width=label), own["T_boundary"].sel(level=0.68)
        )
        np.testing.assert_allclose(
            found["jamming_inv_sigma_W"].sel(width=label), own["jamming_inv_sigma_W"]
        )
    paths = write_beyond_figures(root, tmp_path / "figs")
    assert [p.name for p in paths] == ["beyond_variants.png", "beyond_finite_size.png"]


def test_open_variants_needs_a_study(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a study folder"):
        beyond.open_variants(tmp_path)


# --- one-particle theory --------------------------------------------------------


def test_drift_only_is_piecewise_linear() -> None:
    # V_S = D_S = 0: S(τ) = S0 + ∫ K_S dτ, exact for Euler–Maruyama
    S = beyond.integrate_level_spacing(
        [2.0, 3.0], [[0.5, -0.2]], 0.0, 0.0, 1.0, [0.0, 1.0, 3.0], n_paths=3
    )
    assert S.shape == (2, 3, 3)
    expected = np.array([[2.0, 2.5, 2.1], [3.0, 3.5, 3.1]])[:, None, :]
    np.testing.assert_allclose(S, np.broadcast_to(expected, S.shape), rtol=1e-14)


def test_diffusion_only_spreads_as_2TDt() -> None:
    # K_S = V_S = 0: S = S0 + √(2 T D_S) W_τ, variance 2 T D_S τ
    T, D, times = 2.0, 0.3, np.array([0.0, 1.0, 4.0])
    S = beyond.integrate_level_spacing(100.0, 0.0, 0.0, D, T, times, n_paths=20_000)
    # 20 000 paths: relative error of a variance ~ √(2/n) = 1 %; 5 % is 5σ
    np.testing.assert_allclose(S.var(axis=0)[1:], 2 * T * D * times[1:], rtol=0.05)
    np.testing.assert_allclose(S.mean(axis=0), 100.0, atol=0.1)


def test_coulomb_only_follows_the_square_root_law() -> None:
    # K_S = D_S = 0: dS/dτ = V_S T / S, so S² = S0² + 2 V_S T τ
    times = np.array([0.0, 0.5, 2.0])
    S = beyond.integrate_level_spacing(
        1.0, 0.0, 0.5, 0.0, 2.0, times, n_paths=1, substeps=4000
    )
    # Euler–Maruyama is first order: error ~ dτ ~ 1e-4
    np.testing.assert_allclose(S[0], np.sqrt(1.0 + 2 * 0.5 * 2.0 * times), rtol=1e-3)


def test_time_of_the_equation_is_learning_rate_times_steps() -> None:
    # one full-batch step of learning rate ε moves S by ε K_S + O(ε²): τ = ε t
    rng = np.random.default_rng(1)
    W1, W2_teacher, W3 = (
        rng.normal(0, 1 / np.sqrt(n_in), shape)
        for n_in, shape in ((3, (32, 3)), (32, (16, 32)), (16, (1, 16)))
    )
    x = rng.normal(size=(400, 3))
    W2 = rng.normal(0, 1 / np.sqrt(32), (16, 32))
    phi1 = np.tanh(x @ W1.T)
    y = np.tanh(phi1 @ W2_teacher.T) @ W3.T
    K_S, _, _ = rmt.dbm_level_spacing(W2[None], W3[None], phi1[None], y[None], "tanh")
    epsilon = 1e-3
    run = pa.simulate(
        teacher=(W1, W2_teacher, W3),
        x_train=x,
        W2_init=W2,
        learning_rate=epsilon,
        batch_size=400,
        steps=1,
        engine="numpy",
    )
    S = rmt.level_spacing(run["eigenvalues"].values)
    np.testing.assert_allclose((S[..., -1] - S[..., 0]) / epsilon, K_S, rtol=2e-3)


def test_paths_are_reproducible_from_the_seed() -> None:
    args = (1.0, -0.1, 0.2, 0.05, 0.5, [0.0, 1.0, 2.0])
    a = beyond.integrate_level_spacing(*args, n_paths=16, seed=3)
    np.testing.assert_array_equal(
        a, beyond.integrate_level_spacing(*args, n_paths=16, seed=3)
    )
    assert not np.array_equal(
        a, beyond.integrate_level_spacing(*args, n_paths=16, seed=4)
    )
    assert np.all(a >= 0)


def test_integrator_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="times"):
        beyond.integrate_level_spacing(1.0, 0.0, 0.0, 0.0, 1.0, [1.0, 0.0])
    with pytest.raises(ConfigError, match="K_S"):
        beyond.integrate_level_spacing(1.0, [0.0, 1.0, 2.0], 0.0, 0.0, 1.0, [0.0, 1.0])
    with pytest.raises(ConfigError, match="n_paths"):
        beyond.integrate_level_spacing(1.0, 0.0, 0.0, 0.0, 1.0, [0.0, 1.0], n_paths=0)


def test_one_particle_starts_at_the_measured_spacing_with_accessor_coefficients() -> (
    None
):
    ds = synthetic_sweep(seeds=2, batch_size=4)
    found = beyond.one_particle(ds, n_paths=8)
    assert list(found["cell"].values) == ["ordered", "hot", "jammed"]
    np.testing.assert_allclose(
        found["theory_median"][:, 0], found["measured_median"][:, 0]
    )

    hot = found.sel(cell="hot")
    assert float(hot["T"]) == ds["T"].values[-1] and float(hot["sigma_W"]) == 0.125
    np.testing.assert_allclose(hot["tau"], float(hot["T"]) * 4 * ds["t"].values)
    S = ds.phase.level_spacing()["level_spacing"].isel(T=-1, sigma_W=0)
    np.testing.assert_allclose(hot["measured"], S.transpose("seed", "t"), rtol=1e-14)
    for k in (0, 3, -1):
        own = ds.phase.dbm(t=k).isel(T=-1, sigma_W=0)
        for name in ("K_S", "V_S", "D_S"):
            np.testing.assert_allclose(
                hot[name].isel(t=k), own[name], rtol=1e-12, err_msg=name
            )

    final = beyond.one_particle(ds, n_paths=2, coefficients="final")
    assert np.all(np.isnan(final["K_S"].isel(t=slice(0, -1))))
    with pytest.raises(ConfigError, match="coefficients"):
        beyond.one_particle(ds, coefficients="start")


# --- the shipped pipelines -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dim"),
    [
        ("chaos", None),
        ("scaling", "batch_size"),
        ("activations", "activation"),
        ("widths", "width"),
        ("widths_all", "width"),
        ("digits", None),
    ],
)
def test_shipped_pipelines_are_small(name: str, dim: str | None) -> None:
    pipeline = load_pipeline(name)
    assert (pipeline.variants.dim if pipeline.variants else None) == dim
    variants = [p for _, p in variant_pipelines(pipeline)]
    twins = 2 if pipeline.record.lyapunov else 1
    work = sum(
        p.n_models * p.train.steps * p.model.widths[1] * p.model.widths[2] * twins
        for p in variants
    )
    # a few minutes on two cores (the numba engine runs ~7e4 model-steps/s):
    # at most 1e7 steps of the 32 × 16 model
    assert work <= 1e7 * 32 * 16


def test_scaling_pipeline_has_a_checkpoint_at_every_matched_epoch() -> None:
    variants = variant_pipelines(load_pipeline("scaling"))
    samples = min(p.train.batch_size * p.train.steps for _, p in variants)
    for _, p in variants:
        assert samples % p.train.batch_size == 0
        assert samples // p.train.batch_size in p.checkpoints


def test_digits_chaos_and_every_layer_pipelines() -> None:
    pipeline = load_pipeline("digits")
    assert pipeline.data.source == "digits" and pipeline.model.widths[0] == 64
    assert pipeline.data.n_train <= 1669 and pipeline.data.n_test == 128
    assert load_pipeline("chaos").record.lyapunov
    study = load_pipeline("widths_all")
    assert study.model.trainable == ("W1", "W2", "W3")
    # the order given does not matter
    ordered = load_pipeline("quick", ["model.trainable=[W3, W2]"])
    assert ordered.model.trainable == ("W2", "W3")
