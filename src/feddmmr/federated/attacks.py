"""Fake clients that try to push target items into every user's top 10 (item promotion), to
measure what the aggregation rules withstand (`--attack NAME --attack-fraction F
--attack-targets K`; docs/SECURITY.md).

- data-poisoning (in the spirit of A-ra, Rong et al. IJCAI 2022): each fake user holds a made-up
  sequence in which every popular item is followed by a target, and trains on it like any client;
- model-poisoning (in the spirit of FedRecAttack / PipAttack): each fake client sends a crafted
  update that moves only the targets' embedding rows, towards the mean user representation of
  the current model (its output after sequences of popular items, so that every user's score of
  a target rises), scaled to the median norm of the round's genuine updates so that a norm check
  cannot tell it apart, and claiming the median genuine weight;
- boosted-model-poisoning: the same crafted update, scaled up by the round's total weight over the
  fake clients' (explicit boosting, Bhagoji et al., ICML 2019), so that the weighted mean carries
  the crafted change whole, as if every client had sent it; its norm gives it away to a norm check.

The attack is planned once per run from the seed: `attack_fraction` x the genuine users fake
users (at least one), sampled each round at the genuine clients' rate; the targets are
`attack_targets` cold items (among the least popular fifth with at least one interaction).
The fake clients send their updates after the genuine clients' (`finish_round`), on any engine:
on Flower they run in the server's process, beside the SuperNodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from feddmmr import streams
from feddmmr.data.split import LeaveOneOut
from feddmmr.federated.batches import BatchSettings, ClientBatches, client_rng, make_client_batches
from feddmmr.federated.local import Engine, LocalTraining, RoundContext
from feddmmr.model.sasrec import ITEM_TABLE

ATTACKS = ("data-poisoning", "model-poisoning", "boosted-model-poisoning")
POPULAR = 50  # the fake sequences' popular items: the most read


@dataclass
class Attack:
    kind: str
    fake_users: np.ndarray  # their ids follow the genuine users': num_users, num_users + 1, ...
    targets: np.ndarray  # dense item ids
    sequences: dict[int, np.ndarray]  # fake user -> made-up sequence (dense item ids)
    seed: int
    # the current round's fake users, and (model poisoning) the genuine updates' norms and weights
    round_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    genuine_norms: list = field(default_factory=list)
    genuine_weights: list = field(default_factory=list)

    @classmethod
    def plan(
        cls, kind: str, fraction: float, num_targets: int, split: LeaveOneOut, max_len: int, seed: int
    ) -> "Attack":
        rng = np.random.default_rng([seed, streams.ATTACK, 0])
        counts = np.bincount(split.data.items, minlength=split.num_items + 1)[1:]
        read = np.flatnonzero(counts > 0) + 1
        cold = read[np.argsort(counts[read - 1], kind="stable")[: max(num_targets, len(read) // 5)]]
        targets = np.sort(rng.choice(cold, size=num_targets, replace=False))
        popular = np.argsort(-counts, kind="stable")[:POPULAR] + 1
        fakes = np.arange(split.num_users, split.num_users + max(1, math.ceil(fraction * split.num_users)))
        length = max_len + 1
        sequences = {}
        for index, user in enumerate(fakes):  # popular, target, popular, target, ...
            chosen_popular = rng.choice(popular, size=(length + 1) // 2)
            chosen_targets = targets[(np.arange((length + 1) // 2) + index) % num_targets]
            sequences[int(user)] = np.stack([chosen_popular, chosen_targets], axis=1).reshape(-1)[:length]
        return cls(kind, fakes, targets, sequences, seed)

    def sampled(self, fraction: float, round_number: int) -> np.ndarray:
        """The fake users taking part in a round, at the genuine clients' rate (at least one)."""
        rng = np.random.default_rng([self.seed, streams.ATTACK, round_number])
        count = max(1, int(round(fraction * len(self.fake_users))))
        return np.sort(rng.choice(self.fake_users, size=count, replace=False))

    def join_round(
        self, round_number: int, fraction: float, add: Callable, global_params: dict[str, torch.Tensor]
    ) -> Callable:
        """Sample the round's fake users. Returns the `add` the genuine clients' updates go
        through: model poisoning watches their norms and weights there (the attacker is assumed to
        learn them, the strongest case); data poisoning needs nothing of them."""
        self.round_users = self.sampled(fraction, round_number)
        self.genuine_norms, self.genuine_weights = [], []
        return add if self.kind == "data-poisoning" else self.watch(add, global_params)

    def finish_round(
        self,
        context: RoundContext,
        engine: Engine,
        settings: BatchSettings,
        local: LocalTraining,
        add: Callable,
        model: torch.nn.Module | None,
        global_params: dict[str, torch.Tensor],
    ) -> None:
        """After the genuine clients, the round's fake users send their updates through `add`,
        each as one client's: data-poisoning ones train their made-up sequences on `engine` (a
        local engine: on Flower, one in the server's process beside the SuperNodes), the model-poisoning
        kinds send crafted updates. Training them after the genuine clients leaves the genuine
        updates exactly as in a round without the attack."""
        if len(self.round_users) == 0:
            return
        if self.kind == "data-poisoning":
            engine.train(
                context, global_params, self.batches(self.round_users, settings, context.round), local, add
            )
        else:
            self.send_crafted(add, model, global_params)

    def batches(self, users: np.ndarray, settings: BatchSettings, round_number: int) -> list[ClientBatches]:
        """Data poisoning: the fake users' own batches, trained like anyone's."""
        return [
            make_client_batches(
                int(u), self.sequences[int(u)], settings, client_rng(self.seed, round_number, int(u))
            )
            for u in users
        ]

    def watch(self, add: Callable, global_params: dict[str, torch.Tensor]) -> Callable:
        """`add`, also noting the norms and weights of the genuine updates it passes on."""

        def watched(client_params: dict[str, torch.Tensor], client_weights: torch.Tensor) -> torch.Tensor:
            squared = sum(
                (client_params[n] - global_params[n]).reshape(len(client_weights), -1).float().pow(2).sum(1)
                for n in global_params
            )
            self.genuine_norms.append(squared.sqrt())
            self.genuine_weights.append(client_weights.float())
            return add(client_params, client_weights)

        return watched

    @torch.no_grad()
    def send_crafted(
        self, add: Callable, model: torch.nn.Module, global_params: dict[str, torch.Tensor]
    ) -> None:
        """Model poisoning, boosted or not: one crafted update per fake user of the round, through `add`."""
        users = self.round_users
        if not self.genuine_norms:
            return
        norm = torch.cat(self.genuine_norms).median()
        genuine_weights = torch.cat(self.genuine_weights)
        weight = genuine_weights.median()
        table = global_params[ITEM_TABLE]
        sequences = torch.as_tensor(
            np.stack([self.sequences[int(u)][:-1] for u in users]), device=table.device
        )
        was_training = model.training
        model.eval()
        users_direction = model.encode(sequences)[:, -1].mean(0)  # the mean user representation
        model.train(was_training)
        change = torch.zeros_like(table)
        change[torch.as_tensor(self.targets, device=table.device)] = users_direction
        change *= norm / change.norm().clamp_min(1e-12)
        if self.kind == "boosted-model-poisoning":
            fakes_weight = weight * len(users)
            change *= (genuine_weights.sum() + fakes_weight) / fakes_weight
        crafted = {
            name: p.unsqueeze(0).repeat(len(users), *([1] * p.dim())) for name, p in global_params.items()
        }
        crafted[ITEM_TABLE] = (table + change).unsqueeze(0).repeat(len(users), 1, 1)
        add(crafted, weight.repeat(len(users)).to(table.device))


@torch.no_grad()
def exposure_rate(
    model: torch.nn.Module, eval_set, targets: np.ndarray, k: int = 10, batch_size: int = 256
) -> float:
    """ER@k: the share of users whose full-ranking top k (over the items they have not read)
    holds at least one target."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    target_rows = torch.as_tensor(targets, device=device)
    hits = 0
    for start in range(0, len(eval_set.inputs), batch_size):
        stop = min(start + batch_size, len(eval_set.inputs))
        scores = model.score_all_last(eval_set.inputs[start:stop].to(device)).float()
        scores[:, 0] = -math.inf
        lo, hi = eval_set.seen_offsets[start], eval_set.seen_offsets[stop]
        rows = np.repeat(np.arange(stop - start), np.diff(eval_set.seen_offsets[start : stop + 1]))
        scores[torch.from_numpy(rows), torch.from_numpy(eval_set.seen_items[lo:hi])] = -math.inf
        top = scores.topk(k, dim=1).indices
        hits += int(torch.isin(top, target_rows).any(dim=1).sum())
    model.train(was_training)
    return hits / len(eval_set.inputs)
