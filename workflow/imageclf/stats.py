"""How sure is a difference in accuracy? Paired bootstrap intervals and McNemar's exact test."""

from __future__ import annotations

from math import comb

import numpy as np


def mcnemar_exact(correct_ref, correct_other) -> dict:
    """Two-sided exact McNemar test on paired right/wrong outcomes of the same images.

    Only discordant pairs count: b = reference right and other wrong, c = the reverse. Under the
    null hypothesis b ~ Binomial(b + c, 1/2).
    """
    ref = np.asarray(correct_ref, dtype=bool)
    other = np.asarray(correct_other, dtype=bool)
    if ref.shape != other.shape:
        raise ValueError("paired outcomes must have the same length")
    b = int(np.sum(ref & ~other))
    c = int(np.sum(~ref & other))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p_value": 1.0}
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return {"b": b, "c": c, "p_value": min(1.0, 2 * tail)}


def paired_bootstrap(correct_ref, correct_other, samples: int, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Accuracy difference (other - reference) with a percentile bootstrap interval.

    Inputs are (seeds, images) arrays of 0/1 outcomes, the same images in the same order (a 1-D
    array is one seed). Each replicate resamples images with replacement and, when there are
    several seeds, the seeds too, so the interval covers both test-set and training noise.
    """
    ref = np.atleast_2d(np.asarray(correct_ref, dtype=float))
    other = np.atleast_2d(np.asarray(correct_other, dtype=float))
    if ref.shape[1] != other.shape[1]:
        raise ValueError("paired outcomes must cover the same images")
    rng = np.random.default_rng(seed)
    n_images = ref.shape[1]
    diffs = np.empty(samples)
    for i in range(samples):
        images = rng.integers(0, n_images, n_images)
        ref_seeds = rng.integers(0, ref.shape[0], ref.shape[0])
        other_seeds = rng.integers(0, other.shape[0], other.shape[0])
        diffs[i] = other[np.ix_(other_seeds, images)].mean() - ref[np.ix_(ref_seeds, images)].mean()
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return {"diff": float(other.mean() - ref.mean()), "ci_low": float(low), "ci_high": float(high)}


def majority_correct(correct) -> np.ndarray:
    """Per image: right in more than half of the seeds (one paired outcome for McNemar)."""
    correct = np.atleast_2d(np.asarray(correct, dtype=float))
    return correct.mean(axis=0) > 0.5


def verdict(ci_low: float, ci_high: float, p_value: float, alpha: float = 0.05, seed_noise: bool = True) -> str:
    """seed_noise: whether the interval covers training noise too (several seeds). With one run of
    each, a difference is only beyond the noise of sampling the images."""
    if not seed_noise:
        if ci_low > 0 and p_value < alpha:
            return "better on these images (one run each: seed noise unmeasured)"
        if ci_high < 0 and p_value < alpha:
            return "worse on these images (one run each: seed noise unmeasured)"
        return "not distinguishable from noise (one run each: seed noise unmeasured)"
    if ci_low > 0 and p_value < alpha:
        return "better, beyond noise"
    if ci_high < 0 and p_value < alpha:
        return "worse, beyond noise"
    return "not distinguishable from noise"
