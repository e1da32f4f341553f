"""Random-matrix kernels against analytic results and plain float64 loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import integrate

from phasearray import rmt
from phasearray.errors import ConfigError

# float64 kernels against float64 references: only summation order differs
RTOL = 1e-9


# --- Marchenko–Pastur --------------------------------------------------------------


@pytest.mark.parametrize("r", [0.25, 0.5, 0.8], ids=lambda r: f"r={r}")
@pytest.mark.parametrize("sigma_W", [0.125, 1.0, 16.0], ids=lambda s: f"sigma={s}")
def test_marchenko_pastur_is_normalised_with_mean_sigma2(r, sigma_W) -> None:
    x_minus, x_plus = rmt.marchenko_pastur_edges(sigma_W, r)

    def moment(k):
        value, _ = integrate.quad(
            lambda x: x**k * rmt.marchenko_pastur_density(x, sigma_W, r),
            x_minus,
            x_plus,
            epsabs=0,
            epsrel=1e-11,
            limit=200,
        )
        return value

    np.testing.assert_allclose(moment(0), 1.0, rtol=1e-8)
    np.testing.assert_allclose(moment(1), sigma_W**2, rtol=1e-8)
    # second moment of the law: σ⁴ (1 + r)
    np.testing.assert_allclose(moment(2), sigma_W**4 * (1 + r), rtol=1e-8)


def test_marchenko_pastur_upper_edge_quoted_in_the_paper() -> None:
    _, x_plus = rmt.marchenko_pastur_edges(1 / 8, 0.5)
    np.testing.assert_allclose(x_plus, 0.046, atol=5e-4)
    _, x_plus = rmt.marchenko_pastur_edges(2.0**8, 0.5)
    np.testing.assert_allclose(x_plus, 1.9e5, rtol=0.01)


def test_marchenko_pastur_density_is_zero_outside_the_edges() -> None:
    x_minus, x_plus = rmt.marchenko_pastur_edges(2.0, 0.5)
    outside = np.array([0.0, 0.5 * x_minus, x_minus, x_plus, 2 * x_plus])
    np.testing.assert_array_equal(rmt.marchenko_pastur_density(outside, 2.0, 0.5), 0)


def test_sampled_spectra_follow_marchenko_pastur() -> None:
    rng = np.random.default_rng(7)
    n2, n1, sigma_W, members = 200, 400, 3.0, 20
    W = rng.normal(0, sigma_W / np.sqrt(n1), size=(members, n2, n1))
    x = np.sort(np.linalg.eigvalsh(W @ W.transpose(0, 2, 1)).ravel())

    # Kolmogorov distance between the sample and the law's CDF
    x_minus, x_plus = rmt.marchenko_pastur_edges(sigma_W, n2 / n1)
    grid = np.linspace(x_minus, x_plus, 20001)
    pdf = rmt.marchenko_pastur_density(grid, sigma_W, n2 / n1)
    cdf = np.concatenate([[0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid))])
    empirical = np.arange(1, x.size + 1) / x.size
    distance = np.max(np.abs(np.interp(x, grid, cdf) - empirical))
    assert distance < 0.01
    # the extreme eigenvalues fluctuate on the Tracy–Widom scale ~ n2^(-2/3)
    width = x_plus - x_minus
    np.testing.assert_allclose([x[0], x[-1]], [x_minus, x_plus], atol=0.03 * width)


# --- level spacing ---------------------------------------------------------------------


def test_level_spacing_and_rate_against_definitions() -> None:
    rng = np.random.default_rng(1)
    values = np.sort(rng.exponential(size=(3, 4, 16)), axis=-1)
    S = rmt.level_spacing(values)
    expected = np.array(
        [[(row[-1] - row[0]) / 15 for row in block] for block in values]
    )
    np.testing.assert_allclose(S, expected, rtol=RTOL)

    t = np.array([0.0, 10.0, 100.0, 1000.0])
    S_t = S[0]  # (4,) as if one model at four times
    rate = rmt.level_spacing_rate(S_t, S_t[0], t)
    assert np.isnan(rate[0])
    np.testing.assert_allclose(rate[1:], np.log(S_t[1:] / S_t[0]) / t[1:], rtol=RTOL)


def test_level_spacing_propagates_nan() -> None:
    values = np.array([[0.1, np.nan, 2.0], [0.1, 0.5, 2.0]])
    S = rmt.level_spacing(values)
    assert np.isnan(S[0])
    np.testing.assert_allclose(S[1], 0.95, rtol=RTOL)


# --- feature distribution ------------------------------------------------------------


@pytest.mark.parametrize("sigma_z2", [0.1, 0.5, 2.0])
def test_feature_density_is_normalised_and_matches_sampling(sigma_z2) -> None:
    total, _ = integrate.quad(
        lambda p: rmt.feature_density(p, sigma_z2), -1, 1, epsrel=1e-10, limit=200
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-7)

    rng = np.random.default_rng(3)
    phi = np.tanh(rng.normal(0, np.sqrt(sigma_z2), size=400_000))
    counts, edges = np.histogram(phi, bins=20, range=(-0.95, 0.95))
    expected = phi.size * np.array(
        [
            integrate.quad(lambda p: rmt.feature_density(p, sigma_z2), a, b)[0]
            for a, b in itertools.pairwise(edges)
        ]
    )
    # Poisson counts: within 5 standard deviations
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected) + 1)


@pytest.mark.parametrize("sigma_z2", [0.3, 0.49, 0.51, 0.8, 2.0])
def test_feature_distribution_turns_bimodal_at_one_half(sigma_z2) -> None:
    # sign of the curvature of p at φ = 0, by a second difference
    h = 1e-3
    p = rmt.feature_density(np.array([-h, 0.0, h]), sigma_z2)
    curvature = p[0] + p[2] - 2 * p[1]
    bimodal = sigma_z2 > rmt.SIGMA_C2
    assert (curvature > 0) == bimodal

    peak = rmt.feature_peak(sigma_z2)
    if not bimodal:
        assert peak == 0
        return
    np.testing.assert_allclose(peak, np.tanh(2 * sigma_z2 * peak), atol=1e-12)
    grid = np.linspace(0, 0.999999, 200_001)
    np.testing.assert_allclose(
        grid[np.argmax(rmt.feature_density(grid, sigma_z2))], peak, atol=1e-4
    )


def test_preactivation_variance_against_a_loop() -> None:
    rng = np.random.default_rng(5)
    W2, phi1 = rng.normal(size=(3, 4, 6)), rng.normal(size=(3, 50, 6))
    expected = [
        np.var(np.array([W @ p for p in P])) for W, P in zip(W2, phi1, strict=True)
    ]
    np.testing.assert_allclose(
        rmt.preactivation_variance(W2, phi1), expected, rtol=RTOL
    )


# --- Dyson Brownian motion -------------------------------------------------------------


def _reference_dbm(W2, W3, phi1, y, convention):
    """Per-sample loop of SPEC §4, float64, one model."""
    N = W2.shape[0]
    dX = []
    for a in range(phi1.shape[0]):
        z = W2 @ phi1[a]
        h = np.tanh(z)
        delta = (W3.T @ (W3 @ h - y[a])) * (1 - h * h)
        gradient = np.outer(delta, phi1[a])
        dX.append(W2 @ gradient.T + gradient @ W2.T)
    dX = np.array(dX)
    X = W2 @ W2.T

    if convention == "paper":
        x, U = np.linalg.eigh(X)
        rotated = np.array([U.T @ A @ U for A in dX])
        K, V = -rotated.mean(axis=0), rotated.var(axis=0)
        # 1-based formulas of appendix B
        k1 = lambda i, j: K[i - 1, j - 1]  # noqa: E731
        v1 = lambda i, j: V[i - 1, j - 1]  # noqa: E731
        K_S = (k1(N, N) - k1(1, 1)) / (N - 1)
        total = sum((v1(N, N - k) + v1(1, k + 1)) / k for k in range(1, N - 1))
        V_S = 2 * v1(N, 1) / (N - 1) ** 2 + total / (N - 1)
        D_S = (v1(1, 1) + v1(N, N)) / (2 * (N - 1) ** 2)
    else:
        U, x, _ = np.linalg.svd(X)
        K = U.T @ (-dX.mean(axis=0)) @ U
        V = U.T @ dX.var(axis=0) @ U
        # 0-based formulas of the authors' notebook, 16 → N
        K_S = abs(K[0, 0]) - abs(K[N - 1, N - 1])
        total = sum((V[0, k] + V[N - 1, N - k]) / k for k in range(1, N - 1))
        V_S = 2 * V[0, N - 1] / (N - 1) + total
        D_S = (V[0, 0] + V[N - 1, N - 1]) / (2 * (N - 1) ** 2)
    return K, V, x, K_S, V_S, D_S


def _models(rng, n_models=4, widths=(3, 8, 5, 2), n=40):
    n0, n1, n2, n3 = widths
    scales = np.array([0.3, 1.0, 5.0, 0.05])[:n_models]
    W2 = scales[:, None, None] * rng.normal(size=(n_models, n2, n1)) / np.sqrt(n1)
    W3 = rng.normal(size=(n3, n2)) / np.sqrt(n2)
    phi1 = np.tanh(rng.normal(size=(n, n0)) @ rng.normal(size=(n0, n1)) / np.sqrt(n0))
    y = rng.normal(size=(n, n3))
    return W2, W3, phi1, y


@pytest.mark.parametrize("convention", rmt.CONVENTIONS)
def test_dbm_against_a_per_sample_loop(convention) -> None:
    rng = np.random.default_rng(11)
    W2, W3, phi1, y = _models(rng)
    out = rmt.dbm_coefficients(W2, W3, phi1, y, "tanh", convention=convention)
    K_S, V_S, D_S = rmt.level_spacing_coefficients(
        out.K_tilde, out.V_tilde, convention=convention
    )

    for m in range(W2.shape[0]):
        K, V, x, k_s, v_s, d_s = _reference_dbm(W2[m], W3, phi1, y, convention)
        scale_K, scale_V = np.abs(K).max(), np.abs(V).max()
        np.testing.assert_allclose(out.K_tilde[m], K, rtol=1e-8, atol=1e-12 * scale_K)
        np.testing.assert_allclose(out.V_tilde[m], V, rtol=1e-7, atol=1e-10 * scale_V)
        np.testing.assert_allclose(out.eigenvalues[m], x, rtol=1e-10)
        np.testing.assert_allclose(K_S[m], k_s, rtol=1e-7, atol=1e-12 * scale_K)
        np.testing.assert_allclose(V_S[m], v_s, rtol=1e-7, atol=1e-10 * scale_V)
        np.testing.assert_allclose(D_S[m], d_s, rtol=1e-7, atol=1e-10 * scale_V)


def test_dbm_batches_broadcasting_and_nan_members() -> None:
    rng = np.random.default_rng(2)
    W2, W3, phi1, y = _models(rng)
    W2 = np.stack([W2, W2[::-1]])  # (2, 4, n2, n1): leading dims broadcast
    W2[1, 2] = np.nan
    whole = rmt.dbm_coefficients(W2, W3, phi1, y, "tanh")
    one_by_one = rmt.dbm_coefficients(W2, W3, phi1, y, "tanh", batch=1)

    assert whole.K_tilde.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(whole.K_tilde, one_by_one.K_tilde, rtol=1e-12)
    np.testing.assert_allclose(whole.V_tilde, one_by_one.V_tilde, rtol=1e-12)
    assert (
        np.isnan(whole.K_tilde[1, 2]).all() and np.isnan(whole.eigenvalues[1, 2]).all()
    )
    assert np.isfinite(whole.K_tilde[1, [0, 1, 3]]).all()

    single = rmt.dbm_coefficients(W2[0, 1], W3, phi1, y, "tanh")
    assert single.K_tilde.shape == (5, 5) and single.eigenvalues.shape == (5,)
    np.testing.assert_allclose(single.V_tilde, whole.V_tilde[0, 1], rtol=1e-12)


@pytest.mark.parametrize("convention", rmt.CONVENTIONS)
def test_level_spacing_terms_from_the_end_rows_equal_the_full_matrices(convention):
    rng = np.random.default_rng(4)
    W2, W3, phi1, y = _models(rng)
    # two data sets (seeds) shared by three members each, one member diverged
    W2 = np.stack([W2[:3], W2[1:]])  # (2, 3, n2, n1)
    W2[0, 1] = np.inf
    phi1 = np.stack([phi1, phi1[::-1] ** 2])[:, None]  # (2, 1, n, n1)
    y = np.stack([y, -y])[:, None]

    full = rmt.dbm_coefficients(W2, W3, phi1, y, "tanh", convention=convention)
    expected = rmt.level_spacing_coefficients(
        full.K_tilde, full.V_tilde, convention=convention
    )
    got = rmt.dbm_level_spacing(W2, W3, phi1, y, "tanh", convention=convention)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (2, 3)
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-14)
    assert all(np.isnan(g[0, 1]) for g in got)

    # each member on its own gives the same as in the grouped batch
    for i, j in [(0, 0), (1, 2)]:
        alone = rmt.dbm_coefficients(
            W2[i, j], W3, phi1[i, 0], y[i, 0], "tanh", convention=convention
        )
        np.testing.assert_allclose(alone.V_tilde, full.V_tilde[i, j], rtol=1e-12)


@pytest.mark.parametrize("convention", rmt.CONVENTIONS)
def test_dbm_criterion_against_its_inequality(convention) -> None:
    K_S = np.array([-2.0, -2.0, 1.0, np.nan])
    V_S = np.array([1.0, 1.0, 1.0, 1.0])
    T = np.array([0.1, 10.0, 0.1, 0.1])
    sigma_W, r, n2 = 0.5, 0.5, 16
    converged, lhs, rhs = rmt.dbm_criterion(
        K_S, V_S, T, sigma_W, r, n2, convention=convention
    )
    if convention == "paper":
        expected_lhs = (n2 - 1) / (4 * np.sqrt(r)) * T / sigma_W**2
        expected_rhs = -K_S / V_S
    else:
        expected_lhs = T * V_S / (4 * sigma_W**2)
        expected_rhs = K_S / (np.sqrt(2) * 15)
    np.testing.assert_allclose(lhs, expected_lhs, rtol=RTOL)
    np.testing.assert_allclose(rhs, expected_rhs, rtol=RTOL)
    np.testing.assert_array_equal(converged, (expected_lhs <= expected_rhs))


def test_unknown_convention_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"convention 'nature'.*'paper'.*'phase_ml'"):
        rmt.level_spacing_coefficients(np.eye(3), np.eye(3), convention="nature")


def test_runaway_and_unbatched_members_give_nan_not_errors() -> None:
    """Identity networks can grow to 1e140 without NaN: such members are NaN."""
    from phasearray import rmt

    rng = np.random.default_rng(3)
    phi1, W3 = rng.normal(size=(50, 8)), rng.normal(size=(1, 4))
    y = rng.normal(size=(50, 1))
    W2 = np.stack([rng.normal(size=(4, 8)), 1e140 * rng.normal(size=(4, 8))])
    K_S, V_S, D_S = rmt.dbm_level_spacing(W2, W3, phi1, y, activation="identity")
    assert (
        np.isfinite(K_S[0])
        and np.isnan(K_S[1])
        and np.isnan(V_S[1])
        and np.isnan(D_S[1])
    )
    # no leading member dim at all
    single = rmt.dbm_level_spacing(W2[0], W3, phi1, y, activation="identity")
    np.testing.assert_allclose(
        [single[0], single[1], single[2]], [K_S[0], V_S[0], D_S[0]], rtol=1e-12
    )
