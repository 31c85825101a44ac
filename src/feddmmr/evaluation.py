"""Ranking evaluation: 1:N sampled candidates (the seed's protocol) or full ranking.

A positive's rank is the number of other candidates scoring at least as high, so score ties
never favour the positive (and a NaN positive ranks last).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from feddmmr.data.split import LeaveOneOut, last_items
from feddmmr.federated.precision import Precision

CUTOFFS = (5, 10, 20)
EVAL_MODES = ("sampled", "full")
EVAL_POSITIONS = 16384  # sequence positions encoded per evaluation batch


def user_metrics(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Each user's HR@k and NDCG@k [users] from the 0-based ranks of their held-out items."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    return {f"HR@{k}": hit.astype(np.float64), f"NDCG@{k}": np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)}


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@K, NDCG@K (K in 5, 10, 20) and MRR from 0-based ranks of the held-out items."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {name: float(values.mean()) for k in CUTOFFS for name, values in user_metrics(ranks, k).items()}
    out["MRR"] = float((1.0 / (ranks + 1.0)).mean())
    return out


def group_metrics(ranks: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, dict]:
    """`metrics_from_ranks` of each group of users (`groups`: name -> [users] mask), with the
    group's number of users (`users`; a group of none has only that)."""
    ranks = np.asarray(ranks)
    return {
        name: {**(metrics_from_ranks(ranks[mask]) if mask.any() else {}), "users": int(mask.sum())}
        for name, mask in groups.items()
    }


def ranks_of_first(scores: torch.Tensor) -> torch.Tensor:
    """0-based rank of column 0 among the columns of `scores` [users, n]."""
    positive = scores[:, :1]
    beats = (scores >= positive) | torch.isnan(positive)
    beats[:, 0] = False
    return beats.sum(1)


@dataclass(frozen=True)
class EvalSet:
    """What one evaluation ranks: input sequences, and either candidates or full-ranking targets."""

    inputs: torch.Tensor  # [users, max_len]
    candidates: torch.Tensor | None  # [users, 1+N] dense ids, held-out first (sampled)
    targets: torch.Tensor  # [users] held-out item
    seen_offsets: np.ndarray  # CSR of items excluded in full ranking (the input history)
    seen_items: np.ndarray


def make_eval_sets(
    split: LeaveOneOut, max_len: int, valid_candidates: np.ndarray, test_candidates: np.ndarray
):
    """Validation input = training items; test input = training items + the validation item."""
    valid = EvalSet(
        inputs=torch.from_numpy(last_items(split.train_offsets, split.train_items, max_len)),
        candidates=torch.from_numpy(valid_candidates),
        targets=torch.from_numpy(split.valid_items),
        seen_offsets=split.train_offsets,
        seen_items=split.train_items,
    )
    with_valid = split.train_offsets + np.arange(split.num_users + 1)
    seen = np.insert(split.train_items, split.train_offsets[1:], split.valid_items)
    test = EvalSet(
        inputs=torch.from_numpy(
            last_items(split.train_offsets, split.train_items, max_len, extra=split.valid_items)
        ),
        candidates=torch.from_numpy(test_candidates),
        targets=torch.from_numpy(split.test_items),
        seen_offsets=with_valid,
        seen_items=seen,
    )
    return valid, test


def evaluate(model: torch.nn.Module, eval_set: EvalSet, mode: str = "sampled", **options) -> dict[str, float]:
    """Ranking metrics of `model` on `eval_set`; `options` as for `held_out_ranks`."""
    return metrics_from_ranks(held_out_ranks(model, eval_set, mode, **options))


@torch.no_grad()
def held_out_ranks(
    model: torch.nn.Module,
    eval_set: EvalSet,
    mode: str = "sampled",
    *,
    batch_size: int | None = None,
    precision: Precision | None = None,
    memory: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """[users] 0-based rank of each user's held-out item. FedDMMR: `memory` = (items, mask), each
    [users, K], the memory slots each user's scores read (FedSASRec: None)."""
    if mode not in EVAL_MODES:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {EVAL_MODES}")
    # Activations grow with users x positions: bound the positions per batch, not the users.
    batch_size = batch_size or max(1, EVAL_POSITIONS // eval_set.inputs.shape[1])
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ranks = []
    for start in range(0, len(eval_set.inputs), batch_size):
        stop = min(start + batch_size, len(eval_set.inputs))
        inputs = eval_set.inputs[start:stop].to(device)
        slots = () if memory is None else tuple(m[start:stop].to(device) for m in memory)
        with precision.autocast() if precision else contextlib.nullcontext():
            if mode == "sampled":
                scores = model.score_last(inputs, eval_set.candidates[start:stop].to(device), *slots).float()
                ranks.append(ranks_of_first(scores).cpu())
            else:
                all_scores = model.score_all_last(inputs, *slots).float()
                ranks.append(_full_ranks(all_scores, eval_set, start, stop).cpu())
    model.train(was_training)
    return torch.cat(ranks).numpy()


@torch.no_grad()
def router_usage(
    model: torch.nn.Module,
    eval_set: EvalSet,
    memory: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int = 1024,
    precision: Precision | None = None,
) -> dict[str, float]:
    """FedDMMR's mean router weight of each modality expert over the sampled candidates of
    `eval_set` (each user reading its memory), keyed by modality name."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(len(model.modalities), dtype=torch.float64)
    count = 0
    for start in range(0, len(eval_set.inputs), batch_size):
        stop = min(start + batch_size, len(eval_set.inputs))
        candidates = eval_set.candidates[start:stop].to(device).unsqueeze(1)  # [B, 1, n]
        with precision.autocast() if precision else contextlib.nullcontext():
            weights, _ = model.experts_and_router(candidates, *(m[start:stop].to(device) for m in memory))
        total += weights.double().sum((0, 1, 2)).cpu()
        count += candidates.numel()
    model.train(was_training)
    return {name: float(w) / max(count, 1) for name, w in zip(model.modalities, total)}


def _full_ranks(all_scores: torch.Tensor, eval_set: EvalSet, start: int, stop: int) -> torch.Tensor:
    """Rank of the target among all items except padding and the user's input history."""
    targets = eval_set.targets[start:stop].to(all_scores.device)
    exclude = torch.zeros_like(all_scores, dtype=torch.bool)
    exclude[:, 0] = True
    lo, hi = eval_set.seen_offsets[start], eval_set.seen_offsets[stop]
    rows = np.repeat(np.arange(stop - start), np.diff(eval_set.seen_offsets[start : stop + 1]))
    exclude[torch.from_numpy(rows), torch.from_numpy(eval_set.seen_items[lo:hi])] = True
    exclude[torch.arange(stop - start), targets] = False
    target_scores = all_scores.gather(1, targets[:, None])
    beats = ((all_scores >= target_scores) | torch.isnan(target_scores)) & ~exclude
    beats[torch.arange(stop - start), targets] = False
    return beats.sum(1)
