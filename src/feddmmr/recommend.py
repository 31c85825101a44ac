"""Recommendations from a trained model: each user's top k items, in the dataset's own ids.

A user's input is their whole known sequence (training, validation and test items: the next
item after all of them is what a recommendation is for), or a history given by item ids. Padding
and, unless asked otherwise, the items of that input are never recommended. Scores come from
`score_all_last`, the path full-ranking evaluation takes, so a model with the content item tower
ranks new items (`--cold-items`, `BestModel.with_new_items`) beside the trained ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from feddmmr.data.split import last_items

if TYPE_CHECKING:
    from feddmmr.best_model import BestModel


@dataclass(frozen=True)
class Recommendation:
    item: Any  # the dataset's item id
    score: float


def top_items(scores: torch.Tensor, exclude: list[np.ndarray], k: int) -> list[tuple[list[float], list[int]]]:
    """For each row of `scores` [B, num_items + 1]: (scores, dense ids) of its best `k` items, best
    first, never padding (column 0) nor the dense ids `exclude[b]` (fewer when fewer are left)."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    for row, items in enumerate(exclude):
        scores[row, torch.as_tensor(items, dtype=torch.long)] = float("-inf")
    values, ids = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return [
        ([v for v in vs if v != float("-inf")], ids_row[: sum(v != float("-inf") for v in vs)])
        for vs, ids_row in zip(values.tolist(), ids.tolist())
    ]


def dense_items(best: BestModel, items: Sequence) -> np.ndarray:
    """The dense ids of the dataset item ids `items`; an unknown id is an error that names it."""
    index = {str(item): dense for dense, item in enumerate(best.item_ids) if dense}
    unknown = [item for item in items if str(item) not in index]
    if unknown:
        raise ValueError(
            f"history: item id(s) {', '.join(map(str, unknown[:5]))} are not in the run's catalogue "
            f"({len(index)} items, ids as in the data file)"
        )
    return np.array([index[str(item)] for item in items], dtype=np.int64)


def recommend(
    best: BestModel,
    *,
    users: Sequence | None = None,
    history: Sequence | None = None,
    k: int = 10,
    exclude_seen: bool = True,
    batch_size: int = 256,
) -> list[list[Recommendation]]:
    """The top `k` items for each of `users` (the dataset's user ids: their whole sequence is the
    input, and FedDMMR reads their memory), or for one `history` of item ids (a new user: FedDMMR
    reads an empty memory). One list per user, best first."""
    if k < 1:
        raise ValueError(f"recommend: k must be at least 1, got {k}")
    sequences, rows = inputs_of(best, users, history)
    results = []
    for chunk, scores in scored(best, sequences, rows, batch_size):
        exclude = chunk if exclude_seen else [np.empty(0, dtype=np.int64)] * len(chunk)
        results += [
            [Recommendation(best.item_ids[i], v) for v, i in zip(values, ids)]
            for values, ids in top_items(scores, exclude, k)
        ]
    return results


def score(
    best: BestModel, *, users: Sequence | None = None, history: Sequence | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Every item's score as the next one [inputs, num_items + 1] (column j: dense id j, whose
    dataset id is `best.item_ids[j]`; column 0 is padding), for `users` or one `history` as
    `recommend` takes them; the inputs' own items are not masked."""
    sequences, rows = inputs_of(best, users, history)
    return torch.cat([scores for _, scores in scored(best, sequences, rows, batch_size)])


def inputs_of(best: BestModel, users: Sequence | None, history: Sequence | None):
    """(dense-id sequences, their users' rows or None for a history): what the model reads."""
    if (users is None) == (history is None):
        raise ValueError("give users (the data's user ids) or one history (item ids), not both")
    if history is not None:
        if not len(history):
            raise ValueError("the history is empty; give at least one item id")
        return [dense_items(best, history)], None
    if best.split is None:
        raise ValueError(
            "a checkpoint alone holds no users; give a history of item ids, or load the run "
            "directory (feddmmr.load(RUN_DIR)) to recommend for its users"
        )
    data = best.split.data
    index = {str(user): row for row, user in enumerate(data.user_ids)}
    unknown = [user for user in users if str(user) not in index]
    if unknown:
        raise ValueError(
            f"user id(s) {', '.join(map(str, unknown[:5]))} are not among the run's "
            f"{len(index)} users (such as {', '.join(map(str, data.user_ids[:3]))}); give their "
            f"history instead"
        )
    rows = np.array([index[str(user)] for user in users], dtype=np.int64)
    return [data.sequence(row) for row in rows], rows


def scored(best: BestModel, sequences: list[np.ndarray], rows: np.ndarray | None, batch_size: int):
    """(a batch of the sequences, every item's score after each [batch, num_items + 1]), batch by
    batch: `score_all_last`, full-ranking evaluation's path, on left-padded inputs."""
    model = best.model
    device = next(model.parameters()).device
    length = model.backbone.config.max_seq_len
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                chunk = sequences[start : start + batch_size]
                offsets = np.concatenate([[0], np.cumsum([len(sequence) for sequence in chunk])])
                inputs = torch.from_numpy(last_items(offsets, np.concatenate(chunk), length))
                slots = _memory_slots(
                    best, None if rows is None else rows[start : start + batch_size], len(chunk)
                )
                with best.precision.autocast():
                    yield chunk, model.score_all_last(inputs.to(device), *slots).cpu()
    finally:
        model.train(was_training)


def _memory_slots(best: BestModel, rows: np.ndarray | None, count: int) -> tuple[torch.Tensor, ...]:
    """FedDMMR's memory slots for the users `rows` (None: `count` new users, with empty memories);
    () for FedSASRec."""
    if best.memory_slots is None:
        return ()
    items, mask = best.memory_slots
    device = next(best.model.parameters()).device
    if rows is None:
        return (
            torch.zeros(count, items.shape[1], dtype=items.dtype, device=device),
            torch.zeros(count, mask.shape[1], dtype=torch.bool, device=device),
        )
    index = torch.from_numpy(rows)
    return items[index].to(device), mask[index].to(device)
