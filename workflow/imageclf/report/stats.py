"""How sure is a difference? One paired procedure for every row of the ablation table.

Each row compares an arm (a variant's runs, or one ensemble) with the reference's runs on the same
images. Per image i, d_i = (mean correctness over the arm's runs) - (mean over the reference's
runs); the row's difference is the mean of d_i. Runs of one recipe disagree on an image because of
their seeds, so d_i already carries the seed noise on that image, and images are independent of
one another: resampling or sign-flipping whole images covers the noise of both the images and the
seeds, for any number of seeds (one included), and for an ensemble against single runs alike.

- p-value: a sign-flip permutation test of mean(d) = 0 (exact when both arms have the same
  number of runs and are equal in distribution; a large-sample test otherwise).
- interval: a percentile bootstrap over images, of accuracy, balanced accuracy and macro-F1.
- Holm's step-down correction across the rows of one table.

tests/test_stats.py measures the error rates by simulation (docs/ablation.md gives the figures).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom, norm
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from ..core.metrics import NAMES, resampled, score

CHUNK = 256  # resamples per block: bounds memory at CHUNK x images


def image_differences(correct_ref, correct_other) -> np.ndarray:
    """d_i: the arm's mean correctness on image i minus the reference's, over their runs.
    Inputs: (runs, images) arrays of 0/1 (a 1-D array is one run), the same images in order."""
    ref = np.atleast_2d(np.asarray(correct_ref, dtype=float))
    other = np.atleast_2d(np.asarray(correct_other, dtype=float))
    if ref.shape[1] != other.shape[1]:
        raise ValueError("paired outcomes must cover the same images")
    return other.mean(axis=0) - ref.mean(axis=0)


def sign_flip_p(differences, samples: int, seed: int = 0):
    """Two-sided p-value of mean(d) = 0: each image's d_i keeps or flips its sign at random,
    (1 + resamples at least as extreme) / (1 + samples), so never 0. differences: (images,) or
    (rows, images), one p per row (rows share the random signs; each p is valid on its own)."""
    d = np.asarray(differences, dtype=float)
    rows = np.atleast_2d(d)
    if d.ndim == 1:
        rows = rows[:, d != 0]  # images where the arms agree add nothing either way
    if rows.shape[1] == 0:
        return 1.0
    observed = np.abs(rows.sum(1)) - 1e-9 * rows.shape[1]  # tolerance: float sums of thirds, ...
    rng = np.random.default_rng(seed)
    extreme = np.zeros(len(rows))
    with threadpool_limits(1):  # small blocks: BLAS threads cost more than they give on a busy CPU
        for start in range(0, samples, CHUNK):
            signs = rng.integers(0, 2, (min(CHUNK, samples - start), rows.shape[1])) * 2.0 - 1
            extreme += np.sum(np.abs(rows @ signs.T) >= observed[:, None], axis=1)
    p = (1 + extreme) / (1 + samples)
    return float(p[0]) if d.ndim == 1 else p


def _bootstrap_counts(rng, n_images: int, size: int) -> np.ndarray:
    """(size, n_images): how often each image is drawn in each resample (with replacement)."""
    draws = rng.integers(0, n_images, (size, n_images)) + np.arange(size)[:, None] * n_images
    return np.bincount(draws.ravel(), minlength=size * n_images).reshape(size, n_images).astype(float)


def paired_bootstrap(labels, pred_ref, pred_other, n_classes: int, samples: int, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Differences (arm - reference) of accuracy, balanced accuracy and macro-F1, each with a
    percentile bootstrap interval: each resample draws images with replacement, the same images
    for both arms and for every run. labels: class index per image; pred_*: (runs, images)."""
    labels = np.asarray(labels)
    pred_ref, pred_other = np.atleast_2d(pred_ref), np.atleast_2d(pred_other)
    if not pred_ref.shape[1] == pred_other.shape[1] == len(labels):
        raise ValueError("paired predictions must cover the same images")
    rng = np.random.default_rng(seed)
    diffs = {name: [] for name in NAMES}
    with threadpool_limits(1):
        for start in range(0, samples, CHUNK):
            weights = _bootstrap_counts(rng, len(labels), min(CHUNK, samples - start))
            ref, other = (resampled(weights, labels, p, n_classes) for p in (pred_ref, pred_other))
            for name in NAMES:
                diffs[name].append(other[name] - ref[name])
    ref, other = score(labels, pred_ref, n_classes), score(labels, pred_other, n_classes)
    alpha = (1 - level) / 2
    out = {}
    for name in NAMES:
        low, high = np.quantile(np.concatenate(diffs[name]), [alpha, 1 - alpha])
        out[name] = {"diff": other[name] - ref[name], "ci_low": float(low), "ci_high": float(high)}
    return out


def compare(labels, pred_ref, pred_other, n_classes: int, samples: int, seed: int = 0) -> dict:
    """The row's comparison: paired_bootstrap's differences and intervals, and the sign-flip
    p-value of the accuracy difference ("p")."""
    labels = np.asarray(labels)
    right = [np.atleast_2d(pred) == labels for pred in (pred_ref, pred_other)]
    result = paired_bootstrap(labels, pred_ref, pred_other, n_classes, samples, seed)
    result["p"] = sign_flip_p(image_differences(*right), samples, seed)
    return result


def seed_spread(correct) -> tuple[float, float]:
    """(observed, expected) variance of one recipe's run accuracies over its seeds: the sample
    variance, and what independent per-image disagreement alone predicts, sum of m_i (1 - m_i)
    k / (k - 1) over images / N^2 (unbiased; m_i: the runs' mean on image i). Observed well above
    expected: runs differ as a whole, which the tests over images do not cover. correct: (k >= 2, N)."""
    runs = np.asarray(correct, dtype=float)
    k, n = runs.shape
    m = runs.mean(axis=0)
    return float(runs.mean(axis=1).var(ddof=1)), float(np.sum(m * (1 - m)) * k / (k - 1) / n**2)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    known = np.flatnonzero(~np.isnan(p))
    order = known[np.argsort(p[known], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def wilson(successes, n, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at 0 and n successes, unlike p +- 2 se)."""
    if n == 0:
        return np.nan, np.nan
    z = norm.ppf(1 - (1 - level) / 2)
    phat = successes / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    # exact at the ends: float rounding would put 1 - high a hair above an error rate of 0
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def class_accuracy(labels, correct, classes: list[str], level: float = 0.95):
    """Per class: images, accuracy (mean over runs), its Wilson interval over the class's images,
    and whether it is surely below the accuracy of the other classes' images: a one-sided
    binomial test, Holm-corrected across the classes. correct: (runs, images) of 0/1."""
    labels = np.asarray(labels)
    per_image = np.atleast_2d(np.asarray(correct, dtype=float)).mean(axis=0)  # runs share images
    rows = []
    for name in classes:
        mine = labels == name
        n, hits = int(mine.sum()), float(per_image[mine].sum())
        rest = per_image[~mine].mean() if (~mine).any() else np.nan
        low, high = wilson(hits, n, level)
        # P(this few hits or fewer | the rest's accuracy); hits rounded where runs disagree
        p = float(binom.cdf(round(hits), n, rest)) if n and np.isfinite(rest) else np.nan
        rows.append({"class": name, "images": n, "accuracy": hits / n if n else np.nan,
                     "acc_ci_low": low, "acc_ci_high": high, "others_accuracy": rest, "p_worse": p})
    adjusted = holm([r["p_worse"] for r in rows])
    for row, p in zip(rows, adjusted):
        row["p_worse_holm"] = p
        row["surely_worse"] = bool(p < 1 - level)
    return rows


def verdict(ci_low: float, ci_high: float, p_adjusted: float, alpha: float = 0.05, seed_noise: bool = True) -> str:
    """From the interval and the Holm-adjusted p. seed_noise: False when both arms are one run
    each, where the seeds' noise is only covered as far as it shows image by image."""
    if ci_low > 0 and p_adjusted < alpha:
        word = "better"
    elif ci_high < 0 and p_adjusted < alpha:
        word = "worse"
    else:
        word = None
    if not seed_noise:
        text = f"{word} on these images" if word else "not distinguishable from noise"
        return text + " (one run each: seed noise unmeasured)"
    return f"{word}, beyond noise" if word else "not distinguishable from noise"
