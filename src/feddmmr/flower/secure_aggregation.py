"""Secure aggregation of a round's updates with Flower's SecAgg+ (`flower_secure_aggregation`).

The server learns only the weighted mean of the nodes' updates, never one node's: each node
masks its update with pairwise masks that cancel in the sum (Bell et al. 2020), and masks of
nodes that drop out mid-round are rebuilt from secret shares held by the others. Flower carries
the protocol: its `SecAggPlusWorkflow` on the server and `secaggplus_mod` on the nodes. This
module fits them to our messages:

- The workflow is written for Flower's legacy strategies: `_Workflow` hands it our train
  messages and a minimal strategy that keeps the mean it unmasks, and the server reads each
  node's report (its users' losses and target counts, which are not secret) from the replies.
- On a node, `secure_aggregation_mod` applies `secaggplus_mod` to the train messages of a
  secure round only, turning the node's reply into the layout it masks: the node's update (its
  users' FedAvg mean minus the global weights, in sorted name order) and its FedAvg weight.

Updates, not weights, are masked: SecAgg+ quantizes each value into [-range, range] (32-bit
fixed point, step 2 * range / 2**22), and updates are small, so a small range keeps the step
fine. A node whose update leaves the range fails the round with an error naming the tensor,
rather than being clipped silently. The quantization rounds stochastically (unbiased) with
numpy's global generator, which the mod seeds from the run's seed, the round and the node's
users so that runs repeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from feddmmr import streams
from feddmmr.flower import messages
from feddmmr.flower.node_data import node_seed

# Shares and reconstruction threshold, as fractions of the round's nodes: every node shares its
# secrets with all others, and the masks of up to half of them can be rebuilt if they drop out.
NUM_SHARES, RECONSTRUCTION_THRESHOLD = 1.0, 0.5


def secure_mean_update(
    grid: Grid,
    round_number: int,
    contents: dict[int, RecordDict],
    weights: dict[int, float],
    names: list[str],
    clipping_range: float,
    timeout: float,
) -> tuple[dict[str, torch.Tensor] | None, dict[int, Message]]:
    """Run one round's training through SecAgg+.

    `contents`: each node's train message content, for at least 2 nodes (the engine skips a round
    with one: a "sum" of one update is that update); `weights`: the FedAvg weight the server
    expects of each node; `names`: the trained weights. Returns the weighted mean of the updates
    of the nodes that answered, by name (None when the protocol could not finish), and the
    nodes' replies: train replies (their reports; the updates stayed masked) or error replies.
    """
    strategy = _KeepMean(list(contents))
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=strategy
    )
    context.state[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_number})
    context.state[MAIN_PARAMS_RECORD] = ArrayRecord()
    recorder = _RecordTrainReplies(grid)
    workflow = _Workflow(
        contents,
        num_shares=NUM_SHARES,
        reconstruction_threshold=RECONSTRUCTION_THRESHOLD,
        max_weight=max(weights.values()),
        clipping_range=clipping_range,
        timeout=timeout,
    )
    workflow(recorder, context)
    mean = (
        None
        if strategy.mean is None
        else {
            name: torch.from_numpy(np.asarray(array, dtype=np.float32))
            for name, array in zip(names, strategy.mean)
        }
    )
    return mean, recorder.replies


class _Workflow(SecAggPlusWorkflow):
    """SecAgg+ whose training messages are ours (the legacy workflow builds them from FitIns)."""

    def __init__(self, contents: dict[int, RecordDict], **settings) -> None:
        super().__init__(**settings)
        self.contents = contents

    def setup_stage(self, grid, context, state) -> bool:
        done = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {node: self.contents[node] for node in state.nid_to_fitins}
        return done


class _KeepMean:
    """The part of a legacy strategy the workflow calls: which nodes train, and what to do with
    the unmasked weighted mean of their updates (keep it)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        self.mean: list[np.ndarray] | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        placeholder = FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {})
        return [(SimpleNamespace(node_id=node), placeholder) for node in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class _RecordTrainReplies:
    """The grid, keeping the train replies (the nodes' reports) that the workflow reads and drops."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.replies: dict[int, Message] = {}

    def send_and_receive(self, sent, *, timeout=None):
        received = self.grid.send_and_receive(sent, timeout=timeout)
        for reply in received:
            if reply.has_error() or messages.REPORT in reply.content:
                self.replies.setdefault(reply.metadata.src_node_id, reply)
        return received


# --- on the nodes ----------------------------------------------------------------------------


def secure_aggregation_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """SecAgg+ on the train messages of a secure round (they carry its stage); others pass through."""
    if RECORD_KEY_CONFIGS not in message.content:
        return call_next(message, context)
    if messages.ROUND not in message.content:  # key exchange and unmasking: no training, no quantization
        return secaggplus_mod(message, context, call_next)
    config, request = messages.read_config(message), messages.read_train_request(message)
    with _numpy_seeded(node_seed(config.seed, request.user_ids, request.round, streams.SECAGG_ROUNDING)):
        return secaggplus_mod(
            message, context, lambda m, c: _as_update(m, call_next(m, c), config.flower_secagg_clipping_range)
        )


def _as_update(message: Message, reply: Message, clipping_range: float) -> Message:
    """The node's train reply in the layout secaggplus_mod masks: its update and weight
    (`fitres.*` records); its report travels alongside, unmasked."""
    if reply.has_error():
        return reply
    received = messages.read_train_reply(reply)
    global_params = messages.read_params(message)
    names = sorted(received.params)
    update = [(received.params[name] - global_params[name]).numpy() for name in names]
    for name, values in zip(names, update):
        largest = float(np.abs(values).max(initial=0.0))
        if largest > clipping_range:
            raise ValueError(
                f"update of {name} reaches {largest:.3g}, outside flower_secagg_clipping_range="
                f"{clipping_range:g}: secure aggregation would clip it; raise the range"
            )
    weight = received.weight
    if weight != int(weight):
        raise ValueError(f"secure aggregation needs an integer FedAvg weight, got {weight}")
    content = compat.fitres_to_recorddict(
        FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(weight), {}), keep_input=False
    )
    content[messages.REPORT] = MetricRecord(dict(reply.content[messages.REPORT]))
    return Message(content, reply_to=message)


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global generator (SecAgg+'s stochastic rounding) seeded, and restored after."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)
