"""FedDMMR's content item tower: a never-trained item is scored by its content alone."""

import pytest
import torch

from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig
from feddmmr.model.sasrec import SASRecConfig

CONFIG = SASRecConfig(num_items=40, max_seq_len=8, hidden_dim=16, num_heads=2, dropout=0.0)
NEW = 7  # the item no user's training sequence holds


def features(seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(41, 12, generator=g), dim=-1)
    feats[0] = 0
    avail = torch.ones(41, dtype=torch.bool)
    avail[0] = False
    return {"text": feats}, {"text": avail}


def model(feats=None):
    trained = torch.ones(41, dtype=torch.bool)
    trained[0] = trained[NEW] = False
    torch.manual_seed(0)
    config = FedDMMRConfig(CONFIG, item_tower="content")
    return FedDMMR(config, *(feats or features()), trained=trained).eval()


def inputs():
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(1, 41, (3, 8), generator=g)
    seq[seq == NEW] = 1  # the new item is not in the histories
    cands = torch.randint(1, 41, (3, 5), generator=g)
    cands[:, 0] = NEW
    mem = torch.randint(0, 41, (3, 20), generator=g)
    mem[mem == NEW] = 2  # nor in the memories
    return seq, cands, mem, mem > 0


def test_a_new_items_score_ignores_its_id_row_and_follows_its_features():
    m = model()
    seq, cands, mem, mask = inputs()
    before = m.score_last(seq, cands, mem, mask)
    with torch.no_grad():
        m.sasrec.item_embedding.weight[NEW] = torch.randn(16) * 10  # re-drawn ID row
    after = m.score_last(seq, cands, mem, mask)
    assert torch.equal(before, after)
    with torch.no_grad():  # new features for the item, wherever the model reads them
        row = torch.nn.functional.normalize(torch.randn(12), dim=0)
        m.features_text[NEW] = m.sasrec.item_tower.features[NEW] = row
    new_scores = m.score_last(seq, cands, mem, mask)
    assert not torch.allclose(new_scores[:, 0], before[:, 0])  # the new item's own score moved
    torch.testing.assert_close(new_scores[:, 1:], before[:, 1:])  # its features touch no other candidate


def test_a_trained_item_is_its_id_row_and_any_other_its_projected_centred_features():
    m = model()
    tower = m.sasrec.item_tower
    ids = torch.tensor([3, NEW, 0])
    centred = torch.nn.functional.normalize(tower.features[ids] - tower.features[1:].mean(0), dim=-1)
    centred[2] = 0  # padding has no feature
    expected = torch.stack([m.sasrec.item_embedding.weight[3], tower.projection(centred[1]), tower.projection(centred[2])])
    torch.testing.assert_close(m.sasrec.item_vectors(ids), expected)
    torch.testing.assert_close(m.sasrec.all_item_vectors()[ids], expected)


def test_scoring_every_item_matches_scoring_candidates():
    m = model()
    seq, cands, mem, mask = inputs()
    every = m.score_all_last(seq, mem, mask)
    torch.testing.assert_close(every.gather(1, cands), m.score_last(seq, cands, mem, mask))


def test_the_auxiliary_loss_is_the_stand_ins_squared_error_to_the_id_row_on_trained_items():
    m = model().train()
    tower, table = m.sasrec.item_tower, m.sasrec.item_embedding.weight
    ids = torch.tensor([4, NEW, 9])
    expected = 0.5 * (tower.stand_ins(ids) - table[ids]).square().sum(-1)
    expected[1] = 0  # an untrained item has no ID row to match
    torch.testing.assert_close(tower.stand_in_error(ids, table), expected)


@pytest.mark.parametrize("shared", [False, True])
def test_only_the_projection_learns_from_the_auxiliary_loss(shared):
    """The backbone trains as without the tower (every item by its ID embedding); the projection
    only by the auxiliary loss."""
    m = model().train()
    seq, cands, mem, mask = inputs()
    if shared:
        cands3, negatives = cands[:, :1].unsqueeze(1).expand(-1, 8, -1), torch.arange(1, 41)
    else:
        cands3, negatives = cands.unsqueeze(1).expand(-1, 8, -1), None
    scores, parts = m(seq, cands3, mem, mask, with_aux=True, shared=negatives)
    assert parts.stand_in_error.shape == scores.shape and (parts.stand_in_error > 0).any()
    named = dict(m.named_parameters())
    grads = torch.autograd.grad(parts.stand_in_error.sum(), list(named.values()), allow_unused=True)
    moved = {name for name, g in zip(named, grads) if g is not None and g.abs().sum() > 0}
    assert moved == {"sasrec.item_tower.projection.weight", "sasrec.item_tower.projection.bias"}
    projection = torch.autograd.grad(scores.sum(), [named["sasrec.item_tower.projection.weight"]], allow_unused=True)
    assert projection[0] is None or projection[0].abs().sum() == 0
