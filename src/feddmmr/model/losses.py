"""Next-item losses over [positive, N sampled negatives] scores; padding positions masked."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bpr")


def next_item_loss(scores: torch.Tensor, valid: torch.Tensor, kind: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target losses summed over valid targets, and the count of valid targets.

    `scores` [..., 1+N] has the positive in column 0; `valid` [...] marks real targets.
    """
    if kind == "ce":
        per_target = torch.logsumexp(scores, dim=-1) - scores[..., 0]
    elif kind == "bpr":
        per_target = -F.logsigmoid(scores[..., :1] - scores[..., 1:]).mean(-1)
    else:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    weight = valid.to(per_target.dtype)
    return (per_target * weight).sum(), weight.sum()
