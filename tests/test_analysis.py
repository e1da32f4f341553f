"""The lazy analysis layer against NumPy references on synthetic sweeps."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr

import phasearray
import phasearray.analysis as pa
from phasearray import rmt
from phasearray.activations import activate
from phasearray.analysis.phases import _upper_crossing
from phasearray.ensemble import teacher_outputs
from phasearray.errors import ConfigError, StoreError

RTOL = 1e-10  # float64 against float64, different summation order


def _raise_on_compute(*args, **kwargs):
    raise RuntimeError("the analysis computed while it should only build a graph")


@pytest.fixture(scope="module")
def sweep() -> xr.Dataset:
    """Three T, three σ_W, five seeds, one diverged member; NumPy-backed."""
    return pa.synthetic_sweep(
        T=(0.03125, 1.0, 64.0),
        sigma_W=(0.125, 1.0, 64.0),
        seeds=5,
        diverged=[(2, 0, 3)],
    )


@pytest.fixture(scope="module")
def lazy(sweep, tmp_path_factory) -> xr.Dataset:
    """The same sweep written to Zarr and opened as a store, Dask-backed."""
    path = tmp_path_factory.mktemp("store") / "synthetic.zarr"
    chunks = {"T": 1, "sigma_W": 2, "seed": 3, "t": 1}
    sweep.chunk(chunks).to_zarr(path, zarr_format=3, consolidated=False)
    return phasearray.open_sweep(path)


# --- laziness ------------------------------------------------------------------------


def test_every_result_is_built_without_computing(lazy) -> None:
    assert lazy.W2.chunks is not None
    with dask.config.set(scheduler=_raise_on_compute):
        reopened = phasearray.open_sweep(lazy.encoding["source"])
        assert reopened.W2.chunks is not None
        results = [
            lazy.phase.stats("test_loss"),
            lazy.phase.stats("diverged"),
            lazy.phase.level_spacing(),
            lazy.phase.dbm(),
            lazy.phase.dbm(t=0, convention="phase_ml"),
            lazy.phase.feature_variance(),
            lazy.phase.boundaries(),
            lazy.phase.classify(),
            lazy.phase.classify(jamming="theory", loss="train_loss"),
            lazy.phase.recommend(),
            lazy.phase.recommend(8, rule="observables"),
        ]
        for result in results:
            # whatever depends on the models stays a Dask array; only laws
            # evaluated on the coordinates (Marchenko–Pastur) are NumPy
            model_vars = [
                v
                for name, v in result.data_vars.items()
                if v.ndim and not str(name).startswith("mp_")
            ]
            assert model_vars and all(v.chunks is not None for v in model_vars)
        with pytest.raises(RuntimeError, match="computed"):
            results[0].compute()


def test_lazy_and_eager_results_agree(sweep, lazy) -> None:
    eager = sweep.phase.classify().compute()
    built = lazy.phase.classify().compute()
    xr.testing.assert_equal(eager.label_dbm, built.label_dbm)
    xr.testing.assert_equal(eager.label_observables, built.label_observables)
    np.testing.assert_allclose(
        lazy.phase.dbm().K_S.values, sweep.phase.dbm().K_S.values, rtol=RTOL
    )


# --- ensemble statistics -------------------------------------------------------------


def test_stats_count_nan_members_and_match_numpy(sweep, lazy) -> None:
    result = lazy.phase.stats("test_loss").compute()
    values = sweep.test_loss.transpose("T", "sigma_W", "t", "seed").values

    count = np.isfinite(values).sum(-1)
    assert result["count"].dtype == np.int64
    np.testing.assert_array_equal(result["count"].transpose("T", "sigma_W", "t"), count)
    assert int(result["n_members"]) == 5
    # the diverged member is missing from every checkpoint after the first
    assert result["count"].sel(T=64.0, sigma_W=0.125).values.tolist() == [5] + [4] * 6

    for name, reference in {
        "mean": np.nanmean(values, axis=-1),
        "median": np.nanmedian(values, axis=-1),
        "q16": np.nanquantile(values, 0.16, axis=-1),
        "q84": np.nanquantile(values, 0.84, axis=-1),
    }.items():
        got = result[name].transpose("T", "sigma_W", "t").values
        np.testing.assert_allclose(got, reference, rtol=RTOL)


def test_stats_of_a_cell_without_finite_members_is_nan_not_missing() -> None:
    ds = pa.synthetic_sweep(
        T=(1.0,), sigma_W=(1.0,), seeds=2, diverged=[(0, 0, 0), (0, 0, 1)]
    )
    result = ds.phase.stats("train_loss").isel(t=-1).compute()
    assert int(result["count"].item()) == 0
    assert np.isnan(result["median"].item())
    assert result["median"].shape == (1, 1)


def test_stats_of_booleans_give_fractions(sweep) -> None:
    diverged = sweep.phase.stats("diverged").isel(t=-1).compute()
    np.testing.assert_allclose(diverged["mean"].sel(T=64.0, sigma_W=0.125), 0.2)
    np.testing.assert_allclose(diverged["mean"].sel(T=1.0), 0.0)


# --- spectra -------------------------------------------------------------------------


def test_level_spacing_and_rates_match_numpy(sweep, lazy) -> None:
    out = lazy.phase.level_spacing().compute()
    values = sweep.eigenvalues.values  # (T, sigma_W, seed, t, eigen)
    S = (values.max(-1) - values.min(-1)) / (values.shape[-1] - 1)
    np.testing.assert_allclose(
        out.level_spacing.transpose("T", "sigma_W", "seed", "t"), S, rtol=RTOL
    )

    t = sweep.t.values.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.log(S / S[..., :1]) / t
    rate[..., 0] = np.nan
    got = out.rate_per_step.transpose("T", "sigma_W", "seed", "t").values
    np.testing.assert_allclose(got, rate, rtol=RTOL)
    np.testing.assert_allclose(
        out.rate_per_epoch.transpose("T", "sigma_W", "seed", "t"),
        rate * sweep.attrs["steps_per_epoch"],
        rtol=RTOL,
    )


def test_marchenko_pastur_edges_and_fit(sweep) -> None:
    out = sweep.phase.level_spacing()
    sigma = sweep.sigma_W.values
    np.testing.assert_allclose(out.mp_x_plus, sigma**2 * (1 + np.sqrt(0.5)) ** 2)
    np.testing.assert_allclose(out.mp_x_minus, sigma**2 * (1 - np.sqrt(0.5)) ** 2)
    # 5 seeds × 512 entries: the mean of the squares is within a few percent
    np.testing.assert_allclose(out.sigma_W_fit, sigma, rtol=0.05)
    # the density on its own grid integrates to one
    x, p = out.mp_x.values, out.mp_density.values
    np.testing.assert_allclose(np.trapezoid(p, x, axis=-1), 1.0, rtol=0.02)


# --- DBM -----------------------------------------------------------------------------


@pytest.mark.parametrize("convention", ["paper", "phase_ml"])
def test_dbm_uses_the_stored_weights_and_the_right_data_set(sweep, lazy, convention):
    out = lazy.phase.dbm(convention=convention).compute()
    x_name = "x_train" if convention == "paper" else "x_test"
    for i_T, i_sigma, seed in [(0, 0, 0), (1, 2, 4), (2, 1, 2)]:
        member = sweep.isel(T=i_T, sigma_W=i_sigma, seed=seed)
        W1, W2t, W3 = (member[f"teacher_W{k}"].values for k in (1, 2, 3))
        x = member[x_name].values
        phi1 = activate("tanh", x @ W1.T, np)
        y = teacher_outputs(x, W1, W2t, W3, "tanh")
        W2 = member.W2.isel(t=-1).values
        ref = rmt.dbm_coefficients(W2, W3, phi1, y, "tanh", convention=convention)
        K_S, V_S, _ = rmt.level_spacing_coefficients(
            ref.K_tilde, ref.V_tilde, convention=convention
        )
        got = out.isel(T=i_T, sigma_W=i_sigma, seed=seed)
        np.testing.assert_allclose(got.K_tilde, ref.K_tilde, rtol=RTOL, atol=1e-14)
        np.testing.assert_allclose(got.K_S, K_S, rtol=RTOL)
        np.testing.assert_allclose(got.V_S, V_S, rtol=RTOL)
        converged, _, _ = rmt.dbm_criterion(
            K_S,
            V_S,
            sweep.T.values[i_T],
            sweep.sigma_W.values[i_sigma],
            0.5,
            16,
            convention=convention,
        )
        assert bool(got.converged) == bool(converged)


def test_dbm_of_a_diverged_member_is_nan_and_not_converged(sweep) -> None:
    out = sweep.phase.dbm().isel(T=2, sigma_W=0, seed=3).compute()
    assert np.isnan(out.K_S) and np.isnan(out.V_S)
    assert not bool(out.converged)


def test_dbm_refuses_a_checkpoint_outside_the_store(sweep) -> None:
    with pytest.raises(ConfigError, match=r"t: got 99; must be a checkpoint position"):
        sweep.phase.dbm(t=99)


# --- boundaries and labels -----------------------------------------------------------


def _fraction_map(log_T, log_inv):
    """A converged fraction falling linearly in log T, rising in log 1/σ_W."""
    return 0.5 - 0.1 * log_T + 0.05 * log_inv


def _fake_dbm(T, sigma_W, seeds=1000):
    """A dbm() result whose converged fraction is _fraction_map on the grid."""
    log_T, log_inv = np.meshgrid(np.log(T), np.log(1 / sigma_W), indexing="ij")
    fraction = np.clip(_fraction_map(log_T, log_inv), 0, 1)
    count = np.rint(fraction * seeds)[..., None]
    converged = np.arange(seeds) < count
    data = xr.DataArray(converged, dims=("T", "sigma_W", "seed"))
    return xr.Dataset({"converged": data}, coords={"T": T, "sigma_W": sigma_W})


def test_contour_lines_follow_the_level_sets_of_a_linear_map() -> None:
    T = 2.0 ** np.arange(-5, 7)
    sigma_W = 2.0 ** np.arange(-3, 9)
    log_T, log_inv = np.meshgrid(np.log(T), np.log(1 / sigma_W), indexing="ij")
    fraction = xr.DataArray(
        _fraction_map(log_T, log_inv),
        dims=("T", "sigma_W"),
        coords={"T": T, "sigma_W": sigma_W},
    )
    lines = pa.contour_lines(fraction, (0.68, 0.95))
    assert set(lines) == {0.68, 0.95}
    for level, found in lines.items():
        assert len(found) == 1
        points = found[0]
        assert points.shape[0] >= 2
        # bilinear interpolation of a linear map is exact: every vertex lies
        # on the level set
        values = _fraction_map(np.log(points[:, 1]), np.log(points[:, 0]))
        np.testing.assert_allclose(values, level, atol=1e-12)


def test_upper_crossing_interpolates_in_log_T() -> None:
    T = np.array([1.0, 2.0, 4.0, 8.0])
    fraction = np.array(
        [
            [1.0, 0.9, 0.5, 0.1],  # crosses 0.68 between T = 2 and 4
            [1.0, 1.0, 1.0, 0.99],  # never below 0.68: boundary above the grid
            [0.2, 0.1, 0.0, 0.0],  # never reaches 0.68
            [0.3, 0.9, 0.2, 0.0],  # reaches it only in the middle
        ]
    )
    got = _upper_crossing(fraction, T, (0.68,))[:, 0]
    weight = (0.9 - 0.68) / (0.9 - 0.5)
    np.testing.assert_allclose(
        got[0], np.exp(np.log(2) + weight * np.log(2)), rtol=RTOL
    )
    assert got[1] == np.inf and np.isnan(got[2])
    np.testing.assert_allclose(
        got[3], np.exp(np.log(2) + (0.9 - 0.68) / 0.7 * np.log(2))
    )


def test_boundaries_of_a_known_fraction_map(sweep) -> None:
    T, sigma_W = sweep.T.values, sweep.sigma_W.values
    out = pa.boundaries(sweep, (0.68, 0.95), dbm_result=_fake_dbm(T, sigma_W)).compute()
    log_T, log_inv = np.meshgrid(np.log(T), np.log(1 / sigma_W), indexing="ij")
    expected = np.clip(_fraction_map(log_T, log_inv), 0, 1)
    np.testing.assert_allclose(out.converged_fraction, expected, atol=1e-3)
    assert out.T_boundary.dims == ("sigma_W", "level")


def test_jamming_line_from_the_measured_preactivations(sweep) -> None:
    out = sweep.phase.feature_variance().compute()
    ratios = []
    for i, sigma in enumerate(sweep.sigma_W.values):
        per_seed = []
        for s in range(sweep.sizes["seed"]):
            member = sweep.isel(T=0, sigma_W=i, seed=s)
            phi1 = np.tanh(member.x_test.values @ member.teacher_W1.values.T)
            z = phi1 @ member.W2.isel(t=0).values.T
            per_seed.append(z.var())
        np.testing.assert_allclose(out.sigma_z2.isel(sigma_W=i), per_seed, rtol=RTOL)
        ratios.append(np.mean(per_seed) / sigma**2)
    np.testing.assert_allclose(out.jamming_inv_sigma_W, np.sqrt(2 * np.mean(ratios)))
    np.testing.assert_allclose(out.jamming_inv_sigma_W_theory, np.sqrt(2))


def test_dbm_rule_labels_of_a_known_boundary(sweep) -> None:
    sigma_W = sweep.sigma_W.values  # 1/σ_W = 8, 1, 1/64
    found = xr.Dataset(
        {
            "T_boundary": (("sigma_W", "level"), [[2.0], [np.inf], [np.nan]]),
            "jamming_inv_sigma_W": 0.5,
            "jamming_inv_sigma_W_theory": np.sqrt(2),
        },
        coords={"sigma_W": sigma_W, "level": [0.68]},
    )
    labels = pa.classify(sweep, boundaries_result=found).compute()
    O, H, J = pa.ORDERED, pa.HOT, pa.JAMMED
    # columns: 1/σ_W = 8 (boundary at T = 2), 1 (never hot), 1/64 (no T converged)
    np.testing.assert_array_equal(
        labels.label_dbm.transpose("T", "sigma_W"), [[O, O, J], [O, O, J], [H, O, J]]
    )
    theory = pa.classify(sweep, boundaries_result=found, jamming="theory").compute()
    # with the line at √2 the 1/σ_W = 1 column becomes jammed
    np.testing.assert_array_equal(theory.label_dbm.sel(sigma_W=1.0), [J, J, J])
    assert labels.label_dbm.attrs["flag_meanings"] == "ordered hot jammed"


def test_observable_rule_against_numpy_thresholds(sweep) -> None:
    labels = sweep.phase.classify(
        loss_threshold=0.01, alignment_threshold=0.2, memory_threshold=0.5
    ).compute()
    final = sweep.isel(t=-1)
    loss = np.nanmedian(final.test_loss.transpose("T", "sigma_W", "seed"), -1)
    align = np.nanmedian(final.alignment.transpose("T", "sigma_W", "seed"), -1)
    memory = np.nanmedian(final.feature_overlap.transpose("T", "sigma_W", "seed"), -1)
    ordered = (loss <= 0.01) & (align >= 0.2)
    expected = np.where(ordered, pa.ORDERED, np.where(memory >= 0.5, pa.JAMMED, pa.HOT))
    np.testing.assert_array_equal(labels.label_observables, expected)
    np.testing.assert_array_equal(labels.disagree, labels.label_dbm.values != expected)


def test_recommend_takes_the_largest_ordered_T(sweep) -> None:
    O, H, J = pa.ORDERED, pa.HOT, pa.JAMMED
    grid = np.array([[O, O, J], [O, H, J], [H, H, J]], dtype=np.int8)
    labels = xr.Dataset(
        {"label_dbm": (("T", "sigma_W"), grid)},
        coords={"T": sweep.T.values, "sigma_W": sweep.sigma_W.values},
    )
    out = pa.recommend(sweep, labels=labels).compute()
    np.testing.assert_array_equal(out.T_max, [1.0, 0.03125, np.nan])
    np.testing.assert_array_equal(out.learning_rate, [4.0, 0.125, np.nan])
    out = pa.recommend(sweep, batch_size=32, labels=labels).compute()
    np.testing.assert_array_equal(out.learning_rate, [32.0, 1.0, np.nan])
    with pytest.raises(ConfigError, match=r"batch_size: got 0; must be a positive"):
        pa.recommend(sweep, batch_size=0, labels=labels)


# --- errors ----------------------------------------------------------------------------


def test_errors_name_the_field_and_what_is_allowed(sweep) -> None:
    with pytest.raises(StoreError, match=r"no variable 'loss'; it holds .*W2"):
        sweep.phase.stats("loss")
    with pytest.raises(ConfigError, match=r"convention 'other'"):
        sweep.phase.dbm(convention="other")
    with pytest.raises(ConfigError, match=r"jamming: got 'both'"):
        sweep.phase.classify(jamming="both")
    with pytest.raises(ConfigError, match=r"rule: got 'vote'"):
        sweep.phase.recommend(rule="vote")
    with pytest.raises(ConfigError, match=r"levels: got \(1\.5,\)"):
        pa.boundaries(sweep, (1.5,))
