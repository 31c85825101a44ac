"""The ClientApp: a SuperNode trains the sampled users it holds, with the local engines' code.

- query: reply with the ids of the users this node holds (the server routes by them).
- train: rebuild each user's batches from the node's own data with the same pure function and
  random stream as the local engines (`make_client_batches(..., client_rng(seed, round, user))`),
  run `SequentialEngine`/`VectorizedEngine.train` over them with a FedAvg over the node's users,
  and reply with that mean and its weight. One node may hold one user (cross-device) or many.

Node config (`flower-supernode --node-config "..."`; see node_data.py for the data keys):
    engine = "vectorized" | "sequential"   the local engine (default vectorized)
    device = "auto" | "cpu" | "cuda:N"     where the node trains (default auto)

The node's torch RNG (dropout) and fp16 loss scale persist in its Context, never sent.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from feddmmr.config import TrainConfig
from feddmmr.engines import LocalTraining, make_engine
from feddmmr.engines.flower import messages
from feddmmr.engines.flower.node_data import load_node_data
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import BatchSettings, client_rng, make_client_batches
from feddmmr.federated.precision import Precision, resolve_amp
from feddmmr.train import build_model, resolve_device

LOCAL_ENGINE, DEVICE = "engine", "device"
RNG_STATE, PRECISION_STATE = "rng", "precision"


def make_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """`mods` wrap every handler (Flower's hook for e.g. DP clipping or message-size limits)."""
    client = ClientApp(mods=list(mods))
    client.query()(report_users)
    client.train()(train_users)
    return client


def report_users(message: Message, context: Context) -> Message:
    data = load_node_data(context.node_config, messages.read_config(message))
    return Message(messages.node_users_content(data.user_ids()), reply_to=message)


def train_users(message: Message, context: Context) -> Message:
    config = messages.read_config(message)
    request = messages.read_train_request(message)
    data = load_node_data(context.node_config, config)
    sequences = data.training_sequences(request.user_ids, request.item_ids)

    device = resolve_device(str(context.node_config.get(DEVICE, "auto")))
    model = build_model(config, len(request.item_ids), device)
    model.load_state_dict({n: p.to(device) for n, p in messages.read_params(message).items()}, strict=False)
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Exactly the batches run_round would build for these users on the server.
    settings = BatchSettings(max_len=config.max_seq_len, batch_size=config.batch_size, epochs=config.local_epochs,
                             num_negatives=config.num_negatives, num_items=len(request.item_ids))
    batches = [make_client_batches(user, sequence, settings, client_rng(config.seed, request.round, user))
               for user, sequence in zip(request.users, sequences)]

    engine = make_engine(str(context.node_config.get(LOCAL_ENGINE, "vectorized")), model,
                         chunk_clients=config.chunk_clients, chunk_windows=config.chunk_windows)
    precision = Precision(resolve_amp(config.amp, device), device.type)
    frozen = frozenset(request.frozen)
    aggregator = FedAvg(global_params)
    with node_state(context, config, data.user_ids(), precision):
        reports = engine.train(global_params, batches,
                               LocalTraining(config.learning_rate, config.weight_decay, config.loss, precision,
                                             frozen=frozen, clip_norm=config.dp_clip_norm),
                               aggregator.add)
    trained = {name: p for name, p in aggregator.result().items() if name not in frozen}
    content = messages.train_reply_content(trained, reports, {b.user: b.num_targets for b in batches},
                                           aggregator.total_weight)
    return Message(content, reply_to=message)


@contextlib.contextmanager
def node_state(context: Context, config: TrainConfig, user_ids: list[str], precision: Precision) -> Iterator[None]:
    """Continue this node's own random stream and loss scale from its last round, save them after."""
    state = context.state
    if RNG_STATE in state:
        saved = state[RNG_STATE].to_torch_state_dict()
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and precision.device_type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"])
    else:
        torch.manual_seed(node_seed(config.seed, user_ids))
    if PRECISION_STATE in state:
        precision.scale = float(state[PRECISION_STATE]["loss-scale"])
    yield
    rng = {"cpu": torch.get_rng_state()}
    if precision.device_type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state()
    state[RNG_STATE] = ArrayRecord(rng)
    state[PRECISION_STATE] = ConfigRecord({"loss-scale": precision.scale})


def node_seed(seed: int, user_ids: list[str]) -> int:
    """A seed of the node's own: nodes hold different users, so their streams differ."""
    digest = hashlib.sha256("\n".join(sorted(user_ids)).encode()).digest()
    return int(np.random.SeedSequence([seed, 5, int.from_bytes(digest[:8], "little")]).generate_state(1)[0])


app = make_client_app()
