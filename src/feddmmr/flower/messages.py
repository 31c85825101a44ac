"""What the ServerApp and the ClientApp say to each other, in Flower records.

query (server -> every new node), reply:
    config    ConfigRecord  the run's TrainConfig (run_config.to_flower_config)
    -> node   ConfigRecord  user-ids: the original ids of the users this node holds

train (server -> each node holding sampled users of the round), reply:
    config    ConfigRecord  the run's TrainConfig, with the local training settings of the round
    round     ConfigRecord  round, users (the run's client indices), user-ids (their original
                            ids), item-ids (the server's item catalog: dense id i = item-ids[i-1]),
                            frozen (names of the weights this round's stage keeps as they are)
    params    ArrayRecord   the global weights
    -> params ArrayRecord   the FedAvg mean of the node's users' updated weights (the trained
                            ones: frozen weights are not sent back); with secure aggregation
                            the node's update instead, masked (see secure_aggregation.py)
    -> report MetricRecord  num-examples (the node's FedAvg weight: its users' training targets;
                            with DP, its number of users, whose updates it clipped)
                            and per user, in `users` order: num-targets, mean-loss, steps,
                            skipped-steps, dropped (1: its update was not finite, left out of
                            the node's mean)

evaluate (server -> each node holding users; model=feddmmr, whose memories never leave the
nodes), reply:
    config     ConfigRecord  the run's TrainConfig
    evaluate   ConfigRecord  round, which ("valid" or "test"), users, user-ids, item-ids,
                             memory-round (validation: the round just trained, whose memories the
                             node reads and keeps a copy of; test: the best round, whose copy it
                             reads), keep-rounds (the copies the node keeps; others are dropped)
    params     ArrayRecord   the global weights
    candidates ArrayRecord   candidates [users, 1+N] in dense ids, held-out item first (sampled
                             evaluation ranks them; the node checks the held-out item and the
                             router statistics read them in either mode)
    -> ranks   MetricRecord  users, ranks (0-based rank of each user's held-out item)
    -> diagnostics MetricRecord  validation only: memory totals (`summary_totals`, keys
                             "memory.<name>") and each expert's mean router weight over the
                             node's users ("router.<modality>"); "users" weighs them

Ids travel as strings: a node's own file may read them as integers or as labels.
The client's own state (its RNG, its loss scale) stays in its Context and is never sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from feddmmr.config import TrainConfig
from feddmmr.federated.local import ClientReport
from feddmmr.flower.run_config import from_flower_config, to_flower_config

CONFIG, ROUND, PARAMS, NODE, REPORT = "config", "round", "params", "node", "report"
NUM_EXAMPLES = "num-examples"  # the key Flower's own strategies weight by


def as_ids(values) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def read_config(message: Message) -> TrainConfig:
    return from_flower_config(message.content[CONFIG], "message config")


def query_content(config: TrainConfig) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord(to_flower_config(config))})


def node_users_content(user_ids: list[str]) -> RecordDict:
    return RecordDict({NODE: ConfigRecord({"user-ids": user_ids})})


def read_node_users(message: Message) -> list[str]:
    return list(message.content[NODE]["user-ids"])


@dataclass(frozen=True)
class TrainRequest:
    round: int
    users: list[int]
    user_ids: list[str]
    item_ids: list[str]
    frozen: list[str]


def train_content(config: TrainConfig, request: TrainRequest, params: ArrayRecord) -> RecordDict:
    return RecordDict(
        {
            CONFIG: ConfigRecord(to_flower_config(config)),
            ROUND: ConfigRecord(
                {
                    "round": request.round,
                    "users": request.users,
                    "user-ids": request.user_ids,
                    "item-ids": request.item_ids,
                    "frozen": request.frozen,
                }
            ),
            PARAMS: params,
        }
    )


def read_train_request(message: Message) -> TrainRequest:
    record = message.content[ROUND]
    return TrainRequest(
        int(record["round"]),
        [int(u) for u in record["users"]],
        list(record["user-ids"]),
        list(record["item-ids"]),
        list(record["frozen"]),
    )


def read_params(message: Message) -> dict[str, torch.Tensor]:
    return message.content[PARAMS].to_torch_state_dict()


def train_reply_content(
    params: dict[str, torch.Tensor], reports: list[ClientReport], num_targets: dict[int, int], weight: float
) -> RecordDict:
    reports = sorted(reports, key=lambda r: r.user)
    return RecordDict(
        {
            PARAMS: ArrayRecord({name: p.detach().cpu() for name, p in params.items()}),
            REPORT: MetricRecord(
                {
                    NUM_EXAMPLES: weight,
                    "users": [r.user for r in reports],
                    "num-targets": [num_targets[r.user] for r in reports],
                    "mean-loss": [r.mean_loss for r in reports],
                    "steps": [r.steps for r in reports],
                    "skipped-steps": [r.skipped_steps for r in reports],
                    "dropped": [int(r.dropped) for r in reports],
                }
            ),
        }
    )


@dataclass(frozen=True)
class TrainReply:
    params: dict[str, torch.Tensor]
    weight: float
    num_targets: dict[int, int]
    reports: list[ClientReport]


def read_train_reply(message: Message) -> TrainReply:
    report = message.content[REPORT]
    users = [int(u) for u in report["users"]]
    reports = [
        ClientReport(u, float(loss), int(steps), int(skipped), bool(dropped))
        for u, loss, steps, skipped, dropped in zip(
            users, report["mean-loss"], report["steps"], report["skipped-steps"], report["dropped"]
        )
    ]
    params = read_params(message) if PARAMS in message.content else {}  # none under secure aggregation
    return TrainReply(
        params,
        float(report[NUM_EXAMPLES]),
        dict(zip(users, (int(n) for n in report["num-targets"]))),
        reports,
    )


EVALUATE, CANDIDATES, RANKS, DIAGNOSTICS = "evaluate", "candidates", "ranks", "diagnostics"


@dataclass(frozen=True)
class EvalRequest:
    round: int
    which: str  # "valid" or "test"
    users: list[int]
    user_ids: list[str]
    item_ids: list[str]
    memory_round: int
    keep_rounds: list[int]


def evaluate_content(
    config: TrainConfig, request: EvalRequest, params: ArrayRecord, candidates: torch.Tensor
) -> RecordDict:
    return RecordDict(
        {
            CONFIG: ConfigRecord(to_flower_config(config)),
            EVALUATE: ConfigRecord(
                {
                    "round": request.round,
                    "which": request.which,
                    "users": request.users,
                    "user-ids": request.user_ids,
                    "item-ids": request.item_ids,
                    "memory-round": request.memory_round,
                    "keep-rounds": request.keep_rounds,
                }
            ),
            PARAMS: params,
            CANDIDATES: ArrayRecord({CANDIDATES: candidates.cpu()}),
        }
    )


def read_eval_request(message: Message) -> tuple[EvalRequest, np.ndarray]:
    record = message.content[EVALUATE]
    request = EvalRequest(
        int(record["round"]),
        str(record["which"]),
        [int(u) for u in record["users"]],
        list(record["user-ids"]),
        list(record["item-ids"]),
        int(record["memory-round"]),
        [int(r) for r in record["keep-rounds"]],
    )
    return request, message.content[CANDIDATES].to_torch_state_dict()[CANDIDATES].numpy()


def evaluate_reply_content(
    users: list[int], ranks: list[int], diagnostics: dict[str, float] | None
) -> RecordDict:
    content = RecordDict({RANKS: MetricRecord({"users": users, "ranks": ranks})})
    if diagnostics is not None:
        content[DIAGNOSTICS] = MetricRecord(diagnostics)
    return content


def read_evaluate_reply(message: Message) -> tuple[dict[int, int], dict[str, float] | None]:
    record = message.content[RANKS]
    ranks = dict(zip((int(u) for u in record["users"]), (int(r) for r in record["ranks"])))
    diagnostics = dict(message.content[DIAGNOSTICS]) if DIAGNOSTICS in message.content else None
    return ranks, diagnostics
