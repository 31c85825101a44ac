"""flower/engine.py as transport: which replies it can aggregate, and how it exchanges messages
with the nodes (a fake Grid: no SuperLink, no simulation)."""

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("flwr")

from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.federated.local import ClientReport  # noqa: E402
from feddmmr.flower.engine import FlowerEngine, _mismatch  # noqa: E402
from feddmmr.flower.messages import TrainReply  # noqa: E402

TRAINED = {"w": torch.zeros(3, 2)}


def reply(weight, num_targets, dropped=(), shape=(3, 2)):
    reports = [ClientReport(user, 0.5, 2, 0, dropped=user in dropped) for user in num_targets]
    return TrainReply({"w": torch.zeros(shape)}, weight, num_targets, reports)


def test_a_reply_matching_the_servers_users_and_model_can_be_aggregated():
    assert _mismatch(reply(7.0, {1: 3, 2: 4}), {1: 3, 2: 4}, TRAINED, clipped=False) is None
    assert _mismatch(reply(2.0, {1: 3, 2: 4}), {1: 3, 2: 4}, TRAINED, clipped=True) is None  # DP: 1 a user
    # a user whose update the node dropped is not in the node's weight
    assert _mismatch(reply(4.0, {1: 3, 2: 4}, dropped={1}), {1: 3, 2: 4}, TRAINED, clipped=False) is None


def test_a_reply_of_other_data_or_another_model_is_refused_with_the_reason():
    other_data = _mismatch(reply(9.0, {1: 5, 2: 4}), {1: 3, 2: 4}, TRAINED, clipped=False)
    assert "the node's data does not match the server's" in other_data
    other_model = _mismatch(reply(7.0, {1: 3, 2: 4}, shape=(4, 2)), {1: 3, 2: 4}, TRAINED, clipped=False)
    assert other_model is not None and "(4, 2)" in other_model
    # masked (secure aggregation): only the report can be checked
    assert (
        _mismatch(reply(7.0, {1: 3, 2: 4}, shape=(4, 2)), {1: 3, 2: 4}, TRAINED, False, secure=True) is None
    )


class FakeGrid:
    """Accepts every message but those to `refused`; only the nodes in `answering` reply."""

    def __init__(self, answering, refused=()):
        self.answering, self.refused, self.pushed = set(answering), set(refused), []

    def push_messages(self, messages):
        accepted = [m for m in messages if m.metadata.dst_node_id not in self.refused]
        self.pushed += accepted
        return [m.metadata.message_id for m in accepted]

    def pull_messages(self, ids):
        out = [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m.metadata.message_id))
            for m in self.pushed
            if m.metadata.message_id in ids and m.metadata.dst_node_id in self.answering
        ]
        self.pushed = [
            m
            for m in self.pushed
            if m.metadata.message_id not in {r.metadata.reply_to_message_id for r in out}
        ]
        return out


def message(message_id, node):
    return SimpleNamespace(metadata=SimpleNamespace(message_id=message_id, dst_node_id=node))


def test_the_exchange_collects_the_replies_and_says_why_each_other_node_has_none():
    engine = FlowerEngine(
        FakeGrid(answering={1}, refused={3}), TrainConfig(flower_round_timeout=0.3), [], [0]
    )
    seen = []
    replies, missing = engine._exchange([message("a", 1), message("b", 2), message("c", 3)], seen.append)
    assert set(replies) == {1} and seen == [1]
    assert missing == {
        3: "the SuperLink did not accept the message",
        2: "no reply within flower_round_timeout=0.3 s",
    }


def test_users_are_routed_to_the_node_that_holds_them_and_the_others_are_left_out(caplog):
    engine = FlowerEngine(FakeGrid(answering=()), TrainConfig(), ["u0", "u1", "u2"], [0])
    engine.owner = {0: 11, 2: 12}
    assert engine._route([0, 1, 2], round_number=4) == {11: [0], 12: [2]}
    assert "round 4: no connected node holds users [u1]" in caplog.text
