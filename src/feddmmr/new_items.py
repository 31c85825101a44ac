"""Items added after training: a FedDMMR model with the content item tower (`--item-tower
content`) scores them from their features, without retraining.

The catalogue grows at its end (dense ids num_items + 1, ...). A new item's ID part is zero and
unused (it has no training interaction), so its vector is the tower's stand-in fitted from its
features (model/item_tower.py: the fit reads the trained items only, so theirs do not move), the
same path by which the model scored the run's held-out new items (`--cold-items`) in evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from feddmmr.features.store import AlignedFeatures
from feddmmr.model.feddmmr import FedDMMR
from feddmmr.model.sasrec import ITEM_TABLE


def with_new_items(model: FedDMMR, new: dict[str, AlignedFeatures]) -> FedDMMR:
    """A copy of `model` whose catalogue ends with the items of `new`: for each of the model's
    modalities, rows [n + 1, D] (row 0 unused, as padding) for the n new items, in the order
    they get dense ids after the model's; a modality missing from `new` leaves them without it."""
    tower = model.sasrec.item_tower
    if tower is None:
        raise ValueError("only a model built with item_tower='content' can score items no client trained on "
                         "(its item vectors are ID embeddings alone): train with --item-tower content")
    unknown = set(new) - set(model.modalities)
    if unknown:
        raise ValueError(f"new items' modalities {sorted(unknown)} are not the model's ({', '.join(model.modalities)})")
    counts = {len(f.matrix) - 1 for f in new.values()}
    if len(counts) != 1 or not counts.pop():
        raise ValueError(f"new items: give the same number (at least 1) of rows in every modality, got "
                         f"{ {name: len(f.matrix) - 1 for name, f in new.items()} }")
    count = len(next(iter(new.values())).matrix) - 1
    features, available = {}, {}
    for name in model.modalities:
        table, usable = getattr(model, f"features_{name}"), getattr(model, f"available_{name}")
        rows = new.get(name)
        extra = (torch.zeros(count, table.shape[1]) if rows is None else torch.from_numpy(rows.matrix[1:]))
        if extra.shape[1] != table.shape[1]:
            raise ValueError(f"new items' {name} features have {extra.shape[1]} dimensions; the model's have "
                             f"{table.shape[1]}")
        features[name] = torch.cat([table.cpu(), extra.float()])
        available[name] = torch.cat([usable.cpu(), torch.zeros(count, dtype=torch.bool) if rows is None
                                     else torch.from_numpy(rows.available[1:])])
    counts = torch.cat([tower.train_counts.cpu(), torch.zeros(count)])
    sasrec = dataclasses.replace(model.config.sasrec, num_items=model.config.sasrec.num_items + count)
    bigger = FedDMMR(dataclasses.replace(model.config, sasrec=sasrec), features, available, counts)
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    table_name = f"sasrec.{ITEM_TABLE}"
    state[table_name] = torch.cat([state[table_name], torch.zeros(count, state[table_name].shape[1])])
    state["sasrec.item_tower.train_counts"] = counts
    bigger.load_state_dict(state)
    bigger.use_mixture = model.use_mixture
    device = next(model.parameters()).device
    return bigger.to(device).train(model.training)


def aligned_rows(new_ids: np.ndarray, feature: AlignedFeatures) -> AlignedFeatures:
    """`feature` (aligned to a catalogue that ends with `new_ids`) cut to the new items' rows."""
    start = len(feature.matrix) - len(new_ids)
    keep = np.concatenate([[0], np.arange(start, len(feature.matrix))])
    return dataclasses.replace(feature, matrix=feature.matrix[keep], available=feature.available[keep],
                               num_missing=int((~feature.available[start:]).sum()))
