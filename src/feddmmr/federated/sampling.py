"""Which clients take part in a round: a uniform sample without replacement, from (seed, round)."""

from __future__ import annotations

import numpy as np

from feddmmr import streams


def sample_clients(eligible: np.ndarray, fraction: float, seed: int, round_number: int) -> np.ndarray:
    """Sorted sample of max(1, round(fraction * len(eligible))) clients from `eligible`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"client_fraction must be in (0, 1], got {fraction}")
    if len(eligible) == 0:
        raise ValueError("no client has training data (every user has fewer than 4 items?)")
    count = max(1, int(round(fraction * len(eligible))))
    rng = np.random.default_rng([seed, streams.CLIENT_SAMPLING, round_number])
    return np.sort(rng.choice(eligible, size=count, replace=False))
