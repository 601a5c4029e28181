"""Confidence intervals of success rates (binomial proportions) for evaluation reports."""

import math

WILSON_Z = 1.959963984540054  # two-sided 95%


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """
    Return the Wilson score interval (low, high) of a binomial proportion.

    (0, 1) for zero trials. Unlike the normal approximation it stays inside [0, 1] and is
    sensible at 0 or ``trials`` successes.
    """
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # Rounding must not push a bound past the observed rate (at 0 or ``trials`` successes).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def mcnemar_exact(lost: int, gained: int) -> float:
    """
    Two-sided exact McNemar p-value of paired pass/fail outcomes.

    ``lost`` pairs passed only under the reference (dense) and ``gained`` only under the other
    configuration; pairs with the same outcome say nothing about the difference. The p-value
    is that of ``min(lost, gained)`` or fewer in a fair binomial over the discordant pairs
    (1.0 without any).
    """
    if lost < 0 or gained < 0:
        raise ValueError(f'pair counts must be >= 0: {lost}, {gained}')
    discordant = lost + gained
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(lost, gained) + 1))
    return min(1.0, 2 * tail / 2**discordant)
