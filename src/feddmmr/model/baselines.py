"""The obvious recommenders a learned one must beat, scored through the same evaluation
(`evaluation.held_out_ranks`): they answer "is the model better than the simple thing?".

- `Popularity`: an item's number of training interactions (a new item has none).
- `ContentNeighbours`: the candidate's highest feature cosine with the user's last `recent`
  items; needs no training, so it scores new items as well as trained ones.

Both take the evaluation's inputs (left-padded item ids [users, L]) and ignore memory slots.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Popularity(nn.Module):
    def __init__(self, train_counts: np.ndarray) -> None:
        """`train_counts` [num_items + 1]: each item's training interactions (`LeaveOneOut.train_counts`)."""
        super().__init__()
        counts = train_counts.astype(np.float32)
        counts[0] = -1.0  # padding below every item
        # A frozen parameter, not a buffer: evaluation finds the model's device by its parameters.
        self.counts = nn.Parameter(torch.from_numpy(counts), requires_grad=False)

    def score_last(self, sequences: torch.Tensor, candidates: torch.Tensor, *_memory) -> torch.Tensor:
        return self.counts[candidates]

    def score_all_last(self, sequences: torch.Tensor, *_memory) -> torch.Tensor:
        return self.counts.expand(sequences.shape[0], -1)


class ContentNeighbours(nn.Module):
    def __init__(self, features: np.ndarray, recent: int = 1) -> None:
        """`features` [num_items + 1, D] (row 0 padding; all-zero rows: items without a feature)."""
        super().__init__()
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")
        self.features = nn.Parameter(
            F.normalize(torch.from_numpy(features).float(), dim=-1), requires_grad=False
        )
        self.recent = recent

    def score_all_last(self, sequences: torch.Tensor, *_memory) -> torch.Tensor:
        history = sequences[:, -self.recent :]  # [B, k], the most recent last; 0 = padding
        cosines = self.features[history] @ self.features.T  # [B, k, items]
        cosines = cosines.masked_fill((history == 0).unsqueeze(-1), float("-inf")).amax(1)
        return torch.where(torch.isfinite(cosines), cosines, torch.zeros_like(cosines))

    def score_last(self, sequences: torch.Tensor, candidates: torch.Tensor, *_memory) -> torch.Tensor:
        return self.score_all_last(sequences).gather(1, candidates)
