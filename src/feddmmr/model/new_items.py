"""Items added after training: a model with the content item tower (`--item-tower content`)
scores them from their features, without retraining.

The catalogue grows at its end (dense ids num_items + 1, ...). A new item's ID part is zero and
unused (it has no training interaction), so its vector is the tower's stand-in fitted from its
features (model/item_tower.py: the fit reads the trained items only, so theirs do not move), the
same path by which the model scored the run's held-out new items (`--cold-items`) in evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from feddmmr.model.feddmmr import FedDMMR
from feddmmr.model.item_tower import ContentItemTower, combined_features
from feddmmr.model.sasrec import ITEM_TABLE, SASRec

if TYPE_CHECKING:  # the features layer sits above the model: read only .matrix and .available
    from feddmmr.features.store import AlignedFeatures


def with_new_items(
    model: SASRec | FedDMMR, new: dict[str, AlignedFeatures], modalities: list[str]
) -> SASRec | FedDMMR:
    """A copy of `model` whose catalogue ends with the items of `new`: for each of the run's
    `modalities`, rows [n + 1, D] (row 0 unused, as padding) for the n new items, in the order
    they get dense ids after the model's; a modality missing from `new` leaves them without it."""
    sasrec = model.backbone
    tower = sasrec.item_tower
    if tower is None:
        raise ValueError(
            "only a model built with item_tower='content' can score items no client trained on "
            "(its item vectors are ID embeddings alone): train with --item-tower content"
        )
    unknown = set(new) - set(modalities)
    if unknown:
        raise ValueError(
            f"new items' modalities {sorted(unknown)} are not the model's ({', '.join(modalities)})"
        )
    counts = {len(f.matrix) - 1 for f in new.values()}
    if len(counts) != 1 or not counts.pop():
        raise ValueError(
            f"new items: give the same number (at least 1) of rows in every modality, got "
            f"{ {name: len(f.matrix) - 1 for name, f in new.items()} }"
        )
    count = len(next(iter(new.values())).matrix) - 1
    dims = {
        name: (getattr(model, f"features_{name}").shape[1] if isinstance(model, FedDMMR) else None)
        for name in modalities
    }
    rows = {}  # each modality's new rows [count, D] (zeros where the file lacks the modality) and availability
    for name in modalities:
        given = new.get(name)
        if given is None:
            if dims[name] is None:
                raise ValueError(
                    f"new items: give a {name} feature file too (this model reads every modality as one)"
                )
            rows[name] = torch.zeros(count, dims[name]), torch.zeros(count, dtype=torch.bool)
            continue
        matrix = torch.from_numpy(given.matrix[1:]).float()
        if dims[name] is not None and matrix.shape[1] != dims[name]:
            raise ValueError(
                f"new items' {name} features have {matrix.shape[1]} dimensions; the model's have {dims[name]}"
            )
        rows[name] = matrix, torch.from_numpy(given.available[1:])
    train_counts = torch.cat([tower.train_counts.cpu(), torch.zeros(count)])
    config = dataclasses.replace(sasrec.config, num_items=sasrec.config.num_items + count)
    if isinstance(model, FedDMMR):
        features = {
            name: torch.cat([getattr(model, f"features_{name}").cpu(), rows[name][0]]) for name in modalities
        }
        available = {
            name: torch.cat([getattr(model, f"available_{name}").cpu(), rows[name][1]]) for name in modalities
        }
        bigger = FedDMMR(dataclasses.replace(model.config, sasrec=config), features, available, train_counts)
        prefix = "sasrec."
    else:
        combined = combined_features([rows[name][0] for name in sorted(modalities)])
        if combined.shape[1] != tower.features.shape[1]:
            raise ValueError(
                f"new items' features have {combined.shape[1]} dimensions in all; the model's have "
                f"{tower.features.shape[1]}"
            )
        bigger = SASRec(config)
        bigger.item_tower = ContentItemTower(torch.cat([tower.features.cpu(), combined]), train_counts)
        prefix = ""
    state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    table = state[f"{prefix}{ITEM_TABLE}"]
    state[f"{prefix}{ITEM_TABLE}"] = torch.cat([table, torch.zeros(count, table.shape[1])])
    state[f"{prefix}item_tower.train_counts"] = train_counts
    bigger.load_state_dict(state)
    device = next(model.parameters()).device
    return bigger.to(device).train(model.training)
