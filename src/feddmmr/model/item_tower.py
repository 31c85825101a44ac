"""Item vectors for items no client trained on, from their content: what lets a model recommend
new items.

A trained item's vector is its learned ID embedding, as in SASRec. An item that no user's
training sequence holds (a new item) has an ID row that nothing fitted, its initial draw or one
pushed down only as a negative; its vector is instead a stand-in built from its frozen features
F[c]: S[c] = (x[c] - x̄) B + ȳ, with x the centred unit feature rows, B a ridge regression of the
trained items' ID embeddings on their features and x̄, ȳ their means. The same vectors are the
model's input embeddings and its scoring vectors, so a new item is read in a user's history as
well as ranked.

The stand-ins are fitted, not trained: B is a closed-form function of the current ID table (the
content-to-collaborative mapping of cold-start recommenders, e.g. van den Oord et al. 2013, solved
exactly). So the tower costs clients nothing (training reads every item by its ID embedding and
is exactly that of the ID-only model), it has no parameters to aggregate or protect (under DP it
post-processes the released model), and it follows the model wherever the model goes: a
checkpoint, a resumed run, a federated round. It is refitted whenever the ID table changes.

Each trained item weighs by its number of training interactions: a row trained a few times is
mostly its random initial draw, and the new items the model must score are, like the items users
pick, the ones people interact with. The ridge strength is the grid value with the smallest
exact leave-one-out error of the weighted fit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RIDGE_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # relative to the weights' mean (1)


class ContentItemTower(nn.Module):
    def __init__(self, features: torch.Tensor, train_counts: torch.Tensor) -> None:
        """`features` [num_items + 1, D] (row 0: padding), `train_counts` [num_items + 1]: each
        item's number of training interactions (0: a new item; row 0 is never trained)."""
        super().__init__()
        if features.shape[0] != train_counts.shape[0]:
            raise ValueError(
                f"item tower: {features.shape[0]} feature rows for {train_counts.shape[0]} items (+1 padding)"
            )
        counts = train_counts.float().clone()
        counts[0] = 0
        if not (counts > 0).any():
            raise ValueError(
                "item tower: no item has a training interaction, so there is nothing to fit stand-ins to"
            )
        # Frozen inputs, not parameters: never trained or aggregated. The counts are part of the
        # model (which items have an ID part, and how much each weighs in the fit), so they are
        # saved with it; the features are reloaded from the run's feature files.
        self.register_buffer("features", features.float(), persistent=False)
        self.register_buffer("train_counts", counts)
        # Sentence embeddings of titles share a large common part (ML-1M's MiniLM title vectors:
        # the mean row has norm 0.66, two random titles a cosine of 0.44, 0.00 once centred).
        # The tower reads them centred on the mean of the catalogue it was built on, which is part
        # of the model, so that items added later do not move the others.
        present = features.norm(dim=-1) > 0
        self.register_buffer(
            "feature_mean",
            features[present].float().mean(0) if present.any() else torch.zeros(features.shape[1]),
        )
        self._fitted: tuple | None = None  # (what it was fitted on, the stand-ins, the inputs' storages)
        self.ridge: float | None = None  # the last fit's ridge strength

    @property
    def trained(self) -> torch.Tensor:
        """[num_items + 1] bool: the items with an ID part."""
        return self.train_counts > 0

    def centred(self, features: torch.Tensor) -> torch.Tensor:
        """Unit rows of `features` [..., D] less `feature_mean`; zero rows (no feature) stay zero."""
        present = (features != 0).any(-1, keepdim=True)
        return torch.where(
            present, F.normalize(features - self.feature_mean, dim=-1), torch.zeros_like(features)
        )

    def stand_ins(self, id_table: torch.Tensor) -> torch.Tensor:
        """Every item's stand-in S [num_items + 1, d] given the ID table [num_items + 1, d]
        (padding's is 0), fitted once per state of the table, features and counts."""
        inputs = (id_table, self.features, self.train_counts)
        key = tuple((t.data_ptr(), t._version, t.device) for t in inputs) + (
            id_table.dtype,
            torch.is_inference_mode_enabled(),
        )
        if self._fitted is None or self._fitted[0] != key:
            with torch.no_grad():
                # The inputs' storages are kept with the fit, so that no other tensor can take
                # their addresses (and a fresh table at a reused address pass for the fitted one).
                self._fitted = (
                    key,
                    self._fit(id_table).to(id_table.dtype),
                    [t.untyped_storage() for t in inputs],
                )
        return self._fitted[1]

    def _fit(self, id_table: torch.Tensor) -> torch.Tensor:
        # On the CPU in float64: a small solve (D x D), and MPS has no float64.
        trained = self.trained.cpu()
        x = self.centred(self.features).cpu().double()
        weights = self.train_counts.cpu()[trained].double()
        weights = weights / weights.mean()
        x_mean = weights @ x[trained] / weights.sum()
        y = id_table.detach().cpu().double()
        y_mean = weights @ y[trained] / weights.sum()
        root = weights.sqrt().unsqueeze(-1)
        coefficients, self.ridge = ridge_regression(
            root * (x[trained] - x_mean), root * (y[trained] - y_mean)
        )
        stand_ins = (x - x_mean) @ coefficients + y_mean
        stand_ins[0] = 0
        return stand_ins.to(id_table.device)

    def forward(self, ids: torch.Tensor, id_table: torch.Tensor) -> torch.Tensor:
        """Vectors [..., d] of the items `ids` [...] given the ID table [num_items + 1, d], as
        evaluation scores them: the ID embedding of a trained item, the stand-in of any other. (In
        training the model reads every item by its ID embedding, `SASRec.item_vectors`, so that
        training is exactly the ID-only model's.)"""
        return torch.where(
            self.trained[ids].unsqueeze(-1), F.embedding(ids, id_table), self.stand_ins(id_table)[ids]
        )

    def table(self, id_table: torch.Tensor) -> torch.Tensor:
        """Every item's vector [num_items + 1, d], as evaluation scores them."""
        return torch.where(self.trained.unsqueeze(-1), id_table, self.stand_ins(id_table))


def ridge_regression(
    x: torch.Tensor, y: torch.Tensor, grid: tuple[float, ...] = RIDGE_GRID
) -> tuple[torch.Tensor, float]:
    """(argmin_B ||x B - y||^2 + lam ||B||^2 [D, d], lam) for the value lam of `grid` with the
    smallest exact leave-one-out error (the closed form e_i / (1 - H_ii)), from one SVD of x [n, D]
    (y [n, d])."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    projected = u.T @ y  # [r, d]
    best = None
    for lam in grid:
        shrink = s.square() / (s.square() + lam)  # [r]
        leverage = (u.square() * shrink).sum(-1)  # diagonal of the hat matrix [n]
        residual = y - u @ (shrink.unsqueeze(-1) * projected)
        error = (residual / (1 - leverage).clamp(min=1e-9).unsqueeze(-1)).square().sum()
        if best is None or error < best[0]:
            best = error, lam
    lam = best[1]
    return vh.T @ ((s / (s.square() + lam)).unsqueeze(-1) * projected), lam


def content_tower(features: dict[str, torch.Tensor], train_counts: torch.Tensor | None) -> ContentItemTower:
    """The tower over the modality tables `features` (by name, each [num_items + 1, D_m]), read as
    one combined feature."""
    if train_counts is None or not features:
        raise ValueError("item_tower='content' needs modality features and the items' training counts")
    return ContentItemTower(
        combined_features([features[name].float() for name in sorted(features)]), train_counts
    )


def combined_features(matrices: list[torch.Tensor]) -> torch.Tensor:
    """normalise(concat of the L2-normalised modality features) [num_items+1, sum D_m].

    An item's unavailable modality contributes zeros; an item with none is a zero row (the memory
    never writes it to the long-term tier)."""
    return F.normalize(torch.cat([F.normalize(m.float(), dim=-1) for m in matrices], dim=-1), dim=-1)
