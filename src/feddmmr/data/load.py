"""From a config's data settings to sequences: a user's files, or the built-in synthetic set."""

from __future__ import annotations

import logging

from feddmmr.data.dataset import build_sequences
from feddmmr.data.readers import load_interactions
from feddmmr.data.synthetic import make_synthetic
from feddmmr.data.types import SequenceData

log = logging.getLogger(__name__)


def load_sequences(
    data_dir: str | None, *, format: str | None = None, top_users: int | None = None, min_length: int = 3
) -> SequenceData:
    if data_dir is None:
        if format is not None:
            raise ValueError("--format needs --data-dir")
        interactions = make_synthetic()
    else:
        interactions = load_interactions(data_dir, format)
    return build_sequences(interactions, min_length=min_length, top_users=top_users)
