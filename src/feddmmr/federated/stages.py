"""Staged training: which parameters a stage trains; the others are frozen in every client.

- stage 1: the ID-only backbone (SASRec's parameters; FedDMMR scores without its experts);
- stage 2: the modality projections, experts, router and gate, with the backbone frozen;
- stage 3: everything except the item embedding;
- no stage: everything.
"""

from __future__ import annotations

import torch

from feddmmr.model.sasrec import ITEM_TABLE

STAGES = (1, 2, 3)


def is_backbone(model: torch.nn.Module, name: str) -> bool:
    """SASRec's own parameters: all of a FedSASRec model, FedDMMR's `sasrec.` submodule."""
    return name.startswith(model.backbone_prefix)


def frozen_parameters(model: torch.nn.Module, stage: int | None) -> frozenset[str]:
    """Names of the parameters that `stage` must leave exactly as they are."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES} or None, got {stage}")
    names = [name for name, _ in model.named_parameters()]
    if stage == 1:
        return frozenset(n for n in names if not is_backbone(model, n))
    if stage == 2:
        return frozenset(n for n in names if is_backbone(model, n))
    if stage == 3:
        return frozenset(n for n in names if n.endswith(ITEM_TABLE))
    return frozenset()
