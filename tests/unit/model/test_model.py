import pytest
import torch
import torch.nn.functional as F

from feddmmr.model.losses import MASKED_SCORE, every_item, gbce_beta, next_item_loss, per_target_loss
from feddmmr.model.sasrec import SASRec, SASRecConfig


def make_model(**overrides):
    torch.manual_seed(0)
    config = dict(num_items=50, max_seq_len=8, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0)
    config.update(overrides)
    return SASRec(SASRecConfig(**config)).eval()


def test_padding_does_not_change_the_prediction():
    model = make_model()
    short = torch.tensor([[0, 0, 0, 0, 3, 7, 9, 4]])
    # Same real items; only the amount of padding (none of which is read) differs via truncation.
    a = model.encode(short)[:, -1]
    b = model.encode(short[:, 2:])[:, -1]
    assert torch.allclose(a, b, atol=1e-5)
    assert (model.encode(short)[0, :4] == 0).all()  # padding positions are zeroed


def test_attention_is_causal():
    model = make_model()
    seq = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    changed = seq.clone()
    changed[0, -1] = 40
    before, after = model.encode(seq), model.encode(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_scores_are_dot_products_with_item_embeddings():
    model = make_model()
    seq = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6]])
    candidates = torch.tensor([[7, 8, 9]])
    hidden = model.encode(seq)[:, -1]
    expected = hidden @ model.item_embedding.weight[[7, 8, 9]].T
    assert torch.allclose(model.score_last(seq, candidates), expected, atol=1e-5)
    assert torch.allclose(model.score_all_last(seq)[:, [7, 8, 9]], expected, atol=1e-5)


def test_sequence_longer_than_max_len_is_an_error():
    model = make_model()
    try:
        model.encode(torch.ones(1, 9, dtype=torch.long))
    except ValueError as error:
        assert "exceeds max_seq_len 8" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_losses_ignore_padding_targets():
    scores = torch.tensor([[[2.0, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[True, False]])
    total, count = next_item_loss(scores, valid, "ce")
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)[0]
    assert count == 1 and torch.isclose(total, expected)
    total, count = next_item_loss(scores, valid, "bpr")
    assert torch.isclose(total, -torch.nn.functional.logsigmoid(torch.tensor(2.0)))


def test_invalid_model_config_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="divisible by num_heads"):
        SASRecConfig(num_items=5, hidden_dim=10, num_heads=3)


def test_dropout_drops_at_the_requested_rate_and_keeps_the_mean():
    from feddmmr.model.sasrec import dropout

    torch.manual_seed(0)
    x = torch.ones(200, 1000)
    y = dropout(x, 0.1, training=True)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 26 / 256) < 0.005  # 0.1 rounded to 26/256
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(dropout(x, 0.1, training=False), x)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1, training=True), y)  # seeded: reproducible


def test_dropout_under_vmap_never_views_a_tensor_as_another_dtype():
    """vmap has no batching rule for `Tensor.view(dtype)` before torch 2.13 ("Batching rule not
    implemented for aten::view.dtype"): the vectorised engine's dropout must not use one. Each
    client draws its own mask, at the requested rate."""
    from torch.func import vmap
    from torch.overrides import TorchFunctionMode

    from feddmmr.model.sasrec import dropout

    class DtypeViews(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.view and any(
                isinstance(a, torch.dtype) for a in (*args[1:], *kwargs.values())
            ):
                self.seen.append(args[1:])
            return func(*args, **kwargs)

    torch.manual_seed(0)
    x = torch.ones(3, 50, 40)
    with DtypeViews() as views:
        y = vmap(lambda t: dropout(t, 0.1, training=True), randomness="different")(x)
    assert views.seen == []
    assert not torch.equal(y[0] == 0, y[1] == 0)  # one mask per client
    assert abs((y == 0).float().mean().item() - 26 / 256) < 0.01


def test_shared_negatives_score_as_the_same_candidates_given_per_target():
    """score_shared([target] + shared) equals the per-target scores of [target, shared...], except
    where a shared item is the position's target: masked, so that it is no negative there."""
    torch.manual_seed(0)
    model = make_model(max_seq_len=10)
    sequences = torch.randint(1, 51, (3, 10))
    targets = torch.randint(1, 51, (3, 10))
    shared = torch.tensor([5, 17, 33, 2, 49])
    targets[0, 3] = 17  # an accidental hit
    scores = model(sequences, targets.unsqueeze(-1), shared)
    explicit = model(sequences, torch.cat([targets.unsqueeze(-1), shared.expand(3, 10, -1)], dim=-1))
    hit = torch.cat([torch.zeros(3, 10, 1, dtype=torch.bool), shared == targets.unsqueeze(-1)], dim=-1)
    assert hit.sum() >= 1 and hit[0, 3, 2]
    torch.testing.assert_close(scores[~hit], explicit[~hit])
    assert (scores[hit] == MASKED_SCORE).all()


def test_gbce_weights_the_positive_by_beta_and_masked_negatives_add_nothing():
    scores = torch.tensor([[2.0, -1.0, 0.5, MASKED_SCORE]])  # positive, two negatives, one masked
    expected = (
        -0.25 * F.logsigmoid(torch.tensor(2.0))
        - F.logsigmoid(torch.tensor(1.0))
        - F.logsigmoid(torch.tensor(-0.5))
    )
    torch.testing.assert_close(per_target_loss(scores, "gbce", beta=0.25), expected.reshape(1))
    # beta 1 is plain binary cross-entropy: the positive labelled 1, the (unmasked) negatives 0
    bce = F.binary_cross_entropy_with_logits(scores[0, :3], torch.tensor([1.0, 0.0, 0.0]), reduction="sum")
    torch.testing.assert_close(per_target_loss(scores, "gbce", beta=1.0)[0], bce)


def test_gbce_beta_follows_the_sampling_rate_and_calibration():
    assert gbce_beta(4, 101, t=0.0) == 1.0  # plain BCE
    assert gbce_beta(4, 101, t=1.0) == pytest.approx(4 / 100)  # alpha: calibrated to the catalogue
    assert gbce_beta(4, 101, t=0.75) == pytest.approx(0.04 * (0.75 * (1 - 25) + 25))  # gSASRec's formula
    assert gbce_beta(100, 101, t=0.75) == pytest.approx(1.0)  # every item a negative: nothing to correct


def test_full_softmax_loss_is_cross_entropy_over_every_item():
    torch.manual_seed(0)
    model = make_model(max_seq_len=10)
    sequences = torch.randint(1, 51, (2, 10))
    targets = torch.randint(1, 51, (2, 10))
    targets[1, :4] = 0  # padding
    scores = model(sequences, targets.unsqueeze(-1), every_item(model.item_embedding.weight))
    total, count = next_item_loss(scores, targets > 0, "ce-full")
    hidden = model.encode(sequences)  # the reference: a softmax over items 1..50 at every position
    reference = torch.nn.functional.cross_entropy(
        (hidden @ model.item_embedding.weight[1:].T)[targets > 0], targets[targets > 0] - 1, reduction="sum"
    )
    assert int(count) == 16
    torch.testing.assert_close(total, reference)


def test_the_fast_full_softmax_loss_equals_the_scored_one_in_value_and_gradient():
    """SASRec.full_softmax_loss (real positions only, fused) against forward + next_item_loss over
    every item: the same loss, the same gradient, and the padding row gets none."""
    model = make_model(max_seq_len=10).train()
    sequences = torch.randint(1, 51, (3, 10))
    sequences[0, :6] = 0
    targets = torch.randint(1, 51, (3, 10))
    targets[0, :6] = 0

    def gradients(loss_of):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        total, count = loss_of()
        (total / count).backward()
        return total.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters()}

    slow = gradients(
        lambda: next_item_loss(
            model(sequences, targets.unsqueeze(-1), every_item(model.item_embedding.weight)),
            targets > 0,
            "ce-full",
        )
    )
    fast = gradients(lambda: model.full_softmax_loss(sequences, targets))
    torch.testing.assert_close(fast[0], slow[0])
    assert int(fast[1]) == int(slow[1]) == 24
    for name, grad in slow[2].items():
        torch.testing.assert_close(fast[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert not fast[2]["item_embedding.weight"][0].any()
