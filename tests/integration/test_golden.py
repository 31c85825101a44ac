"""Behaviour pinned: the same config and seed give the numbers recorded before a refactoring.

Each case trains a few rounds on the built-in synthetic data (one thread) and compares every
round's training loss and validation metrics, and final.json's test metrics, with values recorded
from the code before a refactoring. A change that is meant to change the numbers re-records them
(`python tests/integration/test_golden.py` prints the current values) and says why in its commit.

The comparison is not bit for bit: float sums are not reproducible across processors. torch picks
its kernels by the CPU's vector instructions (`ATEN_CPU_CAPABILITY`: default, avx2, avx512) and
BLAS has its own dispatch, so the order of additions, and the last bits, differ from one machine to
another. The bounds (`mismatches`) are set between what that moves and what a change of behaviour
moves, both measured on the 8 cases:
- training losses to a relative 1e-6: another dispatch moved them by at most 1.1e-7 (feddmmr;
  the others 4e-9 to 2e-8), while a learning rate off by a relative 1e-3 moves round 1's loss by
  a relative 1e-4, a hundred times the bound (`test_a_planted_change_fails_the_comparison`
  keeps that true);
- except FedDMMR's losses after its first round, to a relative 1e-3 (`MEMORY_LOSS_RTOL`): its memory
  admits an item to the long-term tier when the item's novelty passes a threshold, a discrete
  decision that a last-bit difference can flip. On an AMD EPYC, AVX-512 against AVX2 kernels
  (`ATEN_CPU_CAPABILITY`) moved rounds 1-3 by 1.4e-9, 1.0e-6 and 5.0e-5; with the threshold out of
  reach (`memory_novelty=2`, nothing admitted) by 1.1e-9, 1.2e-10 and 8.3e-9. Its first round, and
  its validation and test metrics, keep the bounds of every case;
- validation and test metrics within one user's worth, 1/USERS: a tie between two candidates
  broken the other way moves one user's rank by one, which changes that user's HR@10, NDCG@10 and
  MRR by at most 1 each, so the mean over USERS users by at most 1/USERS. Another dispatch
  changed none of them.
Same machine, same thread count, the numbers repeat bit for bit (test_train.py's determinism
tests keep that promise exactly).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # helpers.py when run as a script

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import TINY_NEGATIVES  # noqa: E402

SMALL = dict(max_seq_len=10, **TINY_NEGATIVES,
             hidden_dim=16, num_heads=2, num_blocks=1, num_negatives_eval=20, num_rounds=3,
             validate_every=1, patience=0, threads=1, top_users=120)
CASES = {
    "fedsasrec": dict(),
    "fedsasrec-adam-fedavgm": dict(local_optimizer="adam", learning_rate=1e-3, server_optimizer="fedavgm",
                                   server_learning_rate=1.0),
    "dp": dict(dp_clip_norm=0.5, dp_noise_multiplier=0.3),
    "feddmmr": dict(model="feddmmr"),
    "centralized": dict(centralized=True, local_optimizer="adam", learning_rate=1e-3, batch_size=64),
    "flower": dict(engine="flower", flower_supernodes=2),
    "shared-negatives": dict(negatives="shared", num_negatives=32),
    "ce-full": dict(loss="ce-full"),
}
METRICS = ("HR@10", "NDCG@10", "MRR")
USERS = SMALL["top_users"]  # every user is validated and tested: a metric is a mean over USERS users
LOSS_RTOL = 1e-6
MEMORY_LOSS_RTOL = 1e-3  # FedDMMR's losses after round 1 (the module's docstring)


def synthetic_features(folder: Path) -> Path:
    """Random 8-d features for every item of the built-in synthetic data (FedDMMR's modality)."""
    from feddmmr.data.load import load_sequences
    from feddmmr.features.store import save_features

    data = load_sequences(None)
    path = folder / "features.npz"
    save_features(path, data.item_ids[1:], np.random.default_rng(0).normal(size=(data.num_items, 8)).astype(np.float32))
    return path


def observe(case: str, folder: Path) -> dict:
    """Per round: train loss and validation metrics; then the test metrics of final.json."""
    from feddmmr.config import TrainConfig
    from feddmmr.train import train

    fields = {**SMALL, **CASES[case], "run_dir": str(folder / case)}
    if case == "feddmmr":
        fields["modality"] = [f"text={synthetic_features(folder)}"]
    threads = torch.get_num_threads()
    try:
        if case == "flower":
            from test_flower import InProcessGrid, partitions

            from feddmmr.engines.flower.client_app import make_client_app
            from feddmmr.engines.flower.server_app import train_on_grid

            grid = InProcessGrid(make_client_app(), partitions(2))
            result = train_on_grid(grid, TrainConfig(**fields))
        else:
            result = train(TrainConfig(**fields))
    finally:
        torch.set_num_threads(threads)
    final = json.loads((folder / case / "final.json").read_text())
    return {
        "rounds": [[r["train_loss"], *[r["val"][m] for m in METRICS]] for r in result.history],
        "test": [final["test"][m] for m in METRICS],
    }


GOLDEN: dict[str, dict] = {  # recorded at e51976a (python tests/integration/test_golden.py)
    'fedsasrec': {
        "rounds": [
            [1.462508689948429, 0.6, 0.28305838839874536, 0.21410022027765838],
            [1.4186531545043428, 0.7083333333333334, 0.34417740883805753, 0.2528468067951427],
            [1.3419541523681606, 0.6833333333333333, 0.3845943972210831, 0.3128011464369823],
        ],
        "test": [0.6, 0.2931068811668739, 0.2290641743447471],
    },
    'fedsasrec-adam-fedavgm': {
        "rounds": [
            [1.6038790223329455, 0.525, 0.22413012393463821, 0.1657157597018278],
            [1.6005970781337977, 0.5416666666666666, 0.2336164241875555, 0.171795198910137],
            [1.5955151072619382, 0.5583333333333333, 0.2422445905147806, 0.17710823128683034],
        ],
        "test": [0.49166666666666664, 0.2248016331213939, 0.18010267080700515],
    },
    'dp': {
        "rounds": [
            [1.4608685253481963, 0.55, 0.23282005911959966, 0.16917846429456335],
            [1.4518440753599817, 0.525, 0.23761743722381365, 0.18374957179330245],
            [1.4217954354858493, 0.575, 0.2744379949754151, 0.21354247854828348],
        ],
        "test": [0.5083333333333333, 0.23864653798337276, 0.1919483860079835],
    },
    'feddmmr': {
        "rounds": [
            [1.4564420695044484, 0.5833333333333334, 0.2839348896939711, 0.2212133728271499],
            [1.3834048997882844, 0.675, 0.3400765476413721, 0.26113272090826267],
            [1.2523529303704086, 0.6583333333333333, 0.38127040572695364, 0.3182861346241764],
        ],
        "test": [0.5666666666666667, 0.2878586806500693, 0.2343519619999883],
    },
    'centralized': {
        "rounds": [
            [1.5922477871555392, 0.6333333333333333, 0.3022937255099457, 0.22540632584363235],
            [1.4938535942308244, 0.6583333333333333, 0.40286451139529683, 0.3459215154542167],
            [1.3729237140142814, 0.6583333333333333, 0.40842636919140285, 0.3519764545596589],
        ],
        "test": [0.6583333333333333, 0.3769556041089438, 0.31407890122576654],
    },
    'flower': {
        "rounds": [
            [1.461255399873538, 0.6083333333333333, 0.2883253959546502, 0.2173915787944426],
            [1.4160493022394243, 0.6666666666666666, 0.34949028837256063, 0.2758723892779621],
            [1.3418328774502195, 0.6833333333333333, 0.3901017910577829, 0.32062444020261355],
        ],
        "test": [0.6916666666666667, 0.3581516022212478, 0.27900096549477355],
    },
    'shared-negatives': {  # recorded when the shared negatives came
        "rounds": [
            [3.2693876238589943, 0.6, 0.2826507906350211, 0.21362147584670807],
            [3.2015855531242274, 0.675, 0.34302954985727696, 0.2631794799770806],
            [3.0809444155968784, 0.6666666666666666, 0.37806528029592634, 0.31163472027055616],
        ],
        "test": [0.6083333333333333, 0.29432824435195054, 0.22827559913569975],
    },
    'ce-full': {  # recorded when ce-full came
        "rounds": [
            [6.715129322769973, 0.575, 0.2743412548881958, 0.21150811757042406],
            [6.666577638675601, 0.5916666666666667, 0.3095851419676767, 0.2504256709277994],
            [6.609003514765032, 0.6666666666666666, 0.35472227820244995, 0.28092278579120683],
        ],
        "test": [0.6416666666666667, 0.3243050010066426, 0.25327619526729434],
    },
}


def mismatches(observed: dict, golden: dict, later_loss_rtol: float = LOSS_RTOL) -> list[str]:
    """Where `observed` leaves the bounds around `golden` (see the module's docstring); [] if nowhere.
    `later_loss_rtol`: the bound of the losses after round 1."""
    found = []
    if len(observed["rounds"]) != len(golden["rounds"]):
        return [f"{len(observed['rounds'])} rounds, recorded {len(golden['rounds'])}"]
    one_user = 1 / USERS + 1e-12
    for number, (seen, recorded) in enumerate(zip(observed["rounds"], golden["rounds"]), start=1):
        if abs(seen[0] - recorded[0]) > (LOSS_RTOL if number == 1 else later_loss_rtol) * abs(recorded[0]):
            found.append(f"round {number} loss {seen[0]!r}, recorded {recorded[0]!r}")
        found += [f"round {number} validation {metric} {a!r}, recorded {b!r}"
                  for metric, a, b in zip(METRICS, seen[1:], recorded[1:]) if abs(a - b) > one_user]
    found += [f"test {metric} {a!r}, recorded {b!r}"
              for metric, a, b in zip(METRICS, observed["test"], golden["test"]) if abs(a - b) > one_user]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_run_repeats_the_recorded_numbers(case, tmp_path):
    if case == "flower":
        pytest.importorskip("flwr")
    later = MEMORY_LOSS_RTOL if case == "feddmmr" else LOSS_RTOL
    assert mismatches(observe(case, tmp_path), GOLDEN[case], later) == []


@pytest.mark.slow
def test_a_planted_change_fails_the_comparison(tmp_path):
    """The bounds are tight enough to catch a small change of what training computes: the client
    learning rate off by a relative 1e-3."""
    CASES["planted"] = dict(learning_rate=1.001)
    try:
        found = mismatches(observe("planted", tmp_path), GOLDEN["fedsasrec"])
    finally:
        del CASES["planted"]
    assert found and found[0].startswith("round 1 loss"), found


def test_feddmmrs_later_losses_get_the_memory_bound_and_its_first_round_does_not():
    golden = {"rounds": [[2.0, 0.5, 0.25, 0.125]] * 2, "test": [0.5, 0.25, 0.125]}
    later = {"rounds": [[2.0, 0.5, 0.25, 0.125], [2.0 * (1 + 0.9 * MEMORY_LOSS_RTOL), 0.5, 0.25, 0.125]],
             "test": [0.5, 0.25, 0.125]}
    assert mismatches(later, golden, MEMORY_LOSS_RTOL) == [] and mismatches(later, golden) != []
    first = {"rounds": [[2.0 * (1 + 2 * LOSS_RTOL), 0.5, 0.25, 0.125], [2.0, 0.5, 0.25, 0.125]], "test": [0.5, 0.25, 0.125]}
    assert mismatches(first, golden, MEMORY_LOSS_RTOL) == [f"round 1 loss {2.0 * (1 + 2 * LOSS_RTOL)!r}, recorded 2.0"]


def test_the_bounds_take_one_users_worth_and_no_more():
    golden = {"rounds": [[2.0, 0.5, 0.25, 0.125]], "test": [0.5, 0.25, 0.125]}
    shifted = {"rounds": [[2.0 * (1 + 0.9 * LOSS_RTOL), 0.5 + 1 / USERS, 0.25, 0.125]], "test": [0.5, 0.25 - 1 / USERS, 0.125]}
    assert mismatches(shifted, golden) == []
    too_far = {"rounds": [[2.0 * (1 + 2 * LOSS_RTOL), 0.5, 0.25, 0.125]], "test": [0.5 + 2 / USERS, 0.25, 0.125]}
    assert mismatches(too_far, golden) == [f"round 1 loss {2.0 * (1 + 2 * LOSS_RTOL)!r}, recorded 2.0",
                                            f"test HR@10 {0.5 + 2 / USERS!r}, recorded 0.5"]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print({case: observe(case, Path(tmp)) for case in CASES})
