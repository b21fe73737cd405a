"""The ablation table's statistics: against independent calculations, and their error rates
measured by simulation (the figures in docs/ablation.md)."""

import numpy as np
import pytest
from imageclf.report import stats
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import binomtest
from sklearn.metrics import balanced_accuracy_score, f1_score


def mean_interval(differences, samples: int, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval (low, high) of mean(d), images resampled: the accuracy
    interval of stats.paired_bootstrap (same seed, same resamples; a test below checks), without
    the other metrics, fast enough for the simulations. (rows, images): arrays per row."""
    d = np.asarray(differences, dtype=float)
    rows = np.atleast_2d(d)
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, samples, stats.CHUNK):  # stats' blocks of resamples, in its order
        weights = stats._bootstrap_counts(rng, rows.shape[1], min(stats.CHUNK, samples - start))
        means.append(rows @ weights.T / rows.shape[1])
    alpha = (1 - level) / 2
    low, high = np.quantile(np.concatenate(means, axis=1), [alpha, 1 - alpha], axis=1)
    return (float(low[0]), float(high[0])) if d.ndim == 1 else (low, high)


def test_sign_flip_of_one_run_each_is_mcnemars_exact_test():
    # one run each: d_i is -1, 0 or +1, and flipping signs is the exact binomial test of McNemar
    ref = np.array([1] * 30 + [0] * 10 + [1] * 12 + [0] * 3)
    other = np.array([1] * 30 + [0] * 10 + [0] * 12 + [1] * 3)
    p = stats.sign_flip_p(stats.image_differences(ref, other), samples=40000, seed=1)
    exact = binomtest(3, 15, 0.5).pvalue
    assert p == pytest.approx(exact, abs=3 * np.sqrt(exact * (1 - exact) / 40000))
    assert stats.sign_flip_p(stats.image_differences(ref, ref), samples=100) == 1.0


def test_image_differences_average_each_arms_runs():
    ref = np.array([[1, 1, 0], [1, 0, 0]])
    other = np.array([[1, 1, 1]])  # an ensemble: one outcome per image
    assert stats.image_differences(ref, other).tolist() == [0.0, 0.5, 1.0]


def test_bootstrap_interval_matches_normal_approximation():
    rng = np.random.default_rng(1)
    ref = rng.random(2000) < 0.80
    other = ref.copy()
    flip = rng.choice(2000, 200, replace=False)
    other[flip[:130]] = True   # some wrong become right
    other[flip[130:]] = False  # some right become wrong
    d = other.astype(float) - ref.astype(float)
    low, high = mean_interval(d, samples=4000, seed=3)
    se = d.std(ddof=1) / np.sqrt(len(d))  # hand calculation: SE of a paired mean difference
    assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def predictions_from(correct, labels, classes, rng):
    """Class predictions: the label where correct, another class where not."""
    wrong = (labels + rng.integers(1, classes, np.shape(correct))) % classes
    return np.where(correct, labels, wrong)


def test_the_three_metrics_match_scikit_learn_and_share_the_resamples():
    rng = np.random.default_rng(2)
    labels = rng.choice(4, 300, p=[0.55, 0.25, 0.15, 0.05])  # imbalanced
    ref = predictions_from(rng.random((3, 300)) < 0.85, labels, 4, rng)
    other = predictions_from(rng.random((2, 300)) < 0.75, labels, 4, rng)
    result = stats.compare(labels, ref, other, 4, samples=1000, seed=5)

    def mean_of(fn, pred):
        return np.mean([fn(labels, p) for p in pred])

    for name, fn in (("acc", lambda y, p: np.mean(y == p)), ("balanced_acc", balanced_accuracy_score),
                     ("macro_f1", lambda y, p: f1_score(y, p, average="macro"))):
        assert result[name]["diff"] == pytest.approx(mean_of(fn, other) - mean_of(fn, ref), abs=1e-12)
        assert result[name]["ci_low"] < result[name]["diff"] < result[name]["ci_high"]
    d = stats.image_differences(ref == labels, other == labels)
    assert (result["acc"]["ci_low"], result["acc"]["ci_high"]) == pytest.approx(mean_interval(d, 1000, 5))
    assert result["p"] == stats.sign_flip_p(d, 1000, 5)
    assert result["p"] < 0.05  # 10 points apart on 300 images


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> stays 0.06 (monotone)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_wilson_matches_scipy():
    for k, n in ((0, 10), (7, 10), (30, 31), (450, 500)):
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_class_accuracy_flags_only_the_class_that_is_surely_worse():
    rng = np.random.default_rng(4)
    classes = [f"c{i}" for i in range(10)]
    labels = np.repeat(classes, 60)
    rate = np.where(labels == "c3", 0.6, 0.95)  # c3 is truly worse; c7 is the same as the rest
    correct = rng.random((3, len(labels))) < rate
    rows = {row["class"]: row for row in stats.class_accuracy(labels, correct, classes)}
    assert rows["c3"]["surely_worse"] and rows["c3"]["acc_ci_high"] < 0.8
    assert not any(rows[c]["surely_worse"] for c in classes if c != "c3")
    assert rows["c7"]["images"] == 60 and rows["c7"]["acc_ci_low"] < rows["c7"]["accuracy"] < rows["c7"]["acc_ci_high"]


def test_seed_spread_tells_runs_that_differ_as_a_whole_from_image_by_image_noise():
    rng = np.random.default_rng(8)
    p = expit(MU + SIGMA * rng.standard_normal(20000))
    independent = rng.random((3, 20000)) < p
    observed, expected = stats.seed_spread(independent)
    assert expected == pytest.approx(np.sum(p * (1 - p)) / 20000**2, rel=0.1)  # the truth, unbiased
    shifted = rng.random((3, 20000)) < expit(MU + SIGMA * rng.standard_normal(20000) + np.array([[-1], [0], [1]]))
    observed, expected = stats.seed_spread(shifted)
    assert observed > 10 * expected


def test_verdicts():
    assert stats.verdict(0.01, 0.03, 0.01) == "better, beyond noise"
    assert stats.verdict(-0.03, -0.01, 0.01) == "worse, beyond noise"
    assert stats.verdict(-0.01, 0.03, 0.01) == "not distinguishable from noise"
    assert stats.verdict(0.01, 0.03, 0.2) == "not distinguishable from noise"
    assert stats.verdict(0.01, 0.03, 0.01, seed_noise=False) == "better on these images (one run each: seed noise unmeasured)"


# -- error rates, by simulation --------------------------------------------------------------
# Each image has a difficulty; every run gets it right with probability sigmoid(MU + SIGMA * z),
# independently of the other runs. MU, SIGMA: about 90 % accuracy, and two seeds of one recipe
# disagree on about 9 % of the images (a correlation of 0.5 between runs' outcomes).
MU, SIGMA = 5.0, 3.5
SIMULATIONS, SAMPLES = 2000, 500


def simulate(rng, simulations, images, runs_ref, runs_other, shift=0.0):
    """(simulations, images) arrays of d_i; `shift` moves the arm's logits (0: equal in distribution)."""
    z = rng.standard_normal((simulations, 1, images))
    ref = rng.random((simulations, runs_ref, images)) < expit(MU + SIGMA * z)
    other = rng.random((simulations, runs_other, images)) < expit(MU + SIGMA * z + shift)
    return other.mean(axis=1) - ref.mean(axis=1)


def called(d, samples, seed, one_run_each):
    """How often the table's procedure calls a difference (p and interval, as in the table)."""
    p = stats.sign_flip_p(d, samples, seed)
    low, high = mean_interval(d, samples, seed + 1)
    verdicts = [stats.verdict(lo, hi, pv, seed_noise=not one_run_each) for lo, hi, pv in zip(low, high, p)]
    return np.mean(p < 0.05), np.mean([not v.startswith("not distinguishable") for v in verdicts])


@pytest.mark.parametrize("runs_ref,runs_other", [(1, 1), (2, 2), (3, 3), (3, 1), (2, 1)])
def test_equal_variants_are_called_different_at_most_five_percent_of_the_time(runs_ref, runs_other):
    # (3, 1) and (2, 1): an ensemble-like single outcome per image against several runs
    d = simulate(np.random.default_rng(10 * runs_ref + runs_other), SIMULATIONS, 1000, runs_ref, runs_other)
    p_rate, verdict_rate = called(d, SAMPLES, 7, runs_ref == runs_other == 1)
    margin = 3 * np.sqrt(0.05 * 0.95 / SIMULATIONS)  # three simulation standard errors
    assert p_rate <= 0.05 + margin and verdict_rate <= p_rate
    assert p_rate > 0.05 - 3 * margin  # and not a test that never rejects


@pytest.mark.parametrize("runs_ref", [2, 3])
def test_an_ensemble_of_the_references_own_runs_that_does_not_help_is_rarely_credited(runs_ref):
    # the row's outcome is one of the reference's runs (built from them, no better than one run)
    z = np.random.default_rng(runs_ref).standard_normal((SIMULATIONS, 1, 1000))
    ref = np.random.default_rng(runs_ref + 10).random((SIMULATIONS, runs_ref, 1000)) < expit(MU + SIGMA * z)
    d = ref[:, 0] - ref.mean(axis=1)
    p_rate, verdict_rate = called(d, SAMPLES, 7, False)
    assert p_rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / SIMULATIONS) and verdict_rate <= p_rate


def test_a_three_point_effect_on_2000_images_with_three_seeds_is_found():
    z = np.random.default_rng(0).standard_normal(400_000)
    shift = brentq(lambda s: expit(MU + SIGMA * z + s).mean() - expit(MU + SIGMA * z).mean() + 0.03, -3, 0)
    d = simulate(np.random.default_rng(11), 400, 2000, 3, 3, shift)
    assert d.mean() == pytest.approx(-0.03, abs=0.002)  # the effect is what it says
    _, power = called(d, SAMPLES, 7, False)
    assert power >= 0.9
