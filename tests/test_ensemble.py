"""Teachers, data and initial weights drawn from seeds."""

from __future__ import annotations

import numpy as np

from phasearray.ensemble import make_ensemble, stream_key


def test_draws_depend_on_the_key_only() -> None:
    a = make_ensemble([stream_key(3)], (3, 32, 16, 1), 100, 10)
    b = make_ensemble([stream_key(1), stream_key(3)], (3, 32, 16, 1), 100, 10)
    np.testing.assert_array_equal(a.teacher_W2[0], b.teacher_W2[1])
    np.testing.assert_array_equal(a.x_train[0], b.x_train[1])
    assert not np.array_equal(b.teacher_W2[0], b.teacher_W2[1])


def test_per_cell_keys_use_the_values_not_the_positions() -> None:
    assert stream_key(2, 0.5, 4.0) == stream_key(2, 0.5, 4.0) != stream_key(2, 0.5, 8.0)
    assert stream_key(2) == (2,)


def test_teacher_variances_are_one_over_fan_in() -> None:
    e = make_ensemble([stream_key(s) for s in range(200)], (3, 32, 16, 1), 10, 10)
    # sample variances of 200 × (96, 512, 16) normals; relative sd ≈ sqrt(2/n)
    for W, fan_in, n in (
        (e.teacher_W1, 3, 96 * 200),
        (e.teacher_W2, 32, 512 * 200),
        (e.teacher_W3, 16, 16 * 200),
    ):
        np.testing.assert_allclose(W.var(), 1 / fan_in, rtol=5 * np.sqrt(2 / n))


def test_initial_spectra_follow_marchenko_pastur() -> None:
    """X = W2 W2ᵀ with W2 = σ_W/√n1 G: E[x] = σ_W², support [σ²(1-√r)², σ²(1+√r)²]."""
    sigma_W, n1, n2 = 8.0, 32, 16
    e = make_ensemble([stream_key(s) for s in range(400)], (3, n1, n2, 1), 10, 10)
    W2 = sigma_W / np.sqrt(n1) * e.W2_normal
    x = np.linalg.eigvalsh(W2 @ np.swapaxes(W2, 1, 2)).ravel()
    r = n2 / n1
    lower, upper = (
        sigma_W**2 * (1 - np.sqrt(r)) ** 2,
        sigma_W**2 * (1 + np.sqrt(r)) ** 2,
    )
    # mean eigenvalue: tr X / n2 averages n1 χ²-ish terms; 6400 values, sd ≈ σ²·0.25/√400
    np.testing.assert_allclose(x.mean(), sigma_W**2, rtol=0.02)
    # finite n2 = 16 smears the edges by O(n^-2/3); 95 % lie inside ±10 %
    inside = (x > 0.9 * lower) & (x < 1.1 * upper)
    assert inside.mean() > 0.95


def test_marchenko_pastur_upper_edge_at_inverse_sigma_8() -> None:
    # SPEC §4 check: x+ = 0.046 at 1/σ_W = 8
    sigma_W, r = 1 / 8, 0.5
    np.testing.assert_allclose(sigma_W**2 * (1 + np.sqrt(r)) ** 2, 0.0455, atol=5e-4)
