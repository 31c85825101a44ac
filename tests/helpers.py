"""Small hand-made datasets for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feddmmr.data.types import SequenceData

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The default recipe trains against 256 shared negatives, more than the tests' 150-item catalogue
# leaves unread; tiny runs keep short_history's 4 negatives of their own for each target.
TINY_NEGATIVES = dict(negatives="per-target", num_negatives=4)
# The tiny runs' model, batches and evaluation (each test module adds its own rates and rounds).
TINY_MODEL = dict(
    max_seq_len=10,
    **TINY_NEGATIVES,
    hidden_dim=16,
    num_heads=2,
    num_blocks=1,
    batch_size=4,
    num_negatives_eval=20,
)
TINY_NEGATIVE_FLAGS = ["--negatives", "per-target", "--num-negatives", "4"]
# The command line's tiny run: its model, negatives, evaluation and half the clients a round.
TINY_FLAGS = [
    "--max-seq-len",
    "10",
    *TINY_NEGATIVE_FLAGS,
    "--hidden-dim",
    "16",
    "--num-heads",
    "2",
    "--num-blocks",
    "1",
    "--num-negatives-eval",
    "20",
    "--client-fraction",
    "0.5",
]


def make_sequences(rows: list[list[int]], num_items: int | None = None) -> SequenceData:
    """SequenceData from dense-id rows (user u = rows[u]); items 1..num_items."""
    num_items = num_items or max(max(r) for r in rows)
    lengths = [len(r) for r in rows]
    return SequenceData(
        user_ids=np.arange(100, 100 + len(rows)),
        item_ids=np.arange(0, num_items + 1) * 10,  # original id of dense i is 10*i
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]),
        source="test",
    )


def random_sequences(
    num_users: int, num_items: int, min_len: int, max_len: int, seed: int = 0
) -> SequenceData:
    rng = np.random.default_rng(seed)
    rows = [
        list(rng.choice(np.arange(1, num_items + 1), size=rng.integers(min_len, max_len + 1), replace=False))
        for _ in range(num_users)
    ]
    return make_sequences(rows, num_items)
