"""The CNNs' shared input normalisation: log counts, binned, z-scored per sample."""

from __future__ import annotations

import numpy as np

from smartlab_plugins.models.preprocessing import log_binned_zscore


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
