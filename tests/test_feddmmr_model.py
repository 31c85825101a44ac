import pytest
import torch

from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig
from feddmmr.model.sasrec import SASRec, SASRecConfig

CONFIG = SASRecConfig(num_items=40, max_seq_len=8, hidden_dim=16, num_heads=2, dropout=0.0)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 41, (3, 8), generator=g)
    cands = torch.randint(1, 41, (3, 8, 5), generator=g)
    mem = torch.randint(0, 41, (3, 20), generator=g)
    return seq, cands, mem, mem > 0


def text_features():
    torch.manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(41, 12), dim=-1)
    feats[0] = 0
    avail = torch.ones(41, dtype=torch.bool)
    avail[0] = False
    return {"text": feats}, {"text": avail}


def test_without_modalities_scores_equal_sasrec_for_equal_weights():
    torch.manual_seed(0)
    model = FedDMMR(FedDMMRConfig(CONFIG), {}, {}).eval()
    reference = SASRec(CONFIG).eval()
    reference.load_state_dict(model.sasrec.state_dict())
    seq, cands, mem, mask = inputs()
    assert torch.equal(model(seq, cands, mem, mask), reference(seq, cands))
    assert torch.equal(model.score_last(seq, cands[:, -1], mem, mask), reference.score_last(seq, cands[:, -1]))


def test_scores_of_the_last_position_match_the_full_forward():
    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq, cands, mem, mask = inputs()
    torch.testing.assert_close(model(seq, cands, mem, mask)[:, -1], model.score_last(seq, cands[:, -1], mem, mask))


def test_memory_changes_scores_and_masked_slots_are_ignored():
    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq, cands, mem, mask = inputs()
    base = model(seq, cands, mem, mask)
    other_mem = torch.randint(1, 41, mem.shape, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(base, model(seq, cands, other_mem, torch.ones_like(mask)))
    # Changing what sits in masked slots changes nothing.
    scrambled = torch.where(mask, mem, torch.randint(1, 41, mem.shape))
    torch.testing.assert_close(base, model(seq, cands, scrambled, mask))


def test_a_candidate_never_attends_to_itself_in_memory():
    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq = torch.randint(1, 41, (1, 8))
    cands = torch.tensor([[[7]]]).expand(1, 8, 1)
    only_itself = torch.tensor([[7] + [0] * 19])
    empty = torch.zeros(1, 20, dtype=torch.long)
    with_self = model(seq, cands, only_itself, only_itself > 0)
    without = model(seq, cands, empty, empty > 0)
    torch.testing.assert_close(with_self, without)


def test_feature_rows_must_match_the_item_count():
    feats, avail = text_features()
    with pytest.raises(ValueError, match="41 feature rows for 50 items"):
        FedDMMR(FedDMMRConfig(SASRecConfig(num_items=50, max_seq_len=8, hidden_dim=16, num_heads=2)), feats, avail)
