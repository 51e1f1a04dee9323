"""How well a reward orders states as a ground truth does: the figures the reward reports print.

- `epic_distance`: the paper's measure of reward quality, sqrt((1 - ρ) / 2) with ρ Pearson's correlation
  between the reward and the labels (for a reward of the reached state alone, EPIC's canonicalisation only
  subtracts a constant). 0: the reward is an affine function of the labels; 0.71: uncorrelated; 1: reversed.
- `auc`: the chance that a goal state is rewarded above a non-goal one (ties count half).
- `spearman`: rank correlation with a graded ground truth.
"""

import numpy as np


def spearman(a, b) -> float:
    """Spearman rank correlation (ties get their average rank)."""

    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        plain = np.empty(len(x))
        plain[order] = np.arange(len(x))
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        return (np.bincount(inverse, weights=plain) / counts)[inverse]

    ra, rb = ranks(a), ranks(b)
    if np.array_equal(ra, rb):  # the same order (also when all rewards tie)
        return 1.0
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(scores, flags) -> float:
    """The chance that a state with the flag scores above one without it (ties count half): 1 orders them
    perfectly, 0.5 is chance, 0 reversed. NaN when either side has no states."""
    scores, flags = np.asarray(scores, dtype=np.float64), np.asarray(flags, dtype=bool)
    if flags.all() or not flags.any():
        return float("nan")
    outside = np.sort(scores[~flags])
    below = np.searchsorted(outside, scores[flags], side="left")
    not_above = np.searchsorted(outside, scores[flags], side="right")
    return float((below + not_above).sum() / 2 / (flags.sum() * len(outside)))


def pearson(a, b) -> float:
    """Pearson's correlation; NaN when either side is constant (nothing to correlate)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def epic_distance(rewards, labels) -> float:
    """sqrt((1 - ρ) / 2), ρ Pearson's correlation of the rewards with the labels (paper, section 4.4); NaN when
    either is constant (a constant reward is not a perfect one)."""
    rho = pearson(rewards, labels)
    return rho if np.isnan(rho) else float(np.sqrt((1.0 - min(rho, 1.0)) / 2))
