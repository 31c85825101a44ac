import pytest
import torch

from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig, recent_items
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
    assert torch.equal(
        model.score_last(seq, cands[:, -1], mem, mask), reference.score_last(seq, cands[:, -1])
    )


def test_scores_of_the_last_position_match_the_full_forward():
    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq, cands, mem, mask = inputs()
    torch.testing.assert_close(
        model(seq, cands, mem, mask)[:, -1], model.score_last(seq, cands[:, -1], mem, mask)
    )


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
        FedDMMR(
            FedDMMRConfig(SASRecConfig(num_items=50, max_seq_len=8, hidden_dim=16, num_heads=2)), feats, avail
        )


def test_full_ranking_scores_match_sampled_scores_and_chunking_changes_nothing():
    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq, cands, mem, mask = inputs()
    every = model.score_all_last(seq, mem, mask)
    assert every.shape == (3, 41)
    torch.testing.assert_close(every.gather(1, cands[:, -1]), model.score_last(seq, cands[:, -1], mem, mask))
    torch.testing.assert_close(model.score_all_last(seq, mem, mask, max_elements=100), every)


def test_aux_outputs_and_the_auxiliary_losses():
    from feddmmr.model.losses import AuxiliaryWeights, feddmmr_loss, next_item_loss

    model = FedDMMR(FedDMMRConfig(CONFIG), *text_features()).eval()
    seq, cands, mem, mask = inputs()
    cands[0, :3] = 0  # padding targets
    scores, aux = model(seq, cands, mem, mask, with_aux=True)
    assert torch.equal(scores, model(seq, cands, mem, mask))
    assert aux.router_weights.shape == (3, 8, 5, 1) and aux.expert_positive.shape == (3, 8, 1, 16)
    total, main = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=0.0))
    loss_sum, count = next_item_loss(scores, cands[..., 0] > 0)
    torch.testing.assert_close(total, loss_sum / count)
    torch.testing.assert_close(main, loss_sum / count)
    # One expert: its router weight is 1, so the load-balance term is exactly zero.
    assert torch.equal(feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=1.0))[0], total)
    # Alignment, by hand: mean_i (1 - cos(fused_i, E[pos_i])) * (1 + 0.5 sigmoid(CE_i)) over real targets.
    aligned, _ = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=0.0, alignment=0.5))
    valid = cands[..., 0] > 0
    per_target = torch.logsumexp(scores, -1) - scores[..., 0]
    cosine = torch.nn.functional.cosine_similarity(
        aux.fused_positive, model.sasrec.item_embedding(cands[..., 0]), dim=-1
    )
    expected = ((1 - cosine) * (1 + 0.5 * torch.sigmoid(per_target)))[valid].mean()
    torch.testing.assert_close(aligned, total + 0.5 * expected)


def test_stage_one_scores_as_sasrec():
    model = FedDMMR(FedDMMRConfig(CONFIG, mixture=False), *text_features()).eval()
    reference = SASRec(CONFIG).eval()
    reference.load_state_dict(model.sasrec.state_dict())
    seq, cands, mem, mask = inputs()
    assert torch.equal(model(seq, cands, mem, mask), reference(seq, cands))


def test_uniform_router_weighs_the_available_modalities_equally_and_has_no_parameters():
    features, available = text_features()
    torch.manual_seed(2)
    features["genre"] = torch.nn.functional.normalize(torch.randn(41, 6), dim=-1)
    available["genre"] = available["text"].clone()
    available["genre"][1:11] = False  # items 1-10 have no genre feature
    model = FedDMMR(FedDMMRConfig(CONFIG, learned_router=False), features, available).eval()
    assert not hasattr(model, "router") and not any(
        name.startswith("router") for name, _ in model.named_parameters()
    )
    learned = FedDMMR(FedDMMRConfig(CONFIG), features, available)
    assert any(name.startswith("router.") for name, _ in learned.named_parameters())
    seq, cands, mem, mask = inputs()
    weights, _ = model.experts_and_router(cands, mem, mask)  # modalities in name order: genre, text
    genre_missing = (cands >= 1) & (cands <= 10)
    expected = torch.where(genre_missing.unsqueeze(-1), torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]))
    assert genre_missing.any() and (~genre_missing).any()
    torch.testing.assert_close(weights, expected)
    routed, _ = learned.eval().experts_and_router(
        cands, mem, mask
    )  # the MLP: weights vary, unavailable ones 0
    torch.testing.assert_close(routed.sum(-1), torch.ones(cands.shape))
    assert torch.equal(routed[..., 0][genre_missing], torch.zeros(int(genre_missing.sum())))
    assert routed[..., 0][~genre_missing].std() > 0


def test_the_expert_computes_its_definition():
    """The folded products equal the expert written out: attention of query(q) over key(M),
    q = projection(feature) where the feature is available, else the ID embedding."""
    from feddmmr.model.feddmmr import ModalityExpert

    torch.manual_seed(3)
    expert, projection = ModalityExpert(16, dropout=0.0), torch.nn.Linear(12, 16)
    features, fallback = torch.randn(2, 3, 4, 12), torch.randn(2, 3, 4, 16)
    available = torch.rand(2, 3, 4) > 0.3
    memory = torch.randn(2, 5, 16)
    allowed = torch.rand(2, 3, 4, 5) > 0.4
    allowed[0, 0, 0] = False  # a candidate with no usable slot: output of an empty attention
    queries = torch.where(available.unsqueeze(-1), projection(features), fallback)
    scores = torch.einsum("blnd,bkd->blnk", expert.query(queries), expert.key(memory)) / 4.0
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    expected = torch.relu(
        expert.norm(expert.out(torch.einsum("blnk,bkd->blnd", weights, expert.value(memory))))
    )
    got = expert(features, available, projection, fallback, memory, allowed)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0, 0, 0], torch.relu(expert.norm(expert.out.bias)))


def test_recent_items_are_each_positions_last_k_inputs():
    seq = torch.tensor([[0, 0, 4, 5, 6]])
    assert recent_items(seq, 2).tolist() == [[[0, 0], [0, 0], [0, 4], [4, 5], [5, 6]]]
    assert recent_items(seq, 1).tolist() == [[[0], [0], [4], [5], [6]]]


def test_content_match_adds_the_weighted_highest_cosine_with_the_users_last_items():
    feats, avail = text_features()
    avail["text"][5] = False  # item 5 has no feature: its row is zeros
    feats["text"][5] = 0
    torch.manual_seed(0)
    plain = FedDMMR(FedDMMRConfig(CONFIG), feats, avail).eval()
    torch.manual_seed(0)
    matched = FedDMMR(FedDMMRConfig(CONFIG, content_history=2), feats, avail).eval()
    assert matched.load_state_dict(plain.state_dict(), strict=False).missing_keys == ["match_weights"]
    with torch.no_grad():
        matched.match_weights.fill_(0.3)
    seq = torch.tensor([[0, 0, 0, 3, 5, 9, 7, 2]])
    cands = torch.tensor([7, 5, 11]).expand(1, 8, 3)  # 5: no feature
    memory = torch.tensor([[3, 7, 9, 0]])
    extra = matched(seq, cands, memory, memory > 0) - plain(seq, cands, memory, memory > 0)
    f = feats["text"]

    def best(candidate, items):  # the highest cosine with the usable items; 0 with none
        return max((float(f[candidate] @ f[i]) for i in items), default=0.0)

    # Position t reads items t-1 and t: nothing (padding), then 3, then 3 and 5 (5 has no feature) ...
    reads = [[], [], [], [3], [3], [9], [9, 7], [7, 2]]
    expected = torch.tensor(
        [[[0.3 * 16**0.5 * best(c, items) if c != 5 else 0.0 for c in (7, 5, 11)] for items in reads]]
    )
    torch.testing.assert_close(extra, expected)
    # The last position's scores are what evaluation reads, one candidate set or every item.
    torch.testing.assert_close(
        matched.score_last(seq, cands[:, -1], memory, memory > 0)
        - plain.score_last(seq, cands[:, -1], memory, memory > 0),
        expected[:, -1],
    )
    every = matched.score_all_last(seq, memory, memory > 0) - plain.score_all_last(seq, memory, memory > 0)
    torch.testing.assert_close(every[:, [7, 5, 11]], expected[:, -1])
    assert matched.scalars() == {"gate": pytest.approx(0.1), "match_weights": {"text": pytest.approx(0.3)}}


def test_content_match_weights_start_at_the_gate_init_and_get_gradients():
    model = FedDMMR(FedDMMRConfig(CONFIG, content_history=5), *text_features())
    assert model.match_weights.tolist() == pytest.approx([0.1])
    seq, cands, mem, mask = inputs()
    model(seq, cands, mem, mask).sum().backward()
    assert model.match_weights.grad is not None and model.match_weights.grad.abs().sum() > 0


def parameter_gradients(model, loss):
    """Each parameter's gradient of `loss` (zeros where it gets none)."""
    model.zero_grad()
    loss.backward()
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def gradients(model, seq, cands, mem, mask):
    """Each parameter's gradient of the summed scores."""
    return parameter_gradients(model, model(seq, cands, mem, mask).sum())


def test_held_out_positions_train_only_the_modality_side_and_the_others_only_the_backbone_on_its_own_score():
    torch.manual_seed(0)
    plain = FedDMMR(FedDMMRConfig(CONFIG, content_history=3), *text_features())
    held = FedDMMR(FedDMMRConfig(CONFIG, content_history=3, holdout_content=True), *text_features())
    held.load_state_dict(plain.state_dict())
    seq, cands, mem, mask = inputs()
    # The last position scores as the full model, the others as the backbone alone (what each trains).
    scores = held(seq, cands, mem, mask)
    torch.testing.assert_close(scores[:, -1], plain(seq, cands, mem, mask)[:, -1])
    torch.testing.assert_close(scores[:, :-1], plain.sasrec(seq, cands)[:, :-1])
    assert not torch.allclose(scores[:, :-1], plain(seq, cands, mem, mask)[:, :-1])
    # Evaluation scores with the full model, at every position.
    torch.testing.assert_close(
        held.score_last(seq, cands[:, 0], mem, mask), plain.score_last(seq, cands[:, 0], mem, mask)
    )
    torch.testing.assert_close(held.eval()(seq, cands, mem, mask), plain.eval()(seq, cands, mem, mask))
    held.train()
    last_only, all_but_last = cands.clone(), cands.clone()
    last_only[:, :-1] = 0  # padding candidates: the item embedding's row 0, which gets no gradient
    all_but_last[:, -1] = 0
    from_last = gradients(held, seq, last_only, mem, mask)
    from_rest = gradients(held, seq, all_but_last, mem, mask)
    reference = gradients(plain, seq, cands, mem, mask)
    trained = [name for name, grad in reference.items() if grad.any()]  # one modality: the router is unused
    assert len(trained) > 20
    for name in trained:
        backbone = name.startswith("sasrec.")
        assert bool(from_last[name].any()) is not backbone, name  # the last position: the modality side only
        assert bool(from_rest[name].any()) is backbone, name  # the others: the backbone only
    # All positions at once: the sum of the two parts (no position's loss reaches the other side).
    both = gradients(held, seq, cands, mem, mask)
    for name, grad in both.items():
        torch.testing.assert_close(grad, from_last[name] + from_rest[name], msg=name)


def test_holdout_backbone_trains_the_backbone_on_every_target_and_the_side_on_the_last_on_top_of_it():
    from feddmmr.model.losses import AuxiliaryWeights, feddmmr_loss, next_item_loss

    torch.manual_seed(0)
    plain = FedDMMR(FedDMMRConfig(CONFIG, content_history=3), *text_features())
    both = FedDMMR(
        FedDMMRConfig(CONFIG, content_history=3, holdout_content=True, holdout_backbone=True),
        *text_features(),
    )
    both.load_state_dict(plain.state_dict())
    seq, cands, mem, mask = inputs()
    cands[0, -1] = 0  # a padded last target: it trains neither side
    valid = cands[..., 0] > 0
    scores, aux = both(seq, cands, mem, mask, with_aux=True)
    # Every position scores as the backbone alone; the last one's stacked score rides in aux.
    torch.testing.assert_close(scores, plain.sasrec(seq, cands))
    torch.testing.assert_close(aux.held_out_scores, plain(seq, cands, mem, mask)[:, -1:])
    torch.testing.assert_close(both.eval()(seq, cands, mem, mask), plain.eval()(seq, cands, mem, mask))
    both.train()
    plain.train()
    objective, _ = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=0.0))
    count = valid.sum()
    backbone_loss = next_item_loss(plain.sasrec(seq, cands), valid, "ce")[0] / count
    side_loss = next_item_loss(plain(seq, cands, mem, mask)[:, -1:], valid[:, -1:], "ce")[0] / count
    torch.testing.assert_close(objective, backbone_loss + side_loss)  # the padded target adds nothing
    got = parameter_gradients(both, objective)
    from_backbone_loss = parameter_gradients(plain, backbone_loss)
    from_side_loss = parameter_gradients(plain, side_loss)
    side = [n for n, g in from_side_loss.items() if not n.startswith("sasrec.") and g.any()]
    assert len(side) > 10
    for name, grad in got.items():
        # The backbone learns from its own loss only; the side from the last targets only.
        expected = from_backbone_loss[name] if name.startswith("sasrec.") else from_side_loss[name]
        torch.testing.assert_close(grad, expected, msg=name)


def test_held_out_the_modality_side_and_its_auxiliary_losses_cover_the_last_targets_only():
    from feddmmr.model.losses import AuxiliaryWeights, feddmmr_loss, next_item_loss

    torch.manual_seed(0)
    features, available = text_features()
    features["genre"] = torch.nn.functional.normalize(torch.randn(41, 6), dim=-1)
    available["genre"] = torch.rand(41) < 0.7  # some candidates have no genre: the router masks it
    plain = FedDMMR(FedDMMRConfig(CONFIG, content_history=3), features, available)
    both = FedDMMR(
        FedDMMRConfig(CONFIG, content_history=3, holdout_content=True, holdout_backbone=True),
        features,
        available,
    )
    both.load_state_dict(plain.state_dict())
    seq, cands, mem, mask = inputs()
    cands[0, -1] = 0  # a padded last target: no auxiliary term sees it
    scores, aux = both(seq, cands, mem, mask, with_aux=True)
    _, full = plain(seq, cands, mem, mask, with_aux=True)
    assert aux.router_weights.shape == (3, 1, 5, 2) and aux.expert_positive.shape == (3, 1, 2, 16)
    for name in ("router_weights", "expert_positive", "fused_positive", "positive_embedding"):
        torch.testing.assert_close(
            getattr(aux, name), getattr(full, name)[:, -1:], msg=name
        )  # the full model's, at the last position
    base, main = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=0.0))
    # Load balance, by hand: the mean router weight over the last position's real candidates.
    balanced, _ = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=1.0))
    live = (cands[:, -1] > 0) & (cands[:, -1, :1] > 0)  # [B, n]: real candidates of real targets
    mean_weight = full.router_weights[:, -1][live].mean(0)
    torch.testing.assert_close(balanced, base + ((mean_weight - 0.5) ** 2).sum())
    # Alignment, by hand: a mean over the real last targets, weighed by their held-out loss.
    aligned, _ = feddmmr_loss(scores, aux, cands, "ce", AuxiliaryWeights(load_balance=0.0, alignment=0.5))
    last = plain(seq, cands, mem, mask)[:, -1]
    surprise = 1 + 0.5 * torch.sigmoid(torch.logsumexp(last, -1) - last[:, 0])
    cosine = torch.nn.functional.cosine_similarity(
        full.fused_positive[:, -1], plain.sasrec.item_embedding(cands[:, -1, 0]), dim=-1
    )
    valid = cands[:, -1, 0] > 0
    torch.testing.assert_close(aligned, base + 0.5 * ((1 - cosine) * surprise)[valid].mean())
    # The next-item loss itself still covers every target, on the backbone's scores.
    loss_sum, count = next_item_loss(plain.sasrec(seq, cands), cands[..., 0] > 0)
    torch.testing.assert_close(main, loss_sum / count)
