"""FlowerEngine: the engine interface, with each round's local updates done by Flower SuperNodes.

`train(global_params, clients, local, aggregate, progress)` behaves like the local engines for the
run loop, but only reads which users were sampled (`clients[i].user`) and their training-target
counts: each node rebuilds its users' batches from its own data (see client_app.py). Per round:

1. nodes that joined since the last round are asked which users they hold (a query message);
2. each node holding sampled users gets one train message (global weights, round, user ids);
3. replies are collected until all arrive or `flower_round_timeout` passes; a node that raised,
   timed out or sent data that does not match the server's is logged with its users and left
   out; the others' FedAvg means go to `aggregate`, weighted by their training targets (so the
   result is the FedAvg over every user that was trained, as in the local engines). With
   `flower_secure_aggregation`, steps 2-3 run through SecAgg+ (secure_aggregation.py) and the
   server receives only the weighted mean of the nodes' updates.

FedDMMR's memories stay on the nodes, so its validation and test run there too
(`evaluate_on_nodes`): every node ranks its users' held-out items with their memories and sends
back the ranks and memory/router statistics; the run turns the ranks into metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from feddmmr.config import TrainConfig
from feddmmr.errors import NodesLost
from feddmmr.evaluation import EvalSet
from feddmmr.federated.batches import ClientBatches
from feddmmr.federated.local import (
    Aggregate,
    ClientReport,
    LocalTraining,
    Progress,
    RoundContext,
    RoundResult,
)
from feddmmr.flower import messages
from feddmmr.flower.secure_aggregation import secure_mean_update
from feddmmr.memory.two_tier import summary_from_totals

log = logging.getLogger(__name__)

# How often the server polls for replies: short next to a round, long next to a pull's cost.
PULL_INTERVAL_SECONDS = 0.1


class FlowerEngine:
    def __init__(self, grid: Grid, config: TrainConfig, user_ids: Sequence, item_ids: Sequence) -> None:
        """`user_ids[u]` is the original id of the run's user u; `item_ids` the server's item
        catalog (`SequenceData.item_ids`, index 0 = padding)."""
        self.grid = grid
        self.config = config
        self.timeout = config.flower_round_timeout
        self.user_ids = messages.as_ids(user_ids)
        self.item_ids = messages.as_ids(item_ids)[1:]
        self.user_index = {uid: u for u, uid in enumerate(self.user_ids)}
        self.owner: dict[int, int] = {}  # user -> node id
        self.known_nodes: set[int] = set()

    def train(
        self,
        context: RoundContext,
        global_params: dict[str, torch.Tensor],
        clients: list[ClientBatches],
        local: LocalTraining,
        aggregate: Aggregate,
        progress: Progress | None = None,
    ) -> RoundResult:
        round_number = context.round
        if local.memory is not None:
            raise ValueError(
                "client memories (model=feddmmr) stay on the SuperNodes: the server's run must "
                "not hold them (train(..., engine=FlowerEngine) leaves them to the nodes)"
            )
        started = time.perf_counter()
        self._ready_nodes(round_number)
        # The round's figure of the engine's own: the time it waited for nodes and their users.
        metrics = {"node_seconds": time.perf_counter() - started}
        expected = {c.user: c.num_targets for c in clients}
        by_node = self._route(sorted(expected), round_number)

        config = dataclasses.replace(
            self.config, learning_rate=local.learning_rate, weight_decay=local.weight_decay, loss=local.loss
        )
        params = ArrayRecord({name: p.detach().cpu() for name, p in global_params.items()})
        requests = {
            node: messages.TrainRequest(
                round_number, users, [self.user_ids[u] for u in users], self.item_ids, sorted(local.frozen)
            )
            for node, users in by_node.items()
        }
        contents = {
            node: messages.train_content(config, request, params) for node, request in requests.items()
        }
        wanted = {node: {u: expected[u] for u in users} for node, users in by_node.items()}
        trained = {name: p for name, p in global_params.items() if name not in local.frozen}
        clipped = local.equal_weights
        if self.config.flower_secure_aggregation:
            if len(contents) < 2:  # a "sum" of one node's update would be that update: nothing to hide it in
                return RoundResult(
                    [],
                    skipped=f"secure aggregation needs at least 2 nodes with sampled users, "
                    f"this round has {len(contents)}",
                    metrics=metrics,
                )
            return RoundResult(
                self._train_securely(round_number, contents, by_node, wanted, trained, clipped, aggregate),
                metrics=metrics,
            )

        def advance(node: int) -> None:
            if progress:
                progress(len(by_node[node]))

        sent = [
            Message(content, node, MessageType.TRAIN, ttl=self.timeout, group_id=str(round_number))
            for node, content in contents.items()
        ]
        replies, failed = self._exchange(sent, advance)
        reports = []
        for node, reply in replies.items():
            if reply.has_error():
                failed[node] = _error(reply)
                continue
            received = messages.read_train_reply(reply)
            mismatch = _mismatch(received, wanted[node], trained, clipped)
            if mismatch:
                failed[node] = mismatch
                continue
            device = next(iter(global_params.values())).device
            kept = aggregate(
                {name: p.to(device).unsqueeze(0) for name, p in received.params.items()},
                torch.tensor([received.weight], device=device),
            )
            reports.extend(_marked(received.reports, bool(kept[0])))
        self._log_failures(round_number, failed, by_node)
        return RoundResult(reports, metrics=metrics)  # the nodes keep their own loss scales

    def _train_securely(
        self,
        round_number: int,
        contents: dict,
        by_node: dict[int, list[int]],
        wanted: dict[int, dict[int, int]],
        trained: dict[str, torch.Tensor],
        clipped: bool,
        aggregate: Aggregate,
    ) -> list[ClientReport]:
        """The round's training through SecAgg+: the server gets the weighted mean update of the
        nodes that answered, and their reports. A node whose report shows data that differs from
        the server's cannot be taken out of that mean afterwards: the whole round is then dropped."""
        weights = {
            node: float(len(users) if clipped else sum(users.values())) for node, users in wanted.items()
        }
        mean, replies = secure_mean_update(
            self.grid,
            round_number,
            contents,
            weights,
            sorted(trained),
            self.config.flower_secagg_clipping_range,
            self.timeout,
        )
        failed = {node: _error(reply) for node, reply in replies.items() if reply.has_error()}
        received = {
            node: messages.read_train_reply(reply) for node, reply in replies.items() if node not in failed
        }
        mismatches = {
            node: reason
            for node, reply in received.items()
            if (reason := _mismatch(reply, wanted[node], trained, clipped, secure=True))
        }
        if mean is None or mismatches:
            why = (
                "secure aggregation could not finish: too few nodes answered to unmask the sum"
                if mean is None
                else "the round's secure aggregate is dropped: a node's data differs from the server's"
            )
            failed.update({node: mismatches.get(node, why) for node in contents if node not in failed})
            received = {}
        failed.update(
            {
                node: "no reply in the secure aggregation"
                for node in contents
                if node not in failed and node not in received
            }
        )
        self._log_failures(round_number, failed, by_node)
        if not received:
            return []
        device = next(iter(trained.values())).device
        kept = aggregate(
            {name: (trained[name] + mean[name].to(device)).unsqueeze(0) for name in trained},
            torch.tensor([sum(reply.weight for reply in received.values())], device=device),
        )
        return _marked([report for reply in received.values() for report in reply.reports], bool(kept[0]))

    def _log_failures(self, round_number: int, failed: dict[int, str], by_node: dict[int, list[int]]) -> None:
        for node, reason in failed.items():
            log.warning(
                "round %d: node %d failed, %s; users %s left out of the round",
                round_number,
                node,
                reason,
                self._ids(by_node[node]),
            )

    def evaluate_on_nodes(
        self,
        global_params: dict[str, torch.Tensor],
        which: str,
        eval_set: EvalSet,
        round_number: int,
        memory_round: int,
        keep_rounds: list[int],
    ) -> tuple[np.ndarray, dict]:
        """FedDMMR: rank every user's held-out item on the node that holds the user's memory.

        `which`: "valid" (the nodes read their current memories and keep a copy as
        `memory_round`'s) or "test" (they read their copy of `memory_round`); `keep_rounds`: the
        copies the nodes keep. Returns the ranks of the users whose node answered, and the
        diagnostics of a validation (memory summary, mean router weights) over them."""
        self._ready_nodes(round_number)
        by_node = self._route(list(range(len(self.user_ids))), round_number)
        params = ArrayRecord({name: p.detach().cpu() for name, p in global_params.items()})
        sent = []
        for node, users in by_node.items():
            request = messages.EvalRequest(
                round_number,
                which,
                users,
                [self.user_ids[u] for u in users],
                self.item_ids,
                memory_round,
                keep_rounds,
            )
            content = messages.evaluate_content(self.config, request, params, eval_set.candidates[users])
            sent.append(
                Message(
                    content, node, MessageType.EVALUATE, ttl=self.timeout, group_id=f"{round_number}-{which}"
                )
            )
        replies, failed = self._exchange(sent)
        ranks: dict[int, int] = {}
        totals: dict[str, float] = {}
        for node, reply in replies.items():
            if reply.has_error():
                failed[node] = _error(reply)
                continue
            node_ranks, diagnostics = messages.read_evaluate_reply(reply)
            ranks.update(node_ranks)
            for key, value in (diagnostics or {}).items():
                # Router weights are means over the node's users: sum them weighted by its users.
                weight = diagnostics["users"] if key.startswith("router.") else 1.0
                totals[key] = totals.get(key, 0.0) + weight * value
        for node, reason in failed.items():
            log.warning(
                "round %d: node %d failed in evaluation (%s), %s; its users %s are left out of the %s metrics",
                round_number,
                node,
                which,
                reason,
                self._ids(by_node[node]),
                which,
            )
        if not ranks:
            raise NodesLost(
                f"round {round_number}: no node answered the {which} evaluation (the warnings above say "
                f"why); fix the nodes or raise --flower-round-timeout ({self.timeout:g} s), then continue "
                f"with `feddmmr train --resume RUN_DIR`"
            )
        return np.array([ranks[u] for u in sorted(ranks)]), _diagnostics(totals)

    # -----------------------------------------------------------------------------------------

    def _ready_nodes(self, round_number: int) -> None:
        """The nodes of the round known, with their users: the first time, wait for them."""
        if not self.known_nodes:
            self._wait_for_nodes()
        self._discover_nodes(round_number)

    def _wait_for_nodes(self) -> None:
        """Before the first round: wait until `flower_supernodes` nodes are connected."""
        wanted = self.config.flower_supernodes
        deadline = time.monotonic() + self.timeout
        while len(nodes := list(self.grid.get_node_ids())) < wanted and time.monotonic() < deadline:
            time.sleep(PULL_INTERVAL_SECONDS)
        if not nodes:
            raise RuntimeError(f"no SuperNode connected within flower_round_timeout={self.timeout:g} s")
        if len(nodes) < wanted:
            log.warning(
                "only %d of flower_supernodes=%d nodes connected within %g s; starting with them",
                len(nodes),
                wanted,
                self.timeout,
            )

    def _discover_nodes(self, round_number: int) -> None:
        """Ask nodes not seen before which users they hold; one that fails is asked again next round."""
        new = [node for node in self.grid.get_node_ids() if node not in self.known_nodes]
        if not new:
            return
        content = messages.query_content(self.config)
        sent = [
            Message(content, node, MessageType.QUERY, ttl=self.timeout, group_id=str(round_number))
            for node in new
        ]
        replies, missing = self._exchange(sent)
        for node, reason in missing.items():
            log.warning(
                "round %d: node %d did not list its users: %s; asking again next round",
                round_number,
                node,
                reason,
            )
        for node, reply in replies.items():
            if reply.has_error():
                log.warning(
                    "round %d: node %d could not list its users, %s; asking again next round",
                    round_number,
                    node,
                    _error(reply),
                )
                continue
            held = messages.read_node_users(reply)
            users = [self.user_index[uid] for uid in held if uid in self.user_index]
            clashes = [u for u in users if self.owner.get(u, node) != node]
            if clashes:
                raise ValueError(
                    f"users {self._ids(clashes)} are held by node {node} and node "
                    f"{self.owner[clashes[0]]}: each user's data must live on exactly one node"
                )
            self.owner.update(dict.fromkeys(users, node))
            self.known_nodes.add(node)
            log.info(
                "node %d holds %d users%s",
                node,
                len(users),
                f" ({len(held) - len(users)} more the server does not train)"
                if len(held) > len(users)
                else "",
            )

    def _route(self, users: list[int], round_number: int) -> dict[int, list[int]]:
        by_node: dict[int, list[int]] = {}
        homeless = []
        for user in users:
            if user in self.owner:
                by_node.setdefault(self.owner[user], []).append(user)
            else:
                homeless.append(user)
        if homeless:
            log.warning(
                "round %d: no connected node holds users %s; left out of the round",
                round_number,
                self._ids(homeless),
            )
        return by_node

    def _exchange(self, sent: list[Message], on_reply=None) -> tuple[dict[int, Message], dict[int, str]]:
        """Push messages, pull replies until all are in or the timeout passes.
        Returns the replies by node, and why each other node has none."""
        pushed = set(self.grid.push_messages(sent))
        pending, missing = {}, {}
        for message in sent:
            node = message.metadata.dst_node_id
            if message.metadata.message_id in pushed:
                pending[message.metadata.message_id] = node
            else:
                missing[node] = "the SuperLink did not accept the message"
        deadline = time.monotonic() + self.timeout
        replies = {}
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id)
                replies[node] = reply
                if on_reply:
                    on_reply(node)
            if pending:
                time.sleep(PULL_INTERVAL_SECONDS)
        missing.update(
            dict.fromkeys(pending.values(), f"no reply within flower_round_timeout={self.timeout:g} s")
        )
        return replies, missing

    def _ids(self, users: list[int]) -> str:
        """Users as the nodes know them: their original ids."""
        shown = [self.user_ids[u] for u in users[:20]]
        return "[" + ", ".join(shown) + (f", ... ({len(users)} in all)]" if len(users) > 20 else "]")


def _diagnostics(totals: dict[str, float]) -> dict:
    """The run's diagnostics from the nodes' summed statistics (empty after a test)."""
    if not totals:
        return {}
    out = {
        "memory": summary_from_totals(
            {k.removeprefix("memory."): v for k, v in totals.items() if k.startswith("memory.")}
        )
    }
    router = {
        k.removeprefix("router."): v / totals["users"] for k, v in totals.items() if k.startswith("router.")
    }
    if router:
        out["router_weights"] = router
    return out


def _marked(reports: list[ClientReport], kept: bool) -> list[ClientReport]:
    """A node's reports, marked dropped when the server left the node's (non-finite) mean out."""
    return reports if kept else [dataclasses.replace(r, dropped=True) for r in reports]


def _mismatch(
    received: messages.TrainReply,
    wanted: dict[int, int],
    trained: dict[str, torch.Tensor],
    clipped: bool,
    secure: bool = False,
) -> str | None:
    """Why a reply cannot be aggregated (its node's data or model differs from the server's), or None.
    `trained`: the global weights the round trains (a node sends back exactly those); `clipped`:
    DP is on, so the node weighs each user 1; `secure`: the weights are masked, only the report
    can be checked."""
    # Users whose update the node dropped (not finite) are not in its mean.
    dropped = {r.user for r in received.reports if r.dropped}
    kept = {user: targets for user, targets in wanted.items() if user not in dropped}
    weight = len(kept) if clipped else sum(kept.values())
    if received.num_targets != wanted or received.weight != weight:
        return (
            f"its users' training targets {received.num_targets} (weight {received.weight:g}) differ from the "
            f"server's {wanted}: the node's data does not match the server's"
        )
    if secure:
        return None
    shapes = {name: tuple(p.shape) for name, p in received.params.items()}
    expected = {name: tuple(p.shape) for name, p in trained.items()}
    if shapes != expected:
        different = sorted(set(shapes.items()) ^ set(expected.items()))[:4]
        return f"its weights do not fit the server's model (e.g. {different})"
    return None


def _error(reply: Message) -> str:
    """An error reply, shortly: the ClientApp raised, or the SuperLink answered for a node that
    left or let the message expire. A simulation's reason carries Ray's whole traceback."""
    lines = [line.strip() for line in reply.error.reason.strip().splitlines() if line.strip()]
    return f"error reply (code {reply.error.code}): " + " | ".join(lines[-2:])[-400:]
