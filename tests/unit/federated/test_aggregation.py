"""federated/aggregation.py: FedAvg and the server optimisers."""

import pytest
import torch

from feddmmr.federated.aggregation import FedAvg


def test_fedavg_weights_by_training_targets():
    global_params = {"w": torch.zeros(2)}
    aggregator = FedAvg(global_params)
    aggregator.add({"w": torch.tensor([[1.0, 1.0], [4.0, 0.0]])}, torch.tensor([1.0, 3.0]))
    aggregator.add({"w": torch.tensor([[0.0, 8.0]])}, torch.tensor([4.0]))
    assert torch.allclose(aggregator.result()["w"], torch.tensor([13 / 8, 33 / 8]))
    assert aggregator.num_clients == 3


def test_fedavg_without_clients_keeps_the_global_model():
    global_params = {"w": torch.ones(2)}
    assert torch.equal(FedAvg(global_params).result()["w"], torch.ones(2))


def test_fedavgm_accumulates_the_average_change_and_keeps_its_buffer():
    from feddmmr.federated.aggregation import ServerMomentum

    server = ServerMomentum(lr=2.0, momentum=0.5)
    first = server.step({"w": torch.zeros(2)}, {"w": torch.tensor([1.0, -2.0])})
    torch.testing.assert_close(first["w"], torch.tensor([2.0, -4.0]))  # buffer = delta, lr 2
    restored = ServerMomentum(lr=2.0, momentum=0.5)
    restored.load_state_dict(server.state_dict())
    target = {"w": torch.tensor([3.0, -4.0])}  # delta (1, 0): buffer 0.5 * (1, -2) + (1, 0)
    torch.testing.assert_close(server.step(first, target)["w"], torch.tensor([5.0, -6.0]))
    torch.testing.assert_close(restored.step(first, target)["w"], torch.tensor([5.0, -6.0]))
    plain = ServerMomentum(lr=1.0, momentum=0.0)  # momentum 0, lr 1: FedAvg adopts the average
    torch.testing.assert_close(plain.step({"w": torch.zeros(2)}, target)["w"], target["w"])


def test_fedadam_steps_along_the_average_and_keeps_its_moments():
    from feddmmr.federated.aggregation import ServerAdam

    server = ServerAdam(lr=0.1, betas=(0.5, 0.5), tau=0.0)
    new = server.step({"w": torch.zeros(2)}, {"w": torch.tensor([2.0, -0.5])})
    # m = 0.5 * delta, v = 0.5 * delta^2 -> step = lr * 0.5 d / (sqrt(0.5) |d|) = lr * sign(d) / sqrt(2)
    torch.testing.assert_close(new["w"], torch.tensor([0.1, -0.1]) / 2**0.5)
    restored = ServerAdam(lr=0.1, betas=(0.5, 0.5), tau=0.0)
    restored.load_state_dict(server.state_dict())
    again = {"w": torch.tensor([1.0, 1.0])}
    torch.testing.assert_close(restored.step(new, again)["w"], server.step(new, again)["w"])


def test_the_server_optimiser_follows_the_config():
    from feddmmr.config import TrainConfig
    from feddmmr.federated.aggregation import ServerAdam, ServerMomentum
    from feddmmr.run_setup import make_server_optimizer

    default = make_server_optimizer(TrainConfig())
    assert isinstance(default, ServerAdam) and (default.lr, default.tau) == (8e-3, 1e-6)
    tuned = make_server_optimizer(TrainConfig(server_learning_rate=0.5, server_epsilon=1e-3))
    assert (tuned.lr, tuned.tau) == (0.5, 1e-3)
    # epsilon keeps a change far below it from becoming a full step: 1e-9 moves by lr * ~1e-3
    tiny = tuned.step({"w": torch.zeros(1)}, {"w": torch.tensor([1e-9])})["w"]
    assert 0 < float(tiny) < 1e-6
    momentum = make_server_optimizer(TrainConfig(server_optimizer="fedavgm", server_momentum=0.5))
    assert isinstance(momentum, ServerMomentum) and momentum.momentum == 0.5
    assert make_server_optimizer(TrainConfig(server_optimizer="fedavg")) is None
    with pytest.raises(ValueError, match=r"server_epsilon: expected a number >= 0, got -1"):
        TrainConfig(server_epsilon=-1)
    with pytest.raises(ValueError, match=r"server_learning_rate: expected a number > 0, got 0.0"):
        TrainConfig(server_learning_rate=0)
