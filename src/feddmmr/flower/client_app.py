"""The ClientApp: a SuperNode trains the sampled users it holds, with the local engines' code.

- query: reply with the ids of the users this node holds (the server routes by them).
- train: rebuild each user's batches from the node's own data with the same pure function and
  random stream as the local engines (`make_client_batches(..., client_rng(seed, round, user))`),
  run `SequentialEngine`/`VectorizedEngine.train` over them with a FedAvg over the node's users,
  and reply with that mean and its weight. One node may hold one user (cross-device) or many.
- evaluate (model=feddmmr): rank its users' held-out items with their memories and reply with
  the ranks and memory/router statistics (never the memories).

FedDMMR: the memories of the node's users live in its Context (and copies of them at validated
rounds the server may still test); they are created empty on the first message and never sent.
The node reads the modality feature files named in the run config from its own disk.

Node config (`flower-supernode --node-config "..."`; see node_data.py for the data keys):
    engine = "vectorized" | "sequential"   the local engine (default vectorized)
    device = "auto" | "cpu" | "cuda:N"     where the node trains (default auto)

The node's torch RNG (dropout) and fp16 loss scale persist in its Context, never sent.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from feddmmr import streams
from feddmmr.config import TrainConfig
from feddmmr.engines import make_engine
from feddmmr.evaluation import held_out_ranks, router_usage
from feddmmr.features.store import AlignedFeatures, load_modality
from feddmmr.federated.aggregation import FedAvg
from feddmmr.federated.batches import BatchSettings, client_rng, make_client_batches
from feddmmr.federated.local import LocalTraining, RoundContext
from feddmmr.federated.precision import Precision
from feddmmr.flower import messages
from feddmmr.flower.node_data import NodeData, load_node_data, node_seed
from feddmmr.flower.secure_aggregation import secure_aggregation_mod
from feddmmr.memory.clients import ClientMemories
from feddmmr.memory.two_tier import MemoryState, summary_totals
from feddmmr.run_setup import build_model, make_memories, resolve_device

LOCAL_ENGINE, DEVICE = "engine", "device"
RNG_STATE, PRECISION_STATE, MEMORY_STATE = "rng", "precision", "memory"


def make_client_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """`mods` wrap every handler (Flower's hook for e.g. DP clipping or message-size limits),
    inside the SecAgg+ mod (which acts on the train messages of secure rounds only)."""
    client = ClientApp(mods=[secure_aggregation_mod, *mods])
    client.query()(report_users)
    client.train()(train_users)
    client.evaluate()(evaluate_users)
    return client


def report_users(message: Message, context: Context) -> Message:
    data = load_node_data(context.node_config, messages.read_config(message))
    return Message(messages.node_users_content(data.user_ids()), reply_to=message)


def train_users(message: Message, context: Context) -> Message:
    config = messages.read_config(message)
    request = messages.read_train_request(message)
    data = load_node_data(context.node_config, config)
    sequences = data.training_sequences(request.user_ids, request.item_ids)

    model, features, precision = node_model(message, context, config, request.item_ids)
    device = next(model.parameters()).device
    global_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    # Exactly the batches the round's plan (rounds.py) would build for these users on the server.
    settings = BatchSettings.of(config, len(request.item_ids))
    batches = [
        make_client_batches(user, sequence, settings, client_rng(config.seed, request.round, user))
        for user, sequence in zip(request.users, sequences)
    ]

    engine = make_engine(
        str(context.node_config.get(LOCAL_ENGINE, "vectorized")),
        model,
        chunk_clients=config.chunk_clients,
        chunk_windows=config.chunk_windows,
        **settings.engine_negatives(),
    )
    frozen = frozenset(request.frozen)
    aggregator = FedAvg(global_params)
    memory = node_memories(context, config, data, request.users, request.user_ids, features, device)
    with node_state(context, config, data.user_ids(), precision):
        local = LocalTraining.of(config, len(request.item_ids), precision, memory=memory, frozen=frozen)
        result = engine.train(
            RoundContext(request.round, config.seed), global_params, batches, local, aggregator.add
        )
        precision.settle(result.loss_scales)  # kept in the node's Context for its next round
    if memory is not None:
        context.state[MEMORY_STATE] = ArrayRecord(memory.state.to_dict())
    trained = {name: p for name, p in aggregator.result().items() if name not in frozen}
    content = messages.train_reply_content(
        trained, result.reports, {b.user: b.num_targets for b in batches}, aggregator.total_weight
    )
    return Message(content, reply_to=message)


def evaluate_users(message: Message, context: Context) -> Message:
    """FedDMMR's validation and test, on the node: each user's scores read the user's memory."""
    config = messages.read_config(message)
    request, candidates = messages.read_eval_request(message)
    if config.model != "feddmmr":
        raise ValueError(
            f"evaluate messages are for model=feddmmr (memories on the nodes); the run has "
            f"model={config.model!r}, which the server evaluates itself"
        )
    data = load_node_data(context.node_config, config)
    model, features, precision = node_model(message, context, config, request.item_ids)
    device = next(model.parameters()).device

    # Validation reads the current memories, the test the copy kept at the best round.
    snapshot = MEMORY_STATE if request.which == "valid" else f"{MEMORY_STATE}@{request.memory_round}"
    memory = node_memories(context, config, data, request.users, request.user_ids, features, device, snapshot)
    users = memory.select(request.users, device)
    slots = memory.retrieve(users)
    eval_set = data.held_out_set(
        request.user_ids, request.item_ids, request.which, config.max_seq_len, candidates
    )
    ranks = held_out_ranks(model, eval_set, config.eval, precision=precision, memory=slots)
    # A validated round's memories are kept while the round may still prove the best; copies the
    # server no longer names are dropped.
    keep = set(request.keep_rounds)
    if request.which == "valid":
        context.state[f"{MEMORY_STATE}@{request.round}"] = ArrayRecord(memory.state.to_dict())
        keep.add(request.round)
    for key in [
        k for k in context.state if k.startswith(f"{MEMORY_STATE}@") and int(k.split("@")[1]) not in keep
    ]:
        del context.state[key]
    diagnostics = None
    if request.which == "valid":
        diagnostics = {
            "users": float(len(request.users)),
            **{f"memory.{k}": v for k, v in summary_totals(users).items()},
        }
        if model.mixes:
            usage = router_usage(model, eval_set, slots, precision=precision)
            diagnostics.update({f"router.{name}": weight for name, weight in usage.items()})
    return Message(
        messages.evaluate_reply_content(request.users, [int(r) for r in ranks], diagnostics), reply_to=message
    )


def node_model(message: Message, context: Context, config: TrainConfig, catalog: list[str]):
    """(the run's model with the message's global weights, its modality features, the precision)
    on this node's device."""
    device = resolve_device(str(context.node_config.get(DEVICE, "auto")))
    features = node_features(tuple(config.modality), tuple(catalog))
    model = build_model(config, len(catalog), device, features)
    model.load_state_dict({n: p.to(device) for n, p in messages.read_params(message).items()}, strict=False)
    return model, features, Precision.of(config.amp, device)


@dataclass
class NodeMemories(ClientMemories):
    """The memories of a node's users (rows in the node's own user order), addressed by the run's
    user indices, which the batches carry."""

    rows: dict[int, int] = field(default_factory=dict)

    def select(self, users, device: torch.device) -> MemoryState:
        return super().select([self.rows[int(u)] for u in users], device)

    def scatter(self, users, part: MemoryState) -> None:
        super().scatter([self.rows[int(u)] for u in users], part)


def node_memories(
    context: Context,
    config: TrainConfig,
    data: NodeData,
    users: list[int],
    user_ids: list[str],
    features: dict[str, AlignedFeatures],
    device: torch.device,
    record: str = MEMORY_STATE,
) -> NodeMemories | None:
    """FedDMMR: the memories of every user of the node saved under `record` (by default the
    current ones, empty at first), addressable by the `users` of the message; None for FedSASRec."""
    saved = record in context.state
    if not saved and record != MEMORY_STATE:
        raise RuntimeError(
            f"this node has no memories {record!r} (was it restarted?): the run's test needs "
            f"the memories of its best round"
        )
    # Empty memories for every user at first; later only the settings (0 users), the state is the saved one.
    fresh = make_memories(config, 0 if saved else len(data.user_ids()), features, device)
    if fresh is None:
        return None
    held = {uid: row for row, uid in enumerate(data.user_ids())}
    memory = NodeMemories(
        fresh.state, fresh.config, fresh.features, rows={u: held[uid] for u, uid in zip(users, user_ids)}
    )
    if saved:
        memory.state = MemoryState.from_dict(context.state[record].to_torch_state_dict())
    else:
        context.state[MEMORY_STATE] = ArrayRecord(memory.state.to_dict())
    return memory


@functools.lru_cache(maxsize=2)
def node_features(modality: tuple[str, ...], catalog: tuple[str, ...]) -> dict[str, AlignedFeatures]:
    """The run's modality features (the files its config names, read from this node's disk),
    aligned to the server's item catalog."""
    item_ids = np.array(["", *catalog])  # index 0: padding
    return {f.name: f for f in (load_modality(spec, item_ids) for spec in modality)}


@contextlib.contextmanager
def node_state(
    context: Context, config: TrainConfig, user_ids: list[str], precision: Precision
) -> Iterator[None]:
    """Continue this node's own random stream and loss scale from its last round, save them after."""
    state = context.state
    if RNG_STATE in state:
        saved = state[RNG_STATE].to_torch_state_dict()
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and precision.device_type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"])
    else:
        torch.manual_seed(node_seed(config.seed, user_ids, streams.NODE_TORCH))
    if PRECISION_STATE in state:
        precision.scale = float(state[PRECISION_STATE]["loss-scale"])
        precision.good_steps = int(state[PRECISION_STATE].get("good-steps", 0))
    yield
    rng = {"cpu": torch.get_rng_state()}
    if precision.device_type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state()
    state[RNG_STATE] = ArrayRecord(rng)
    state[PRECISION_STATE] = ConfigRecord({"loss-scale": precision.scale, "good-steps": precision.good_steps})


app = make_client_app()
