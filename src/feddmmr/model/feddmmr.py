"""FedDMMR: SASRec plus modality experts that read the user's memory, fused by a router.

For each candidate c of a user with retrieved memory slots M (K item ids, empty slots masked):
- sequence expert: h, SASRec's hidden state at the position;
- one expert per modality m: attention with query P_m(F_m[c]) (the candidate's projected
  feature; its ID embedding when the feature is unavailable) over keys/values P_m(F_m[M]), then
  Linear -> LayerNorm -> ReLU -> Dropout; a memory slot holding the candidate itself is masked
  (otherwise training learns "in memory => positive", which never holds for a held-out item);
- router: MLP over the candidate's projected features -> softmax weights over the modality
  experts, unavailable modalities masked (or, `learned_router=False`, equal weights over the
  available ones: the "no router" ablation);
- fusion: fused = h + g * sum_m w_m LN(o_m), g a learnable scalar;
- score: <fused, E[c]>;
- optional content match (`content_history=k` > 0, not in the seed's design): the score also gets
  sqrt(d) * sum_m mu_m * max_j cos(F_m[c], F_m[x_j]) over the user's last k items x_j (those the
  sequence expert reads up to the position), mu_m learnable (init `gate_init`). The experts cannot
  carry this signal: their softmax over the slots keeps only the candidate's relative similarity
  to each slot, and their LayerNorms drop the output's size (measured with
  benchmarks/content_signal.py: docs/notebook/2026-12-06-benchmarks.md). It reads the sequence, not the memory: during
  local training the memory holds the positives of the windows drawn so far, in random window
  order, not the items just before the position;
- optional held-out training (`holdout_content=True`, not in the seed's design), stacking: the
  last target of every training window trains only the modality side (projections, experts,
  router, g, mu) on top of the backbone's score, and every other target trains only the ID
  backbone (SASRec) on its own score. The backbone fits its training targets, so on them the
  modality side's best weight is about zero (trained on them, g and mu fall); on targets the
  backbone never fits it learns what it adds to a held-out item, the case that the validation
  and test ask about. The backbone learns on its own score, not on its score plus the modality
  side's: learning the residual left it weaker by what the modality side added
  (docs/notebook/2026-12-06-benchmarks.md). Scoring (evaluation) is unchanged: backbone + modality side.
  With `holdout_backbone=True` the backbone also trains on those last targets (on its own score,
  so it misses none of its training targets, the user's most recent one included), and they
  train the modality side a second time, on the backbone's detached score plus its own.
With no modality the model is SASRec exactly: fused = h.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feddmmr.model.item_tower import content_tower
from feddmmr.model.losses import MASKED_SCORE, Objective, ScoreParts, TrainBatch, feddmmr_loss
from feddmmr.model.sasrec import SASRec, SASRecConfig, dropout


@dataclass(frozen=True)
class FedDMMRConfig:
    sasrec: SASRecConfig
    router_hidden: tuple[int, int] = (128, 64)
    gate_init: float = 0.1
    learned_router: bool = True
    content_history: int = 0
    holdout_content: bool = False
    holdout_backbone: bool = False
    item_tower: str = "id"  # or "content": untrained items' vectors from their features (model/item_tower.py)
    # False: score as SASRec even with modalities (stage 1 trains the ID-only backbone).
    mixture: bool = True


def _weighted_sum(weights: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """sum_m w_m o_m [B, L, n, d] from weights [B, L, n, M] and the M outputs [B, L, n, d]."""
    if len(outputs) == 1:
        return outputs[0]  # one expert's router weight is 1 (see `_route`): skip a pass over every candidate
    total = weights[..., 0, None] * outputs[0]
    for m in range(1, len(outputs)):
        total = total + weights[..., m, None] * outputs[m]
    return total


def _with_shared(candidates: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
    """[B, P, 1] targets followed by the `shared` [N] items: [B, P, 1+N] (unchanged without)."""
    return (
        candidates
        if shared is None
        else torch.cat([candidates, shared.expand(*candidates.shape[:-1], -1)], -1)
    )


def _masked(scores: torch.Tensor, hits: torch.Tensor | None) -> torch.Tensor:
    """`scores` with each position's own target among the shared items set to `MASKED_SCORE`."""
    return scores if hits is None else scores.masked_fill(hits, MASKED_SCORE)


def recent_items(sequences: torch.Tensor, k: int) -> torch.Tensor:
    """[B, L, k]: the items at positions t-k+1..t of `sequences` [B, L] for every t (0 before the start)."""
    length = sequences.shape[-1]
    index = torch.arange(length, device=sequences.device)[:, None] + torch.arange(k, device=sequences.device)
    return F.pad(sequences, (k - 1, 0))[:, index]


def _content_match(
    features: torch.Tensor, history_features: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """max_j cos(F[c], F[x_j]) [B, L, n] of the candidates' features [B, L, n, D] with their
    position's history [B, L, k, D] over the `allowed` [B, L, k] items; 0 for a candidate with no
    feature or a position with no usable item. Features are unit rows (zero where unavailable)."""
    cosines = torch.einsum("blnf,blkf->blnk", features, history_features)
    best = cosines.masked_fill(~allowed[:, :, None, :], float("-inf")).amax(-1)
    return torch.where(torch.isfinite(best), best, torch.zeros_like(best))


class ModalityExpert(nn.Module):
    """Attention of each candidate's query over the memory, then a small feed-forward."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-8)
        self.dropout = dropout

    def forward(
        self,
        features: torch.Tensor,
        available: torch.Tensor,
        projection: nn.Linear,
        fallback: torch.Tensor,
        memory: torch.Tensor,
        allowed: torch.Tensor,
    ) -> torch.Tensor:
        """The expert's output [B, L, n, d] for the candidates' queries: projection(features)
        [B, L, n, D] where `available` [B, L, n], else `fallback` [B, L, n, d] (their ID
        embeddings); memory [B, K, d]; allowed [B, L, n, K]."""
        # Every linear map on the candidates' side is folded into the K memory slots instead of
        # being applied to each of the n*L candidates of a window (K is ~20):
        # query(x).k = x.(k Wq) + bq.k, projection(f).y = f.(y P) + bP.y and
        # out(A v) = A (v Wo^T) + bo. Same function, a fraction of the work: projecting each
        # candidate's D-dim feature to d was the experts' largest cost.
        k, v = self.key(memory), self.value(memory)  # [B, K, d]
        keys = k @ self.query.weight  # [B, K, d]
        key_bias = k @ self.query.bias  # [B, K]
        feature_keys = keys @ projection.weight  # [B, K, D]
        feature_bias = keys @ projection.bias  # [B, K]
        # Matrix products, not broadcast products: a [B, L, n, K, d] intermediate would not fit
        # in memory for a client's batch of full-length windows.
        # Both kinds of query are scored and then selected: the vectorised engine's vmap allows
        # no branch on which candidates have a feature.
        by_feature = torch.einsum("blnf,bkf->blnk", features, feature_keys) + feature_bias[:, None, None, :]
        by_id = torch.einsum("blnd,bkd->blnk", fallback, keys)
        scores = torch.where(available.unsqueeze(-1), by_feature, by_id) + key_bias[:, None, None, :]
        scores = scores.masked_fill(~allowed, float("-inf")) / math.sqrt(keys.shape[-1])  # [B, L, n, K]
        # A candidate with no usable slot attends to nothing: its output is zero, not NaN.
        weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        values = F.linear(v, self.out.weight)  # [B, K, d]
        out = torch.einsum("blnk,bkd->blnd", weights, values) + self.out.bias
        return dropout(F.relu(self.norm(out)), self.dropout, self.training)


class FedDMMR(nn.Module):
    def __init__(
        self,
        config: FedDMMRConfig,
        features: dict[str, torch.Tensor],
        available: dict[str, torch.Tensor],
        train_counts: torch.Tensor | None = None,
    ) -> None:
        """`train_counts` [num_items + 1] (with item_tower="content"): each item's number of
        training interactions; the items with none get their vectors from their features."""
        super().__init__()
        self.config = config
        self.sasrec = SASRec(config.sasrec)
        if config.item_tower == "content":
            self.sasrec.item_tower = content_tower(features, train_counts)
        elif config.item_tower != "id":
            raise ValueError(f"item_tower {config.item_tower!r}; expected 'id' or 'content'")
        dim = config.sasrec.hidden_dim
        self.modalities = sorted(features)
        for name in self.modalities:
            rows = features[name].shape[0]
            if rows != config.sasrec.num_items + 1:
                raise ValueError(
                    f"modality {name}: {rows} feature rows for {config.sasrec.num_items} items (+1 padding)"
                )
            # Frozen inputs, not parameters: never trained, aggregated or checkpointed.
            self.register_buffer(f"features_{name}", features[name].float(), persistent=False)
            self.register_buffer(f"available_{name}", available[name].bool(), persistent=False)
        self.projections = nn.ModuleDict({m: nn.Linear(features[m].shape[1], dim) for m in self.modalities})
        self.experts = nn.ModuleDict({m: ModalityExpert(dim, config.sasrec.dropout) for m in self.modalities})
        self.expert_norms = nn.ModuleDict({m: nn.LayerNorm(dim, eps=1e-8) for m in self.modalities})
        if not self.modalities:
            return  # ID-only: exactly SASRec
        self.gate = nn.Parameter(torch.tensor(config.gate_init))
        if config.content_history:
            self.match_weights = nn.Parameter(torch.full((len(self.modalities),), config.gate_init))
        if not config.learned_router:
            return
        h1, h2 = config.router_hidden
        self.router = nn.Sequential(
            nn.Linear(dim * len(self.modalities), h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, len(self.modalities)),
        )

    def scalars(self) -> dict:
        """The learned scalars of the fusion, for the run's diagnostics: the gate g and, with
        `content_history`, each modality's match weight mu_m."""
        out = {"gate": float(self.gate.detach())}
        if self.config.content_history:
            out["match_weights"] = {
                name: float(w) for name, w in zip(self.modalities, self.match_weights.detach())
            }
        return out

    backbone_prefix = "sasrec."  # the backbone's parameter names (model/sasrec.py)

    @property
    def backbone(self) -> SASRec:
        """The SASRec that encodes sequences and holds the item table."""
        return self.sasrec

    def model_args(self) -> dict:
        """The arguments that rebuild the model (with its modality feature files)."""
        return {
            "model": "feddmmr",
            "feddmmr": dataclasses.asdict(self.config),
            "modalities": list(self.modalities),
        }

    @property
    def mixes(self) -> bool:
        """Whether scores use the modality experts (there are modalities and the config's mixture is on)."""
        return bool(self.modalities) and self.config.mixture

    def experts_and_router(
        self, candidates: torch.Tensor, memory_items: torch.Tensor, memory_mask: torch.Tensor
    ):
        """Router weights [B, L, n, M] and the normalised expert outputs LN(o_m) [B, L, n, M, d]."""
        weights, outputs, _ = self._experts_and_router(
            self.sasrec.item_vectors(candidates), candidates, memory_items, memory_mask, None
        )
        return weights, torch.stack(outputs, dim=-2)

    def _experts_and_router(
        self,
        embeddings: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        history: torch.Tensor | None,
    ):
        """`experts_and_router` given the candidates' item embeddings [B, L, n, d] (the ID
        queries), which scoring reuses: one lookup (and one gradient scatter) instead of two.
        The expert outputs are a list of M [B, L, n, d] tensors: stacking them would copy every
        candidate's outputs once more. Also returns the content matches with the `history`
        [B, L, k] (`recent_items`), one [B, L, n] per modality (an empty list without it)."""
        not_self = memory_items[:, None, None, :] != candidates.unsqueeze(-1)  # [B, L, n, K]
        outputs, features, usable, matches = [], [], [], []
        for name in self.modalities:
            table, available = getattr(self, f"features_{name}"), getattr(self, f"available_{name}")
            features.append(table[candidates])
            usable.append(available[candidates])
            allowed = not_self & (memory_mask & available[memory_items])[:, None, None, :]
            expert = self.experts[name](
                features[-1],
                usable[-1],
                self.projections[name],
                embeddings,
                self.projections[name](table[memory_items]),
                allowed,
            )
            outputs.append(self.expert_norms[name](expert))
            if history is not None:
                matches.append(
                    _content_match(features[-1], table[history], (history > 0) & available[history])
                )
        return self._route(features, embeddings, usable), outputs, matches

    def _route(
        self, features: list[torch.Tensor], embeddings: torch.Tensor, usable: list[torch.Tensor]
    ) -> torch.Tensor:
        """Router weights [B, L, n, M] from the candidates' queries (their projected `features`,
        or ID `embeddings` where a feature is unavailable) and feature availability `usable`."""
        if len(usable) == 1:
            # A softmax over one expert is 1 whatever its logit (and passes no gradient back): the
            # router's MLP over every candidate would be pure cost.
            return torch.ones_like(usable[0], dtype=embeddings.dtype).unsqueeze(-1)
        usable = torch.stack(usable, dim=-1)
        if self.config.learned_router:
            queries = [
                torch.where(usable[..., m, None], self.projections[name](features[m]), embeddings)
                for m, name in enumerate(self.modalities)
            ]
            logits = self.router(torch.cat(queries, dim=-1))
        else:
            # Equal logits: after the mask below, equal weights over the available modalities.
            logits = torch.zeros(usable.shape, dtype=embeddings.dtype, device=usable.device)
        # Candidates with no feature at all fall back to uniform weights over the (zero) experts.
        logits = logits.masked_fill(~usable & usable.any(-1, keepdim=True), float("-inf"))
        return torch.softmax(logits, dim=-1)

    def score(
        self,
        hidden: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores [B, L, n] from hidden states [B, L, d], candidates [B, L, n], memory [B, K] and,
        with `content_history`, the items each position has read (`recent_items`, [B, L, k])."""
        return self._score(hidden, candidates, memory_items, memory_mask, history)[0]

    def _score(
        self,
        hidden: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        history: torch.Tensor | None,
        holdout: bool = False,
        shared: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ScoreParts]:
        """Scores and what the training losses need besides them (see `forward(with_aux=True)`).

        `holdout` (with `holdout_content`): the last position's loss trains only the modality
        side, on top of the (untrained there) backbone's score; the others' scores are the
        backbone's alone, which they train. With `holdout_backbone` every position's score is
        the backbone's and the last position's stacked score goes to `held_out_scores`. Held
        out, the parts are the last position's only ([B, 1, ...]).

        `shared` [N] (shared negatives, or every item): `candidates` [B, L, 1] holds the targets
        and every position is scored against them too, as `SASRec.score_shared` (a shared item
        that is the position's target gets `MASKED_SCORE`). The backbone's scores are one matrix
        product; the modality side is computed per candidate, so held out (the last position
        only) it costs N candidates once a window, otherwise N at every position."""
        if not self.mixes:
            parts = ScoreParts(hidden, self.sasrec.item_vectors(candidates[..., 0]))
            return self._backbone_scores(hidden, candidates, shared), parts
        if self.config.content_history and history is None:
            raise ValueError("content_history: the score needs the items each position has read (history)")
        # With shared items: which scored columns are the position's own target (masked out).
        hits = None
        if shared is not None:
            hits = torch.cat([torch.zeros_like(candidates, dtype=torch.bool), shared == candidates], dim=-1)
        score = self._held_out_scores if holdout else self._fused_scores
        return score(hidden, candidates, memory_items, memory_mask, history, shared, hits)

    def _backbone_scores(
        self, hidden: torch.Tensor, candidates: torch.Tensor, shared: torch.Tensor | None
    ) -> torch.Tensor:
        """SASRec's scores of the candidates (or the targets and the shared items)."""
        if shared is None:
            return self.sasrec.score(hidden, candidates)
        return self.sasrec.score_shared(hidden, candidates[..., 0], shared)

    def _fused_scores(self, hidden, candidates, memory_items, memory_mask, history, shared, hits):
        """Every position scored through the fused vector: <hidden + mixture, E[c]> + match."""
        candidates = _with_shared(candidates, shared)
        embeddings = self.sasrec.item_vectors(candidates)
        mixture, match, parts = self._side(hidden, embeddings, candidates, memory_items, memory_mask, history)
        # One pass over the candidates' embeddings: <hidden + mixture, E[c]>.
        scores = ((hidden.unsqueeze(-2) + mixture) * embeddings).sum(-1) + match
        return _masked(scores, hits), parts

    def _held_out_scores(self, hidden, candidates, memory_items, memory_mask, history, shared, hits):
        """The backbone's scores at every position, and the modality side on top of them at the
        last position only (`_score`'s `holdout`)."""
        backbone = self._backbone_scores(hidden, candidates, shared)
        last = _with_shared(candidates[:, -1:], shared)
        # Held out, the modality side enters the loss at the last position only, so it is computed
        # there only (the experts over every position were most of FedDMMR's extra cost). It reads
        # the ID embeddings (its fallback queries, the dot product) but must not train them.
        last_embeddings = self.sasrec.item_vectors(last).detach()
        mixture, match, parts = self._side(
            hidden[:, -1:],
            last_embeddings,
            last,
            memory_items,
            memory_mask,
            None if history is None else history[:, -1:],
        )
        held_out = backbone[:, -1:].detach() + (mixture * last_embeddings).sum(-1) + match  # [B, 1, n]
        held_out = _masked(held_out, None if hits is None else hits[:, -1:])
        if self.config.holdout_backbone:
            return backbone, dataclasses.replace(parts, held_out=True, held_out_scores=held_out)
        return torch.cat([backbone[:, :-1], held_out], dim=1), dataclasses.replace(parts, held_out=True)

    def _side(
        self,
        hidden: torch.Tensor,
        embeddings: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        history: torch.Tensor | None,
    ):
        """The modality side at the given positions: the experts' mixture g * sum_m w_m LN(o_m)
        [B, L, n, d] (fused = hidden + mixture), the content match [B, L, n] (0.0 without
        `content_history`) and the score parts of those positions."""
        weights, outputs, matches = self._experts_and_router(
            embeddings,
            candidates,
            memory_items,
            memory_mask,
            history if self.config.content_history else None,
        )
        mixture = self.gate * _weighted_sum(weights, outputs)
        match = 0.0
        if matches:
            match = math.sqrt(hidden.shape[-1]) * (torch.stack(matches, dim=-1) * self.match_weights).sum(-1)
        parts = ScoreParts(
            hidden + mixture[..., 0, :],
            embeddings[..., 0, :],
            router_weights=weights,
            expert_positive=torch.stack([o[..., 0, :] for o in outputs], dim=-2),
        )
        return mixture, match, parts

    def forward(
        self,
        sequences: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        *,
        with_aux: bool = False,
        shared: torch.Tensor | None = None,
    ):
        """Scores [B, L, n] of candidates at every position; memory [B, K], or [K] shared by the batch.

        `with_aux`: also return the `ScoreParts` the losses need: `fused_positive` [B, L, d] (the
        fused vector of each position's column-0 candidate, its target in training),
        `positive_embedding` [B, L, d] (that candidate's item embedding) and, when the
        experts are used, `router_weights` [B, L, n, M] and `expert_positive` [B, L, M, d] (the
        column-0 candidate's normalised expert outputs). Held out (below), they cover the last
        position only, [B, 1, ...]: the only one whose loss trains the modality side.

        `shared` [N]: `candidates` [B, L, 1] are the targets, scored with the shared negatives
        (or every item) at every position: [B, L, 1+N] (`_score`).

        With `holdout_content`, in training mode, the last position's scores train only the
        modality side and the others' are the backbone's alone: in training windows the last
        position is the window's most recent target (`federated/batches.py`). With
        `holdout_backbone` as well, the scores are the backbone's at every position and the parts
        hold `held_out_scores` [B, 1, n]: the last position's backbone (detached) + modality side
        scores, for `losses.feddmmr_loss` to add.
        """
        if memory_items.dim() == 1:
            memory_items = memory_items.expand(sequences.shape[0], -1)
            memory_mask = memory_mask.expand(sequences.shape[0], -1)
        history = (
            recent_items(sequences, self.config.content_history) if self.config.content_history else None
        )
        holdout = self.config.holdout_content and self.training  # a split of the training loss only
        scores, parts = self._score(
            self.sasrec.encode(sequences), candidates, memory_items, memory_mask, history, holdout, shared
        )
        return (scores, parts) if with_aux else scores

    def loss(self, batch: TrainBatch, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the step minimises: the next-item loss plus the auxiliary terms, the next-item
        loss detached), means over the batch's real targets (`losses.feddmmr_loss`). The scores
        follow the caller's autocast; the losses are taken in float32."""
        scores, parts = self(
            batch.inputs, batch.candidates, *batch.memory, with_aux=True, shared=batch.shared
        )
        with torch.autocast(scores.device.type, enabled=False):
            total, loss = feddmmr_loss(
                scores.float(),
                parts,
                batch.candidates,
                objective.kind,
                objective.auxiliary,
                objective.gbce_beta,
            )
        return total, loss.detach()

    def _last_history(self, sequences: torch.Tensor) -> torch.Tensor | None:
        """[B, 1, k]: the last k items of each sequence (with `content_history`)."""
        k = self.config.content_history
        return recent_items(sequences, k)[:, -1:] if k else None

    def score_last(
        self,
        sequences: torch.Tensor,
        candidates: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Scores [B, n] of candidates [B, n] after the whole sequence."""
        hidden = self.sasrec.encode(sequences)[:, -1:]
        return self.score(
            hidden, candidates.unsqueeze(1), memory_items, memory_mask, self._last_history(sequences)
        )[:, 0]

    def score_all_last(
        self,
        sequences: torch.Tensor,
        memory_items: torch.Tensor,
        memory_mask: torch.Tensor,
        *,
        max_elements: int = 1 << 24,
    ) -> torch.Tensor:
        """Scores of every item (column 0 = padding) after the whole sequence: [B, num_items+1].

        Items are scored in chunks of about `max_elements` / (B * d) so that the experts'
        per-candidate tensors stay bounded whatever the catalogue size."""
        hidden = self.sasrec.encode(sequences)[:, -1:]
        if not self.mixes:
            return hidden[:, 0] @ self.sasrec.all_item_vectors().T
        batch, dim = sequences.shape[0], hidden.shape[-1]
        chunk = max(1, max_elements // (batch * dim))
        items = torch.arange(self.config.sasrec.num_items + 1, device=sequences.device)
        history = self._last_history(sequences)
        scores = [
            self.score(hidden, part.expand(batch, 1, -1), memory_items, memory_mask, history)[:, 0]
            for part in items.split(chunk)
        ]
        return torch.cat(scores, dim=1)
