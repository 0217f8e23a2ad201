"""The CNNs' shared input normalisation: log counts, binned, z-scored per sample."""

from __future__ import annotations

import numpy as np

from smartlab_plugins.models.preprocessing import bin_widths, log_binned_zscore, regrid_counts


def test_counts_are_logged_binned_and_standardised_per_sample():
    rng = np.random.default_rng(0)
    counts = rng.poisson(5.0, (3, 11, 12)).astype(np.float32)
    counts[0, 0, 0] = -4.0  # a negative count (e.g. after background subtraction) counts as 0
    counts[2] *= 40.0  # a longer counting time: the same normalised input, nearly

    out = log_binned_zscore(counts, (2, 3))

    logged = np.log1p(np.clip(counts, 0.0, None))[:, :10]  # the 11th row fills no bin
    binned = logged.reshape(3, 5, 2, 4, 3).mean(axis=(2, 4))
    expected = (binned - binned.mean(axis=(1, 2), keepdims=True)) / (
        binned.std(axis=(1, 2), keepdims=True) + 1e-6
    )
    assert out.shape == (3, 1, 5, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], expected, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-4)


def test_counts_are_regridded_by_coordinates_as_a_histogram():
    rows, columns = np.linspace(0.0, 1.0, 11), np.linspace(0.0, 2.0, 21)
    density = 3.0 + 2.0 * rows[:, None] + 5.0 * columns[None, :]  # counts per unit area
    area = bin_widths(rows)[:, None] * bin_widths(columns)[None, :]
    counts = (density * area)[None]
    assert np.allclose(bin_widths(rows), 0.1) and np.allclose(bin_widths(columns[::-1]), 0.1)

    assert np.allclose(regrid_counts(counts, (rows, columns), (rows, columns)), counts)
    fine_rows, fine_columns = np.linspace(0.0, 1.0, 21), np.linspace(0.5, 1.5, 41)
    out = regrid_counts(counts, (rows, columns), (fine_rows, fine_columns))
    expected = 3.0 + 2.0 * fine_rows[:, None] + 5.0 * fine_columns[None, :]
    # a linear density is interpolated exactly; each finer bin holds a quarter of the counts
    np.testing.assert_allclose(out[0], expected * 0.05 * 0.025, rtol=1e-5)
    # decreasing source coordinates are the same axis read backwards
    backwards = regrid_counts(counts[:, ::-1], (rows[::-1], columns), (fine_rows, fine_columns))
    np.testing.assert_allclose(backwards, out, rtol=1e-6)
    # targets beyond the outer centres take the outer bin's density (no extrapolation;
    # a single target bin counts as width 1)
    edge = regrid_counts(counts, (rows, columns), (np.array([1.04]), np.array([2.04])))
    np.testing.assert_allclose(edge[0, 0, 0], density[-1, -1], rtol=1e-5)
