"""The run's random streams, one id per purpose, so that no two purposes draw the same numbers.

Each stream is `np.random.default_rng([seed, ID, ...])` (or a SeedSequence of the same list, or a
Flower node's `node_seed(seed, its users, ..., ID)`), with the round, user or node after the id
where the stream is per round, user or node. The ids are part of the results: changing one
changes every number drawn from it.
"""

import numpy as np

CLIENT_SAMPLING = 1  # which clients a round samples (federated/sampling.py)
CLIENT_BATCHES = 2  # a client's window order and training negatives in a round (federated/batches.py)
ROUND_TORCH = 3  # torch's seed for a round's dropout (rounds.py)
CENTRALIZED_ORDER = 4  # the order of the pooled windows in a centralised epoch (train.py)
NODE_TORCH = 5  # a Flower node's torch seed for its dropout (flower/client_app.py)
DP_SAMPLING = 6  # Poisson sampling of the clients under DP (federated/privacy.py)
EVAL_CANDIDATES = 7  # the fixed validation and test negatives (data/negatives.py)
SECAGG_ROUNDING = 8  # a node's stochastic rounding in secure aggregation (flower/secure_aggregation.py)
CENTRALIZED_NEGATIVES = 10  # the shared negatives of each centralised batch (centralized.py)
UPDATE_NOISE = 11  # a client's noise on its item-table change (federated/privacy.py, noise_item_rows)
COLD_ITEMS = 12  # which items a run holds out of training as new items (data/cold.py)
ATTACK = 9  # the attack's targets and fake users (round 0), and which fake users each round samples (federated/attacks.py)


def torch_seed(*keys: int) -> int:
    """A torch seed for the stream named by `keys` (seed, ID, then round, user ... as above)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def round_seed(seed: int, round_number: int) -> int:
    """torch's seed for a round (dropout), so that a resumed run repeats it."""
    return torch_seed(seed, ROUND_TORCH, round_number)
