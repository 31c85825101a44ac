"""FedDMMR's content item tower: a never-trained item is scored by a stand-in fitted from its
content to the trained items' ID embeddings."""

import torch
import torch.nn.functional as F

from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig
from feddmmr.model.item_tower import ContentItemTower, ridge_regression
from feddmmr.model.losses import AuxiliaryWeights, feddmmr_loss
from feddmmr.model.sasrec import SASRecConfig

CONFIG = SASRecConfig(num_items=40, max_seq_len=8, hidden_dim=16, num_heads=2, dropout=0.0)
NEW = 7  # the item no user's training sequence holds


def features(seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(41, 12, generator=g), dim=-1)
    feats[0] = 0
    avail = torch.ones(41, dtype=torch.bool)
    avail[0] = False
    return {"text": feats}, {"text": avail}


def counts():
    c = torch.arange(41.0) % 5 + 1  # every item but padding and NEW trained 1-5 times
    c[0] = c[NEW] = 0
    return c


def model(feats=None, tower="content"):
    torch.manual_seed(0)
    return FedDMMR(
        FedDMMRConfig(CONFIG, item_tower=tower), *(feats or features()), train_counts=counts()
    ).eval()


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
        row = F.normalize(torch.randn(12), dim=0)
        m.features_text[NEW] = m.sasrec.item_tower.features[NEW] = row
    new_scores = m.score_last(seq, cands, mem, mask)
    assert not torch.allclose(new_scores[:, 0], before[:, 0])  # the new item's own score moved
    torch.testing.assert_close(new_scores[:, 1:], before[:, 1:])  # its features touch no other candidate


def test_a_trained_item_is_its_id_row_and_a_new_one_its_stand_in_refitted_when_the_id_table_changes():
    m = model()
    ids = torch.tensor([3, NEW, 0])
    table = m.sasrec.item_embedding.weight
    stand_ins = m.sasrec.item_tower.stand_ins(table)
    expected = torch.stack([table[3], stand_ins[NEW], torch.zeros(16)])
    torch.testing.assert_close(m.sasrec.item_vectors(ids), expected)
    torch.testing.assert_close(m.sasrec.all_item_vectors()[ids], expected)
    assert m.sasrec.item_tower.stand_ins(table) is stand_ins  # fitted once per state of the table
    with torch.no_grad():
        table[3] += 1.0  # a round moves a trained item's embedding
    moved = m.sasrec.item_vectors(ids)[1]
    assert not torch.allclose(moved, expected[1])
    table.data = table.data * 2  # a fresh tensor in place of the table
    torch.testing.assert_close(m.sasrec.item_vectors(ids)[1], 2 * moved)  # the fit is linear in the ID rows


def test_the_stand_in_is_the_weighted_ridge_fit_of_the_trained_items_id_rows_on_their_centred_features():
    m = model()
    tower, table = m.sasrec.item_tower, m.sasrec.item_embedding.weight.detach().double()
    stand_ins = tower.stand_ins(m.sasrec.item_embedding.weight)
    trained = counts() > 0
    x = F.normalize(features()[0]["text"] - features()[0]["text"][1:].mean(0), dim=-1).double()
    x[0] = 0
    w = counts()[trained].double()
    x_mean, y_mean = w @ x[trained] / w.sum(), w @ table[trained] / w.sum()
    xc, yc = x[trained] - x_mean, table[trained] - y_mean
    lam = tower.ridge * w.sum() / len(w)  # the fit's weights have mean 1
    coefficients = torch.linalg.solve(
        xc.T @ (w[:, None] * xc) + lam * torch.eye(12, dtype=torch.float64), xc.T @ (w[:, None] * yc)
    )
    torch.testing.assert_close(stand_ins[NEW].double(), (x[NEW] - x_mean) @ coefficients + y_mean)


def test_items_with_a_linear_content_to_id_map_get_that_map():
    """A new item whose trained neighbours' ID rows are a linear function of their content gets
    (nearly) what that function gives it."""
    g = torch.Generator().manual_seed(3)
    feats = F.normalize(torch.randn(201, 12, generator=g), dim=-1)
    feats[0] = 0
    truth = torch.randn(12, 16, generator=g)
    train_counts = torch.ones(201)
    train_counts[0] = train_counts[-1] = 0
    tower = ContentItemTower(feats, train_counts)
    table = tower.centred(feats) @ truth
    table[0] = 0
    stand_in = tower.stand_ins(table)[-1]
    assert F.cosine_similarity(stand_in, table[-1], dim=0) > 0.99


def test_the_ridge_strength_is_the_grid_value_with_the_smallest_leave_one_out_error():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 3, generator=g, dtype=torch.float64) + 2.0 * torch.randn(
        30, 3, generator=g, dtype=torch.float64
    )
    grid = (0.01, 1.0, 10.0, 100.0, 1000.0)

    def brute_force_error(lam):  # refit without each row in turn
        total = 0.0
        for i in range(len(x)):
            keep = torch.arange(len(x)) != i
            b = torch.linalg.solve(
                x[keep].T @ x[keep] + lam * torch.eye(6, dtype=torch.float64), x[keep].T @ y[keep]
            )
            total += float((x[i] @ b - y[i]).square().sum())
        return total

    errors = [brute_force_error(lam) for lam in grid]
    coefficients, chosen = ridge_regression(x, y, grid)
    assert chosen == grid[errors.index(min(errors))]
    assert chosen not in (grid[0], grid[-1])  # the noise makes the choice a real one
    direct = torch.linalg.solve(x.T @ x + chosen * torch.eye(6, dtype=torch.float64), x.T @ y)
    torch.testing.assert_close(coefficients, direct)


def test_scoring_every_item_matches_scoring_candidates():
    m = model()
    seq, cands, mem, mask = inputs()
    every = m.score_all_last(seq, mem, mask)
    torch.testing.assert_close(every.gather(1, cands), m.score_last(seq, cands, mem, mask))


def test_training_with_the_tower_is_training_without_it():
    """The tower has no parameter and draws no random number: the same seed builds the same
    model, and its training loss and gradients are the ID model's."""
    with_tower, without = model().train(), model(tower="id").train()
    assert not list(with_tower.sasrec.item_tower.parameters())
    assert with_tower.state_dict().keys() - without.state_dict().keys() == {
        "sasrec.item_tower.train_counts",
        "sasrec.item_tower.feature_mean",
    }
    seq, cands, mem, mask = inputs()
    candidates = cands.unsqueeze(1).expand(-1, 8, -1)
    results = []
    for m in (with_tower, without):
        scores, parts = m(seq, candidates, mem, mask, with_aux=True)
        loss, _ = feddmmr_loss(scores, parts, candidates, "ce", AuxiliaryWeights())
        results.append((loss, torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert (a is None and b is None) or torch.equal(a, b)
