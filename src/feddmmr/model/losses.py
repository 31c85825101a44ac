"""Next-item losses over [positive, N negatives] scores; padding positions masked.

The negatives are sampled per target (`ce`, `bpr`, `gbce`), shared by every target of a local
step (`--negatives shared`), or the whole catalogue (`ce-full`: the softmax over all items of
SASRec+, Klenitskiy & Vasilev 2023). `gbce` is gSASRec's generalised binary cross-entropy
(Petrov & Macdonald 2023): BCE over the positive and each negative, with the positive's
log-probability weighted by `gbce_beta`, which undoes the overconfidence negative sampling
teaches. Shared and full negatives are scored as one matrix product
(`SASRec.score_shared`); where one of them is the position's own target its score is
`MASKED_SCORE`, so it is no negative there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("ce", "bpr", "ce-full", "gbce")
# The score of a shared negative that is the position's target: it adds nothing to a softmax or
# to BPR. Finite, not -inf, so that no gradient of it is ever NaN.
MASKED_SCORE = -1e9


def every_item(item_table: torch.Tensor) -> torch.Tensor:
    """The ids of every item of an embedding table (row 0 is padding): ce-full's negatives."""
    return torch.arange(1, item_table.shape[0], device=item_table.device)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gBCE's weight of the positive's log-probability: beta = alpha (t (1 - 1/alpha) + 1/alpha),
    alpha = num_negatives / (num_items - 1) the negative sampling rate, t in [0, 1] the calibration
    (t = 0: plain BCE, beta 1; t = 1: beta = alpha, probabilities calibrated to the catalogue)."""
    alpha = min(num_negatives, num_items - 1) / (num_items - 1)
    return alpha * (t * (1 - 1 / alpha) + 1 / alpha)


def next_item_loss(
    scores: torch.Tensor, valid: torch.Tensor, kind: str = "ce", beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target losses summed over valid targets, and the count of valid targets.

    `scores` [..., 1+N] has the positive in column 0; `valid` [...] marks real targets; `beta`:
    gBCE's weight of the positive (`gbce_beta`).
    """
    per_target = per_target_loss(scores, kind, beta)
    weight = valid.to(per_target.dtype)
    return (per_target * weight).sum(), weight.sum()


def per_target_loss(scores: torch.Tensor, kind: str = "ce", beta: float = 1.0) -> torch.Tensor:
    """The next-item loss of every target [...] from its scores [..., 1+N] (positive first)."""
    if kind in ("ce", "ce-full"):
        return torch.logsumexp(scores, dim=-1) - scores[..., 0]
    if kind == "bpr":
        return -F.logsigmoid(scores[..., :1] - scores[..., 1:]).mean(-1)
    if kind == "gbce":  # a masked negative (MASKED_SCORE) adds log sigmoid(1e9) = 0
        return -beta * F.logsigmoid(scores[..., 0]) - F.logsigmoid(-scores[..., 1:]).sum(-1)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


@dataclass(frozen=True)
class AuxiliaryWeights:
    """FedDMMR's auxiliary losses, added to the next-item loss with these weights."""

    load_balance: float = 0.01
    alignment: float = 0.0
    contrastive: float = 0.0
    temperature: float = 0.07  # of the contrastive loss


@dataclass(frozen=True)
class Objective:
    """What a local step minimises: the next-item loss `kind` (`LOSSES`), gBCE's weight of the
    positive, and FedDMMR's auxiliary weights (FedSASRec has none)."""

    kind: str = "ce"
    gbce_beta: float = 1.0
    auxiliary: AuxiliaryWeights = AuxiliaryWeights()


@dataclass(frozen=True)
class TrainBatch:
    """One local step's windows, as every model's `loss` reads them."""

    inputs: torch.Tensor  # [B, L] item ids
    # [B, L, 1+N]: each position's target first (0: padding), then its negatives; [B, L, 1] with `shared`
    candidates: torch.Tensor
    shared: torch.Tensor | None = None  # [N]: negatives shared by the step's targets, or every item (ce-full)
    memory: tuple[
        torch.Tensor, ...
    ] = ()  # FedDMMR: the client's memory slots (items, mask); () for FedSASRec


@dataclass(frozen=True)
class ScoreParts:
    """What FedDMMR's training losses need besides its scores (`FedDMMR.forward(with_aux=True)`),
    at the positions the modality side trains on: every position, or held out the last one only
    ([B, 1, ...])."""

    fused_positive: torch.Tensor  # [B, P, d]: the fused vector of the column-0 candidate (the target)
    positive_embedding: torch.Tensor  # [B, P, d]: that candidate's item embedding
    held_out: bool = False  # the side covers the window's last position only (--modality-objective holdout*)
    router_weights: torch.Tensor | None = None  # [B, P, n, M], when the experts are used
    expert_positive: torch.Tensor | None = None  # [B, P, M, d]: the target's normalised expert outputs
    held_out_scores: torch.Tensor | None = (
        None  # [B, 1, n]: holdout-backbone's side scores of the last position
    )


def feddmmr_loss(
    scores: torch.Tensor,
    parts: ScoreParts,
    candidates: torch.Tensor,
    kind: str,
    weights: AuxiliaryWeights,
    beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training objective, next-item loss), both means over the valid targets of one step.

    scores [B, L, 1+N]; candidates [B, L, 1+N] (target first, 0 = padding); `parts` from
    `FedDMMR.forward(with_aux=True)`. With i a valid target and E the item embedding:
    - next-item: mean_i loss_i (softmax CE over positive + negatives, or BPR);
    - load balance: sum_m (mean over valid candidates of w_m - 1/M)^2;
    - alignment: mean_i (1 - cos(fused_i, stopgrad E[pos_i])) * (1 + 0.5 sigmoid(loss_i)), the
      drift-adaptive weight (detached): targets the model finds surprising weigh more;
    - contrastive: symmetric InfoNCE between the target's first two expert outputs, the other
      targets of the same window as negatives, per-target weight 1 + 0.5 sigmoid(loss_i);
    - with `parts.held_out_scores` (holdout-backbone): the last targets' loss on those scores,
      summed and divided by the same count, so that each of them weighs as one more target;
    The auxiliary terms cover the side's positions: all of them, or held out (`parts.held_out`)
    the last one only, as means over its valid targets.
    """
    valid = candidates[..., 0] > 0
    mask = valid.to(scores.dtype)
    count = mask.sum().clamp(min=1)
    per_target = per_target_loss(scores, kind, beta)
    main = (per_target * mask).sum() / count
    total = main
    # The positions the auxiliary terms see: every one, or held out the last one only. Their
    # surprise weights come from those targets' losses: on the held-out scores when there are some.
    first = scores.shape[1] - 1 if parts.held_out else 0
    side_loss = per_target[:, first:]
    held_out = parts.held_out_scores
    if held_out is not None:
        side_loss = per_target_loss(held_out.float(), kind, beta)
        total = total + (side_loss * mask[:, -1:]).sum() / count
    side_candidates, side_valid, side_mask = candidates[:, first:], valid[:, first:], mask[:, first:]
    side_count = side_mask.sum().clamp(min=1)
    surprise = 1 + 0.5 * torch.sigmoid(side_loss.detach())
    router = parts.router_weights
    if weights.load_balance and router is not None:
        live = (
            ((side_candidates > 0) & side_valid.unsqueeze(-1)).to(router.dtype).unsqueeze(-1)
        )  # [B, L, n, 1]
        live = live.expand(*router.shape[:-1], 1)  # with shared negatives `candidates` holds the targets only
        mean_weight = (router * live).sum((0, 1, 2)) / live.sum().clamp(min=1)
        total = total + weights.load_balance * ((mean_weight - 1 / router.shape[-1]) ** 2).sum()
    if weights.alignment:
        target = parts.positive_embedding.detach()
        cosine = F.cosine_similarity(parts.fused_positive.float(), target.float(), dim=-1, eps=1e-8)
        total = total + weights.alignment * ((1 - cosine) * surprise * side_mask).sum() / side_count
    experts = parts.expert_positive
    if weights.contrastive and experts is not None and experts.shape[-2] >= 2:
        a = F.normalize(experts[..., 0, :].float(), dim=-1)  # [B, L, d]
        b = F.normalize(experts[..., 1, :].float(), dim=-1)
        logits = (a @ b.transpose(1, 2)) / weights.temperature  # [B, L, L]: targets of one window
        keys = side_valid.unsqueeze(1)
        diagonal = torch.diagonal(logits, dim1=1, dim2=2)
        # A large finite fill, not -inf: a window without targets would give NaN gradients.
        a_to_b = torch.logsumexp(logits.masked_fill(~keys, -1e9), dim=-1) - diagonal
        b_to_a = torch.logsumexp(logits.transpose(1, 2).masked_fill(~keys, -1e9), dim=-1) - diagonal
        infonce = torch.where(side_valid, (a_to_b + b_to_a) / 2, 0.0)
        total = total + weights.contrastive * (infonce * surprise * side_mask).sum() / side_count
    return total, main
