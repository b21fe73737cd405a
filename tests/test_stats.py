"""Bootstrap intervals and McNemar p-values against independent calculations."""

import numpy as np
import pytest
from imageclf import stats
from scipy.stats import binomtest


def test_mcnemar_matches_scipy_binomial_test():
    ref = np.array([1] * 30 + [0] * 10 + [1] * 12 + [0] * 3, dtype=bool)
    other = np.array([1] * 30 + [0] * 10 + [0] * 12 + [1] * 3, dtype=bool)
    result = stats.mcnemar_exact(ref, other)
    assert (result["b"], result["c"]) == (12, 3)
    assert result["p_value"] == pytest.approx(binomtest(3, 15, 0.5).pvalue, rel=1e-12)


def test_mcnemar_by_hand():
    # b = 1, c = 4: p = 2 * (C(5,0) + C(5,1)) / 2^5 = 12 / 32
    ref = np.array([1, 0, 0, 0, 0, 1, 1], dtype=bool)
    other = np.array([0, 1, 1, 1, 1, 1, 1], dtype=bool)
    assert stats.mcnemar_exact(ref, other)["p_value"] == pytest.approx(12 / 32)
    assert stats.mcnemar_exact(ref, ref)["p_value"] == 1.0


def test_bootstrap_identical_predictions_give_zero_interval():
    outcome = np.array([1, 0, 1, 1, 0, 1])
    result = stats.paired_bootstrap(outcome, outcome, samples=500)
    assert result == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}


def test_bootstrap_interval_matches_normal_approximation():
    rng = np.random.default_rng(1)
    ref = rng.random(2000) < 0.80
    other = ref.copy()
    flip = rng.choice(2000, 200, replace=False)
    other[flip[:130]] = True   # some wrong become right
    other[flip[130:]] = False  # some right become wrong
    result = stats.paired_bootstrap(ref, other, samples=4000, seed=3)
    d = other.astype(float) - ref.astype(float)
    se = d.std(ddof=1) / np.sqrt(len(d))  # hand calculation: SE of a paired mean difference
    assert result["diff"] == pytest.approx(d.mean())
    assert result["ci_low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert result["ci_high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def test_bootstrap_with_seeds_widens_for_seed_noise():
    rng = np.random.default_rng(0)
    ref = (rng.random((3, 500)) < 0.8).astype(float)
    other_one = ref.copy()
    one_seed = stats.paired_bootstrap(ref[:1], other_one[:1], samples=1000)
    three_seeds = stats.paired_bootstrap(ref, other_one[::-1], samples=1000)
    assert one_seed["ci_high"] - one_seed["ci_low"] == 0.0
    assert three_seeds["ci_high"] - three_seeds["ci_low"] > 0.0


def test_verdicts():
    assert stats.verdict(0.01, 0.03, 0.01) == "better, beyond noise"
    assert stats.verdict(-0.03, -0.01, 0.01) == "worse, beyond noise"
    assert stats.verdict(-0.01, 0.03, 0.01) == "not distinguishable from noise"
    assert stats.verdict(0.01, 0.03, 0.2) == "not distinguishable from noise"
