"""Item vectors for items no client trained on, from their content: what lets a model recommend
new items.

A trained item's vector is its learned ID embedding, as in SASRec. An item that no user's
training sequence holds (t[c] = 0: a new item) has an ID row that nothing fitted, its initial
draw or one pushed down only as a negative; its vector is instead a stand-in built from its frozen
features F[c]: P(F[c]), a learned linear projection. The same vectors are the model's input
embeddings and its scoring vectors, so a new item is read in a user's history as well as ranked.

P learns on the trained items only, by an auxiliary loss beside the next-item loss (the
content-to-collaborative mapping of cold-start recommenders, e.g. van den Oord et al. 2013, in the
stacked form FedDMMR's held-out objective uses): for the target and each negative of every
training position that is a trained item, 1/2 ||P(F[c]) - ID[c]||^2 with the ID row detached,
averaged over the position's candidates and then over the positions. So P(F[c]) estimates the ID
embedding an item with this content gets, and a new item's scores are calibrated to those of the
trained items it competes with. (A ranking loss on stand-ins left their scores above the trained
items', so that new negatives crowded trained targets out; the squared error of the scores, with
the hidden states' norm of about 12, made local SGD at lr 1 unstable. This loss's curvature is at
most 1, since feature rows are unit vectors and the weights of its terms sum to 1.) Nothing of it
reaches the backbone, which reads every item by its ID embedding in training: the ID model trains
exactly as it would without the tower, and nothing teaches P about the untrained items it will
score (a new item kept as a training negative would otherwise teach it that this very content is
never wanted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContentItemTower(nn.Module):
    def __init__(self, features: torch.Tensor, trained: torch.Tensor, dim: int) -> None:
        """`features` [num_items + 1, D] (row 0: padding), `trained` [num_items + 1] bool."""
        super().__init__()
        if features.shape[0] != trained.shape[0]:
            raise ValueError(f"item tower: {features.shape[0]} feature rows for {trained.shape[0]} items (+1 padding)")
        # Frozen inputs, not parameters: never trained or aggregated. `trained` is part of the
        # model (which items have an ID part), so it is saved with it; the features are reloaded
        # from the run's feature files.
        self.register_buffer("features", features.float(), persistent=False)
        self.register_buffer("trained", trained.bool())
        # Sentence embeddings of titles share a large common part (ML-1M's MiniLM title vectors:
        # the mean row has norm 0.66, two random titles a cosine of 0.44, 0.00 once centred).
        # The tower reads them centred on the mean of the catalogue it was built on, which is part
        # of the model, so that items added later do not move the others.
        present = features.norm(dim=-1) > 0
        self.register_buffer("feature_mean", features[present].float().mean(0) if present.any()
                             else torch.zeros(features.shape[1]))
        self.projection = nn.Linear(features.shape[1], dim)

    def centred(self, features: torch.Tensor) -> torch.Tensor:
        """Unit rows of `features` [..., D] less `feature_mean`; zero rows (no feature) stay zero."""
        present = (features != 0).any(-1, keepdim=True)
        return torch.where(present, F.normalize(features - self.feature_mean, dim=-1), torch.zeros_like(features))

    def stand_ins(self, ids: torch.Tensor) -> torch.Tensor:
        """P(F[c]) [..., d] for the items `ids` [...]."""
        return self.projection(self.centred(self.features[ids]))

    def forward(self, ids: torch.Tensor, id_table: torch.Tensor) -> torch.Tensor:
        """Vectors [..., d] of the items `ids` [...] given the ID table [num_items + 1, d], as
        evaluation scores them: the ID embedding of a trained item, the stand-in of any other. (In
        training the model reads every item by its ID embedding, `SASRec.item_vectors`, so that the
        backbone trains as it would without the tower.)"""
        return torch.where(self.trained[ids].unsqueeze(-1), F.embedding(ids, id_table), self.stand_ins(ids))

    def stand_in_error(self, ids: torch.Tensor, id_table: torch.Tensor) -> torch.Tensor:
        """The auxiliary loss's terms [...] for the items `ids` [...]: 1/2 ||P(F[c]) - ID[c]||^2
        for a trained item (its ID row detached, so only P learns from it), 0 for any other."""
        error = self.stand_ins(ids).float() - F.embedding(ids, id_table).detach().float()
        half_square = 0.5 * error.square().sum(-1)
        return torch.where(self.trained[ids], half_square, torch.zeros_like(half_square))

    def table(self, id_table: torch.Tensor) -> torch.Tensor:
        """Every item's vector [num_items + 1, d], as evaluation scores them."""
        ids = torch.arange(id_table.shape[0], device=id_table.device)
        return self(ids, id_table)


def combined_features(matrices: list[torch.Tensor]) -> torch.Tensor:
    """normalise(concat of the L2-normalised modality features) [num_items+1, sum D_m].

    An item's unavailable modality contributes zeros; an item with none is a zero row (the memory
    never writes it to the long-term tier)."""
    return F.normalize(torch.cat([F.normalize(m.float(), dim=-1) for m in matrices], dim=-1), dim=-1)
