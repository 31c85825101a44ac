"""SASRec (Kang & McAuley, 2018): a causal Transformer over a user's recent items.

Written with plain tensor operations (no nn.MultiheadAttention) so that the same module runs
under `torch.func.functional_call` + `vmap` with a client dimension in the vectorised engine.
Inputs are left-padded with item 0; padding is masked in attention and zeroed in outputs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feddmmr.model.losses import MASKED_SCORE, Objective, TrainBatch, every_item, next_item_loss

ITEM_TABLE = "item_embedding.weight"  # the item embedding table's parameter name (input and output)
# Shifts that cut a 64-bit random word into its eight bytes.
BYTE_SHIFTS = tuple(range(0, 64, 8))


def item_table_name(names) -> str | None:
    """Which of the parameter `names` is the item table (FedDMMR's is `sasrec.item_embedding.weight`)."""
    return next((name for name in names if name.endswith(ITEM_TABLE)), None)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with masks cut from random 64-bit words, 8 bytes per draw.

    PyTorch's CPU dropout draws one Bernoulli sample per element; this is cheaper under vmap
    (benchmarks/dropout_cost.py). The bytes are cut by shifts and a cast, not by viewing the
    words as uint8: vmap has no batching rule for a dtype view before torch 2.13. The drop
    probability is rounded to a multiple of 1/256; the kept values are rescaled by the exact keep
    probability, so the expectation is unchanged.
    """
    if not training or p == 0.0:
        return x
    threshold = round(p * 256)
    if not 0 <= threshold < 256:
        raise ValueError(f"dropout {p}: this dropout draws in steps of 1/256, so it takes p in [0, 255/256]")
    count = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 7) // 8, 1), dtype=torch.int64, device=x.device)
    shifts = torch.tensor(BYTE_SHIFTS, dtype=torch.int64, device=x.device)
    random_bytes = (words >> shifts).to(torch.uint8)  # the cast keeps each shifted word's low byte
    keep = random_bytes.flatten()[:count].view(x.shape) >= threshold
    return x * keep * (256.0 / (256 - threshold))


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int
    max_seq_len: int = 50
    hidden_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("num_items", "max_seq_len", "hidden_dim", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        # No key bias: it adds the same q.b to every score of a query, which softmax ignores;
        # its gradient is pure rounding noise that Adam would amplify into real steps.
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = queries.shape
        head_dim = dim // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(queries)), split(self.key(keys)), split(self.value(keys))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.out(mixed)


class PointWiseFeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, dim)
        self.outer = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = dropout(F.relu(self.inner(x)), self.dropout, self.training)
        return dropout(self.outer(hidden), self.dropout, self.training)


class Block(nn.Module):
    """Pre-LayerNorm block as in the reference SASRec implementation."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.attention = CausalSelfAttention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = PointWiseFeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        queries = self.attention_norm(x)
        x = queries + self.attention(queries, x, allowed)
        x = self.ffn_norm(x)
        x = x + self.ffn(x)
        return x * keep


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_dim
        self.item_embedding = nn.Embedding(config.num_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_seq_len, dim)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.dropout) for _ in range(config.num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        self.reset_parameters()
        # None: an item's vector is its ID embedding. FedDMMR may set a content tower
        # (model/item_tower.py), which gives items no client trained on a vector from their features.
        self.item_tower: nn.Module | None = None

    # SASRec's own parameters are all of it (FedDMMR holds one under "sasrec."): staged training
    # and checkpoint loading tell the backbone's parameters by this prefix.
    backbone_prefix = ""

    @property
    def backbone(self) -> SASRec:
        """The SASRec that encodes sequences and holds the item table (this model itself)."""
        return self

    def model_args(self) -> dict:
        """The arguments that rebuild the model (nanoGPT's `model_args`): with the weights, a
        checkpoint is a model without the data (best_model.load_model)."""
        return {"model": "fedsasrec", "sasrec": dataclasses.asdict(self.config)}

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The vectors [..., d] of the items `ids` [...]: their input embeddings and scoring vectors.
        In training every item is read by its ID embedding, tower or not (model/item_tower.py)."""
        if self.item_tower is None or self.training:
            return self.item_embedding(ids)
        return self.item_tower(ids, self.item_embedding.weight)

    def all_item_vectors(self) -> torch.Tensor:
        """Every item's vector [num_items + 1, d] (row 0: padding), as evaluation scores them."""
        if self.item_tower is None:
            return self.item_embedding.weight
        return self.item_tower.table(self.item_embedding.weight)

    def reset_parameters(self) -> None:
        for name, param in self.named_parameters():
            if param.dim() > 1:
                nn.init.xavier_normal_(param)
            elif name.endswith("bias"):
                nn.init.zeros_(param)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position: [batch, L] item ids -> [batch, L, d]."""
        length = sequences.shape[-1]
        if length > self.config.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len {self.config.max_seq_len}")
        keep = (sequences > 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        x = self.item_vectors(sequences) * math.sqrt(self.config.hidden_dim)
        x = x + self.position_embedding.weight[-length:]
        x = dropout(x, self.config.dropout, self.training) * keep
        # A query may see earlier real items and itself; a padding query sees only itself, which
        # keeps its softmax finite (its output is zeroed anyway).
        causal = torch.ones(length, length, dtype=torch.bool, device=sequences.device).tril()
        real_keys = (sequences > 0).unsqueeze(-2)
        allowed = (causal & real_keys) | torch.eye(length, dtype=torch.bool, device=sequences.device)
        allowed = allowed.unsqueeze(-3)  # broadcast over heads
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.final_norm(x) * keep

    def score(self, hidden: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Dot products of hidden states [..., d] with candidate items [..., n] -> [..., n], in
        float32 even under autocast: a score can exceed float16's range (65504)."""
        with torch.autocast(hidden.device.type, enabled=False):
            return (self.item_vectors(candidates).float() @ hidden.float().unsqueeze(-1)).squeeze(-1)

    def score_shared(self, hidden: torch.Tensor, targets: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """Scores [..., 1+N]: each position's target (`targets` [...]) first, then the N items of
        `shared` [N], one set for every position, scored as one matrix product (no [..., N, d]
        gather). A shared item that is the position's target gets `MASKED_SCORE`."""
        with torch.autocast(hidden.device.type, enabled=False):  # in float32, as `score`
            hidden = hidden.float()
            positive = (self.item_vectors(targets).float() * hidden).sum(-1, keepdim=True)
            others = hidden @ self.item_vectors(shared).float().T
        others = others.masked_fill(shared == targets.unsqueeze(-1), MASKED_SCORE)
        return torch.cat([positive, others], dim=-1)

    def forward(
        self, sequences: torch.Tensor, candidates: torch.Tensor, shared: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores of `candidates` [batch, L, n] at every position of `sequences` [batch, L]; with
        `shared` [N] (shared negatives, or every item for ce-full), `candidates` [batch, L, 1]
        holds the targets and the scores are `score_shared`'s [batch, L, 1+N]."""
        hidden = self.encode(sequences)
        if shared is None:
            return self.score(hidden, candidates)
        return self.score_shared(hidden, candidates[..., 0], shared)

    def loss(self, batch: TrainBatch, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the step minimises, the next-item loss detached): the mean loss over the batch's
        real targets. The scores follow the caller's autocast; the loss is taken in float32."""
        scores = self(batch.inputs, batch.candidates, batch.shared)
        with torch.autocast(scores.device.type, enabled=False):
            total, count = next_item_loss(
                scores.float(), batch.candidates[..., 0] > 0, objective.kind, objective.gbce_beta
            )
            loss = total / count.clamp(min=1)
        return loss, loss.detach()

    def full_softmax_loss(
        self, sequences: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SASRec+'s loss: the softmax cross-entropy of every real target (`targets` [batch, L], 0 =
        padding) against every item, summed, and the count of real targets. The same value as
        `forward(sequences, targets[..., None], every_item(...))` through `next_item_loss`, computed
        at the real positions only, as one product and a fused log-softmax: no masked copy of the
        [positions, items] scores (2.5x faster a step on ML-1M's 3,706 items, 45% padding)."""
        hidden = self.encode(sequences)
        real = targets > 0
        with torch.autocast(hidden.device.type, enabled=False):  # in float32, as `score`
            logits = (
                hidden[real].float() @ self.item_vectors(every_item(self.item_embedding.weight)).float().T
            )
            return F.cross_entropy(logits, targets[real] - 1, reduction="sum"), real.sum()

    def score_last(self, sequences: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of candidates [batch, n] after the whole sequence (the next-item prediction)."""
        return self.score(self.encode(sequences)[:, -1], candidates)

    def score_all_last(self, sequences: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) after the whole sequence: [batch, num_items+1]."""
        hidden = self.encode(sequences)[:, -1]
        with torch.autocast(hidden.device.type, enabled=False):  # in float32, as `score`
            return hidden.float() @ self.all_item_vectors().float().T
