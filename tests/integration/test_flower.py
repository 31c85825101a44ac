"""The Flower engine: same rounds as the local engine, failed nodes left out, a real simulation.

Most tests drive the ServerApp's run loop (`train_on_grid`) and the real ClientApp through an
in-process Grid (no Ray, no network). One test runs Flower's simulation runtime (Ray) in a
subprocess with a hard timeout, since a Ray that cannot start may hang and ignore SIGTERM.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import tomllib
import torch

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from helpers import TINY_MODEL  # noqa: E402

from feddmmr.checkpoint import load_checkpoint  # noqa: E402
from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.flower.client_app import make_client_app  # noqa: E402
from feddmmr.flower.run_config import from_flower_config, pyproject_block, to_flower_config  # noqa: E402
from feddmmr.flower.server_app import make_server_app, train_on_grid  # noqa: E402
from feddmmr.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    **TINY_MODEL,
    client_fraction=0.5,
    learning_rate=5e-3,
    dropout=0.0,
    local_epochs=2,
)
SIMULATION_TIMEOUT = 150


def config(tiny_data, run_dir, **overrides) -> TrainConfig:
    return TrainConfig(data_dir=str(tiny_data), run_dir=str(run_dir), **{**TINY, **overrides})


class InProcessGrid(Grid):
    """Delivers each message to a ClientApp in this process, like the simulation's nodes.

    `nodes` maps node id -> node config. A node in `hang` lists its users but never replies to
    a train message (a node that hangs or died mid-round).
    """

    def __init__(self, client_app, nodes: dict[int, dict], hang: frozenset[int] = frozenset()) -> None:
        self.client_app = client_app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={})
            for node, cfg in nodes.items()
        }
        self.hang = hang
        self.replies: dict[str, Message] = {}
        self.sent_back: list[Message] = []  # every reply, as the server could see it
        # Set by Flower's runtimes in a ServerApp's process; new Messages read it.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what a SuperLink assigns
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            if node in self.hang and message.metadata.message_type == "train":
                continue
            try:
                # A copy, as a node receives it over the network (SecAgg+ sends one content to all).
                reply = self.client_app(copy.deepcopy(message), self.contexts[node])
            except Exception as error:  # the simulation turns a raising ClientApp into an error reply
                reply = Message(Error(code=2, reason=f"{type(error).__name__}: {error}"), reply_to=message)
            self.replies[message.metadata.message_id] = reply
            self.sent_back.append(reply)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        """What SecAgg+'s workflow uses: the replies of the nodes that answer (none from a hung node)."""
        return self.pull_messages(self.push_messages(messages))


def partitions(count: int) -> dict[int, dict]:
    return {1000 + k: {"partition-id": k, "num-partitions": count} for k in range(count)}


def fail_on_partition(partition: int, round_number: int | None = None):
    """A ClientApp mod: the node of `partition` raises in train (in every round, or only in one)."""

    def mod(message, context, call_next):
        if (
            message.metadata.message_type == "train"
            and context.node_config.get("partition-id") == partition
            and round_number in (None, int(message.content["round"]["round"]))
        ):
            raise RuntimeError(f"injected failure on partition {partition}")
        return call_next(message, context)

    return mod


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_weights(actual: dict, expected: dict, *, fedadam_rounds: int = 1) -> None:
    """The global weights of two engines after `fedadam_rounds` FedAdam rounds (the default server
    optimiser; 0 for FedAvg), to within float rounding.

    Both engines compute the same client updates, grouped differently, so their means differ by
    float rounding only (about 3e-7 here), which FedAvg passes on as is. FedAdam divides each
    element's mean change g by |g| + epsilon: where g is itself about zero, a rounding difference
    moves that element's step by up to lr * rounding / epsilon, a fraction of one step (measured:
    0.01 * lr per round, at server lr 3e-3 to 1e-2). A tenth of a step per round bounds that; the
    FedAvg comparisons are the tight ones.
    """
    atol = 2e-5 + 0.1 * TrainConfig().server_learning_rate * fedadam_rounds
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=atol, msg=name)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_round(tiny_data, tmp_path_factory):
    """One round of the local (vectorised) engine: what one Flower round must reproduce."""
    return train(config(tiny_data, tmp_path_factory.mktemp("local"), num_rounds=1))


def test_a_flower_round_equals_a_local_round(tiny_data, tmp_path, local_round):
    grid = InProcessGrid(make_client_app(), partitions(3))
    flower = train_on_grid(grid, config(tiny_data, tmp_path / "flower", num_rounds=1, flower_supernodes=3))
    assert_same_weights(weights(flower.run_dir), weights(local_round.run_dir))
    (local_record,), (flower_record,) = local_round.history, flower.history
    assert flower_record["clients"] == local_record["clients"] == 30 and flower_record["failed_clients"] == 0
    assert flower_record["train_loss"] == pytest.approx(local_record["train_loss"], rel=1e-5)
    assert json.loads((flower.run_dir / "config.json").read_text())["engine"] == "flower"


def test_with_fedavg_a_flower_round_equals_a_local_round_to_float_rounding(tiny_data, tmp_path):
    """FedAvg passes the clients' mean on unamplified: the tight check that the nodes compute the
    local engine's client updates."""
    fedavg = dict(num_rounds=1, server_optimizer="fedavg")
    local = train(config(tiny_data, tmp_path / "local", **fedavg))
    flower = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)),
        config(tiny_data, tmp_path / "flower", flower_supernodes=3, **fedavg),
    )
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir), fedadam_rounds=0)


# Secure rounds train at the default client lr (updates up to ~0.1 here), so that an error in the
# unmasked mean shows far above SecAgg+'s quantization step (2 * range / 2**22, 5e-7 at range 1).
SECURE_FEDAVG = dict(
    num_rounds=1, server_optimizer="fedavg", engine="flower", flower_supernodes=3, learning_rate=1.0
)


def assert_same_up_to_quantization(actual: dict, expected: dict) -> None:
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=4 * 2 / 2**22, msg=name)


def test_a_secure_round_equals_a_plain_round_and_no_node_sends_its_update_in_the_clear(tiny_data, tmp_path):
    """SecAgg+: the server unmasks the nodes' weighted mean update, equal to FedAvg's up to the
    quantization, and twice the same with the same seed."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    plain = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)),
        config(tiny_data, tmp_path / "plain", **SECURE_FEDAVG),
    )
    grids, runs = [], []
    for attempt in range(2):
        grids.append(InProcessGrid(make_client_app(), partitions(3)))
        runs.append(
            train_on_grid(
                grids[-1],
                config(
                    tiny_data, tmp_path / f"secure{attempt}", flower_secure_aggregation=True, **SECURE_FEDAVG
                ),
            )
        )
    secure = runs[0]
    assert (
        secure.history[0]["failed_clients"] == 0
        and secure.history[0]["clients"] == plain.history[0]["clients"]
    )
    assert secure.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=1e-6)
    assert_same_up_to_quantization(weights(secure.run_dir), weights(plain.run_dir))
    first, again = weights(secure.run_dir), weights(runs[1].run_dir)
    assert all(torch.equal(first[name], again[name]) for name in first)

    train_replies = [
        r for r in grids[0].sent_back if r.metadata.message_type == "train" and "report" in r.content
    ]
    assert len(train_replies) == 3
    for reply in train_replies:
        assert all(
            len(record) == 0 for record in reply.content.array_records.values()
        )  # no weights in the clear
        assert RECORD_KEY_CONFIGS in reply.content  # the masked update


def test_a_secure_round_rebuilds_the_masks_of_a_node_that_fails_mid_round(tiny_data, tmp_path, caplog):
    """Partition 1 raises in training: the other two nodes' mean is unmasked without it, and
    equals the plain round that leaves the same node out."""
    plain = train_on_grid(
        InProcessGrid(make_client_app([fail_on_partition(1)]), partitions(3)),
        config(tiny_data, tmp_path / "plain", **SECURE_FEDAVG),
    )
    with caplog.at_level("WARNING", logger="feddmmr"):
        secure = train_on_grid(
            InProcessGrid(make_client_app([fail_on_partition(1)]), partitions(3)),
            config(tiny_data, tmp_path / "secure", flower_secure_aggregation=True, **SECURE_FEDAVG),
        )
    (record,) = secure.history
    assert record["failed_clients"] == plain.history[0]["failed_clients"] > 0
    assert any(
        "node 1001 failed" in r.getMessage() and "injected failure on partition 1" in r.getMessage()
        for r in caplog.records
    )
    assert_same_up_to_quantization(weights(secure.run_dir), weights(plain.run_dir))


def test_a_secure_dp_round_equals_a_plain_dp_round(tiny_data, tmp_path):
    """Nodes clip each user's update, SecAgg+ hides the nodes' updates, the server's DP sum is the same."""
    pytest.importorskip("opacus")
    dp = dict(SECURE_FEDAVG, dp_clip_norm=0.1)
    plain = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)), config(tiny_data, tmp_path / "plain", **dp)
    )
    secure = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)),
        config(tiny_data, tmp_path / "secure", flower_secure_aggregation=True, **dp),
    )
    assert (
        secure.history[0]["failed_clients"] == 0
        and secure.history[0]["clients"] == plain.history[0]["clients"]
    )
    assert_same_up_to_quantization(weights(secure.run_dir), weights(plain.run_dir))


def test_a_node_whose_update_leaves_the_secure_range_fails_loudly(tiny_data, tmp_path, caplog):
    cfg = config(
        tiny_data,
        tmp_path / "secure",
        num_rounds=1,
        engine="flower",
        flower_supernodes=2,
        flower_secure_aggregation=True,
        flower_secagg_clipping_range=1e-9,
    )
    from feddmmr.errors import NodesLost

    with (
        caplog.at_level("WARNING", logger="feddmmr"),
        pytest.raises(NodesLost, match="round 1: no update arrived"),
    ):
        train_on_grid(InProcessGrid(make_client_app(), partitions(2)), cfg)
    assert any("outside flower_secagg_clipping_range=1e-09" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "secure" / "checkpoints" / "last.pt").exists()  # nothing trained, nothing saved


def test_a_secure_round_with_one_node_is_skipped_not_lost(tiny_data, tmp_path, caplog):
    """SecAgg+ cannot hide one node's update in a sum: such a round leaves the model as it was, with
    a warning, and the run goes on (a round whose nodes all fail stops it)."""
    cfg = config(
        tiny_data,
        tmp_path / "one",
        num_rounds=2,
        validate_every=1,
        engine="flower",
        flower_supernodes=1,
        flower_secure_aggregation=True,
    )
    with caplog.at_level("WARNING", logger="feddmmr"):
        run = train_on_grid(InProcessGrid(make_client_app(), partitions(1)), cfg)
    assert [r["round"] for r in run.history] == [1, 2]
    assert all(r["failed_clients"] == r["clients"] and r["train_loss"] is None for r in run.history)
    assert (
        sum(
            "needs at least 2 nodes with sampled users, this round has 1" in r.getMessage()
            and "the model stays as it was" in r.getMessage()
            for r in caplog.records
        )
        == 2
    )


def test_secure_aggregation_is_a_flower_setting(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="flower_secure_aggregation is for engine=flower"):
        config(tiny_data, tmp_path, flower_secure_aggregation=True)
    with pytest.raises(ValueError, match="flower_secagg_clipping_range: expected a number > 0, got 0"):
        config(tiny_data, tmp_path, engine="flower", flower_secagg_clipping_range=0.0)


def test_a_flower_dp_round_clips_on_the_nodes_like_the_local_engine(tiny_data, tmp_path):
    pytest.importorskip("opacus")
    dp = dict(num_rounds=1, dp_clip_norm=0.1, dp_noise_multiplier=0.5)
    local = train(config(tiny_data, tmp_path / "local", **dp))
    grid = InProcessGrid(make_client_app(), partitions(3))
    flower = train_on_grid(grid, config(tiny_data, tmp_path / "flower", flower_supernodes=3, **dp))
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir))
    assert flower.history[0]["failed_clients"] == 0
    assert flower.history[0]["dp"] == local.history[0]["dp"] and local.history[0]["dp"]["epsilon"] > 0


def test_frozen_weights_stay_on_the_nodes(tiny_data, tmp_path):
    """Stage 3 freezes the item embedding: nodes leave it as it was and do not send it back."""
    start = str(train(config(tiny_data, tmp_path / "stage1", num_rounds=1, stage=1)).run_dir)
    local = train(config(tiny_data, tmp_path / "local", num_rounds=1, stage=3, init_from=start))
    flower = train_on_grid(
        InProcessGrid(make_client_app(), partitions(2)),
        config(tiny_data, tmp_path / "flower", num_rounds=1, stage=3, init_from=start),
    )
    assert flower.history[0]["failed_clients"] == 0
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir))


def test_a_round_that_hears_from_no_node_stops_the_run_and_keeps_the_last_checkpoints(tiny_data, tmp_path):
    """Both nodes fail in round 2: the run stops with an error (no NaN model, no round 2 in
    metrics.jsonl, best.pt still round 1's), and resumes once the nodes work."""
    from feddmmr.errors import NodesLost

    failing = InProcessGrid(
        make_client_app([fail_on_partition(0, 2), fail_on_partition(1, 2)]), partitions(2)
    )
    cfg = config(tiny_data, tmp_path / "flower", num_rounds=2, validate_every=1)
    with pytest.raises(NodesLost, match="round 2: no update arrived from any of its"):
        train_on_grid(failing, cfg)
    run_dir = tmp_path / "flower"
    assert [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["round"] == 1
    resumed = train_on_grid(InProcessGrid(make_client_app(), partitions(2)), cfg, resume=True)
    assert [r["round"] for r in resumed.history] == [1, 2] and resumed.history[1]["failed_clients"] == 0


def test_a_failing_node_is_left_out_and_logged(tiny_data, tmp_path, caplog):
    """Partition 1 raises, partition 2 never replies: the round aggregates partition 0 alone."""
    grid = InProcessGrid(make_client_app([fail_on_partition(1)]), partitions(3), hang=frozenset({1002}))
    cfg = config(tiny_data, tmp_path / "flower", num_rounds=1, flower_supernodes=3, flower_round_timeout=0.5)
    with caplog.at_level("WARNING", logger="feddmmr"):
        flower = train_on_grid(grid, cfg)
    (record,) = flower.history
    survivors = record["clients"] - record["failed_clients"]
    assert 0 < survivors < record["clients"]
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert any(
        "node 1001 failed, error reply (code 2): RuntimeError: injected failure on partition 1" in m
        for m in failures
    )
    assert any("node 1002 failed, no reply within flower_round_timeout=0.5 s" in m for m in failures)
    assert all("users [" in m for m in failures)

    # The same round with only partition 0's node gives the same model, also when that node trains
    # with the sequential engine (the other nodes in these tests use the vectorised one).
    alone = InProcessGrid(make_client_app(), {1000: {**partitions(3)[1000], "engine": "sequential"}})
    only_zero = train_on_grid(alone, config(tiny_data, tmp_path / "alone", num_rounds=1, flower_supernodes=1))
    assert only_zero.history[0]["failed_clients"] == record["failed_clients"]
    assert_same_weights(weights(flower.run_dir), weights(only_zero.run_dir))


def test_a_node_whose_data_differs_from_the_servers_is_left_out(tiny_data, tmp_path, caplog):
    lines = tiny_data.read_text().splitlines()
    shortened = [" ".join(line.split()[:-1]) for line in lines]  # every user lost their last item
    node_file = tmp_path / "node.txt"
    node_file.write_text("\n".join(shortened) + "\n")
    grid = InProcessGrid(make_client_app(), {7: {"data-dir": str(node_file)}})
    from feddmmr.errors import NodesLost

    # Its only node is refused, so the round hears from no one: the run stops rather than go on untrained.
    with (
        caplog.at_level("WARNING", logger="feddmmr"),
        pytest.raises(NodesLost, match="round 1: no update arrived"),
    ):
        train_on_grid(grid, config(tiny_data, tmp_path / "flower", num_rounds=1, flower_supernodes=1))
    assert any("does not match the server's" in r.getMessage() for r in caplog.records)


def test_nodes_reading_their_own_files_train_like_the_local_engine(tiny_data, tmp_path, local_round):
    """A deployment: each node reads only its own file (original ids, its own item numbering)."""
    from feddmmr.data.load import load_sequences
    from feddmmr.flower.partition import write_node_files

    files = write_node_files(load_sequences(str(tiny_data)), 2, tmp_path / "nodes")
    own = InProcessGrid(make_client_app(), {10 + k: {"data-dir": str(path)} for k, path in enumerate(files)})
    by_files = train_on_grid(own, config(tiny_data, tmp_path / "files", num_rounds=1))
    assert by_files.history[0]["failed_clients"] == 0
    assert_same_weights(weights(by_files.run_dir), weights(local_round.run_dir))


def test_run_config_round_trips_and_names_bad_values():
    cfg = TrainConfig(data_dir="x.txt", top_users=100, learning_rate=0.01, validate_every=None)
    assert from_flower_config(to_flower_config(cfg), "test") == cfg
    assert to_flower_config(cfg)["modality"] == ""  # Flower's run config has no lists
    listed = from_flower_config({"modality": "a=x.npz,b=y.npz", "model": "feddmmr"}, "test")
    assert listed.modality == ["a=x.npz", "b=y.npz"]
    assert from_flower_config({"learning-rate": 1}, "test").learning_rate == 1.0
    with pytest.raises(ValueError, match=r"run config: num-rounds='5' \(str\); expected int"):
        from_flower_config({"num-rounds": "5"}, "run config")
    with pytest.raises(ValueError, match="unknown setting 'rounds'"):
        from_flower_config({"rounds": 5}, "run config")


def test_pyproject_declares_the_flower_app_with_every_setting():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    app = pyproject.get("tool", {}).get("flwr", {}).get("app")
    assert app is not None, "pyproject.toml lacks [tool.flwr.app]; see docs/DEPLOY.md"
    assert app["components"] == {
        "serverapp": "feddmmr.flower.server_app:app",
        "clientapp": "feddmmr.flower.client_app:app",
    }
    assert app["config"] == tomllib.loads(pyproject_block())["tool"]["flwr"]["app"]["config"]


def run_with_hard_timeout(command: list[str], *, env: dict, cwd: Path, timeout: float) -> tuple[int, str]:
    """Run in a new session and SIGKILL the whole group on timeout: Ray's processes with it."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the simulation did not finish within {timeout} s:\n{output[-4000:]}")
    return process.returncode, output


SIMULATION_SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    from feddmmr.config import TrainConfig
    from feddmmr.flower.simulation import run_flower_simulation

    settings = json.loads(sys.argv[1])
    run_dir = settings["run_dir"]

    def fail_in_round_2_on_partition_1(message, context, call_next):
        if (message.metadata.message_type == "train" and context.node_config["partition-id"] == 1
                and message.content["round"]["round"] == 2):
            raise RuntimeError("injected failure in round 2")
        return call_next(message, context)

    def keep_round_1(record):
        if record["round"] == 1:
            shutil.copy(run_dir + "/checkpoints/last.pt", run_dir + "/round-1.pt")

    result = run_flower_simulation(TrainConfig(**settings), on_round=keep_round_1,
                                   client_mods=[fail_in_round_2_on_partition_1])
    print("RESULT", json.dumps(result.final["best_round"]))
""")


@pytest.mark.slow
def test_simulation_runs_two_rounds_with_a_failing_node(tiny_data, tmp_path, local_round):
    settings = dict(
        config(
            tiny_data,
            tmp_path / "flower",
            num_rounds=2,
            validate_every=1,
            flower_supernodes=2,
            flower_round_timeout=60.0,
        ).to_dict(),
        engine="flower",
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_DEDUP_LOGS": "0",
    }
    returncode, output = run_with_hard_timeout(
        [sys.executable, "-c", SIMULATION_SCRIPT, json.dumps(settings)],
        env=env,
        cwd=tmp_path,
        timeout=SIMULATION_TIMEOUT,
    )
    assert returncode == 0, output[-4000:]
    run_dir = tmp_path / "flower"
    assert json.loads((run_dir / "final.json").read_text())["rounds_run"] == 2
    first, second = records(run_dir)
    assert first["failed_clients"] == 0 and 0 < second["failed_clients"] < second["clients"]
    assert "injected failure in round 2" in output and "left out of the round" in output

    round_1 = torch.load(run_dir / "round-1.pt", weights_only=True)["model"]
    assert_same_weights(round_1, weights(local_round.run_dir))
    assert first["train_loss"] == pytest.approx(local_round.history[0]["train_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def text_features(tiny_data, tmp_path_factory):
    """Random 12-d features of the tiny dataset's items, 10 of them missing."""
    import numpy as np

    from feddmmr.features.store import save_features

    ids = sorted({int(x) for line in tiny_data.read_text().splitlines() for x in line.split()[1:]})
    path = tmp_path_factory.mktemp("features") / "text.npz"
    save_features(
        path, np.array(ids[10:]), np.random.default_rng(0).normal(size=(len(ids) - 10, 12)).astype(np.float32)
    )
    return path


def test_feddmmr_on_flower_keeps_memories_on_the_nodes_and_matches_the_local_engine(
    tiny_data, text_features, tmp_path
):
    """Two rounds, validated after each, then the test: the same weights, validation metrics,
    memory and router statistics and test metrics as the vectorised engine, with the memories
    only ever in the nodes' Contexts (the server's checkpoints hold none)."""
    feddmmr = dict(
        num_rounds=2,
        validate_every=1,
        model="feddmmr",
        modality=[f"text={text_features}"],
        alignment_weight=0.1,
    )
    local = train(config(tiny_data, tmp_path / "local", **feddmmr))
    grid = InProcessGrid(make_client_app(), partitions(3))
    flower = train_on_grid(grid, config(tiny_data, tmp_path / "flower", flower_supernodes=3, **feddmmr))

    assert_same_weights(weights(flower.run_dir), weights(local.run_dir), fedadam_rounds=2)
    for ours, theirs in zip(flower.history, local.history, strict=True):
        assert ours["failed_clients"] == 0
        assert ours["val"] == pytest.approx(theirs["val"], abs=1e-9)
        assert ours["memory"] == pytest.approx(theirs["memory"])
        assert ours["router_weights"] == pytest.approx(theirs["router_weights"])
        assert ours["gate"] == pytest.approx(theirs["gate"])
    assert flower.history[-1]["memory"]["long_term_size"] > 0
    assert flower.final["best_round"] == local.final["best_round"]
    assert flower.final["test"] == pytest.approx(local.final["test"], abs=1e-9)

    for checkpoint in ("last.pt", "best.pt"):
        assert "memory" not in load_checkpoint(flower.run_dir / "checkpoints" / checkpoint)
    states = [context.state for context in grid.contexts.values()]
    assert all("memory" in state for state in states)
    # Each node keeps a copy of the memories of the best round only (the test read it).
    assert all(
        sorted(k for k in state if k.startswith("memory@")) == [f"memory@{flower.final['best_round']}"]
        for state in states
    )


def test_a_feddmmr_flower_run_cannot_resume_or_be_re_evaluated_without_its_nodes(
    tiny_data, text_features, tmp_path
):
    from feddmmr.best_model import evaluate_run

    cfg = config(
        tiny_data, tmp_path / "flower", num_rounds=1, model="feddmmr", modality=[f"text={text_features}"]
    )
    train_on_grid(InProcessGrid(make_client_app(), partitions(2)), cfg)
    with pytest.raises(ValueError, match="cannot be resumed: its client memories lived on the SuperNodes"):
        train_on_grid(InProcessGrid(make_client_app(), partitions(2)), cfg, resume=True)
    with pytest.raises(ValueError, match="kept its client memories on the SuperNodes"):
        evaluate_run(tmp_path / "flower")


@pytest.mark.parametrize(
    "negatives",
    [
        dict(negatives="shared", num_negatives=16),
        dict(loss="ce-full"),
        dict(loss="gbce", gbce_t=0.5),
        dict(update_noise=1.0),
    ],
)
def test_nodes_train_with_the_runs_negatives(tiny_data, tmp_path, negatives):
    """Shared negatives and ce-full: the nodes draw and score the same negatives as the local engine
    (and weigh gbce's positive, and draw each user's update noise, as it does)."""
    options = dict(num_rounds=1, server_optimizer="fedavg", **negatives)
    local = train(config(tiny_data, tmp_path / "local", **options))
    flower = train_on_grid(
        InProcessGrid(make_client_app(), partitions(2)), config(tiny_data, tmp_path / "flower", **options)
    )
    assert flower.history[0]["failed_clients"] == 0
    assert flower.history[0]["train_loss"] == pytest.approx(local.history[0]["train_loss"], rel=1e-5)
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir), fedadam_rounds=0)


def test_nodes_train_with_the_runs_local_optimizer(tiny_data, tmp_path):
    sgd = dict(num_rounds=1, local_optimizer="sgd", learning_rate=0.5)
    local = train(config(tiny_data, tmp_path / "local", **sgd))
    flower = train_on_grid(
        InProcessGrid(make_client_app(), partitions(2)), config(tiny_data, tmp_path / "flower", **sgd)
    )
    assert flower.history[0]["failed_clients"] == 0
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir))


def test_a_resumed_flower_run_repeats_the_uninterrupted_one(tiny_data, tmp_path, caplog):
    """A Flower run stopped after round 2 and resumed by the ServerApp from its run config
    (`resume = true`, as after a restarted SuperLink) on fresh nodes with empty state ends with the
    weights, clients and metrics of a run that never stopped: the nodes keep nothing a later round
    needs, and the server's checkpoint has the rest."""
    settings = dict(
        validate_every=1, patience=0, flower_supernodes=2, engine="flower", threads=1
    )  # as the resumed run
    reference = train_on_grid(
        InProcessGrid(make_client_app(), partitions(2)),
        config(tiny_data, tmp_path / "reference", num_rounds=4, **settings),
    )
    # The first run stops after round 2 of 4, as if killed (the CLI resumes only with the same config).
    stop = RuntimeError("killed after round 2")

    def kill_after_round_2(record):
        if record["round"] == 2:
            raise stop

    full = config(tiny_data, tmp_path / "resumed", num_rounds=4, **settings)
    with pytest.raises(RuntimeError, match="killed after round 2"):
        train_on_grid(InProcessGrid(make_client_app(), partitions(2)), full, on_round=kill_after_round_2)
    results = []
    server_app = make_server_app(deliver=results.append)
    run_config = {**to_flower_config(full), "resume": True, "threads": 1}
    with caplog.at_level("INFO", logger="feddmmr"):
        server_app(
            InProcessGrid(make_client_app(), partitions(2)),
            Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config),
        )
    assert f"resume: continuing {tmp_path / 'resumed'} after round 2" in caplog.text
    (resumed,) = results
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]
    for ours, theirs in zip(resumed.history, reference.history):
        assert ours["clients"] == theirs["clients"] and ours["val"] == theirs["val"]
        assert ours["train_loss"] == theirs["train_loss"]
    assert resumed.final["test"] == reference.final["test"]
    expected = weights(reference.run_dir)
    for name, tensor in weights(resumed.run_dir).items():
        assert torch.equal(tensor, expected[name]), name


def test_resuming_from_the_run_config_takes_the_saved_config_and_refuses_other_settings(tiny_data, tmp_path):
    from feddmmr.flower.run_config import from_run_config

    saved = config(tiny_data, tmp_path / "run", num_rounds=3, engine="flower")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved.to_dict()))
    values = to_flower_config(saved)
    assert from_run_config(values) == (saved, False)
    resumed, resume = from_run_config({**values, "resume": True, "threads": 1})  # threads: a safe change
    assert resume and resumed.threads == 1 and resumed.num_rounds == 3
    extended, _ = from_run_config({**values, "resume": True, "num-rounds": 5})  # extends the run
    assert extended.num_rounds == 5
    with pytest.raises(ValueError, match="asks for other values of dropout, learning-rate; drop those"):
        from_run_config({**values, "resume": True, "dropout": 0.3, "learning-rate": 0.1})
    with pytest.raises(ValueError, match='resume=true continues the run in run-dir; set run-dir="PATH"'):
        from_run_config({**values, "resume": True, "run-dir": ""})
    with pytest.raises(ValueError, match="does not exist; is run-dir a feddmmr run"):
        from_run_config({**values, "resume": True, "run-dir": str(tmp_path / "elsewhere")})
    with pytest.raises(ValueError, match="resume='yes' .str.; expected true or false"):
        from_run_config({**values, "resume": "yes"})


@pytest.mark.parametrize("aggregator", ["median", "krum"])
def test_robust_rules_combine_the_nodes_updates(tiny_data, tmp_path, aggregator):
    """On Flower the server sees one update per node (its users' mean): the robust rules act on those."""
    robust = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)),
        config(
            tiny_data,
            tmp_path / aggregator,
            num_rounds=1,
            flower_supernodes=3,
            server_optimizer="fedavg",
            aggregator=aggregator,
            robust_fraction=0.34,
        ),
    )
    plain = train_on_grid(
        InProcessGrid(make_client_app(), partitions(3)),
        config(tiny_data, tmp_path / "fedavg", num_rounds=1, flower_supernodes=3, server_optimizer="fedavg"),
    )
    robust_weights, plain_weights = weights(robust.run_dir), weights(plain.run_dir)
    assert all(torch.isfinite(t).all() for t in robust_weights.values())
    # Krum with f = 1 of 3 nodes keeps 2; the median takes the middle node per coordinate: neither is the mean.
    difference = (
        (robust_weights["item_embedding.weight"] - plain_weights["item_embedding.weight"]).abs().max()
    )
    assert difference > 1e-4


@pytest.mark.parametrize("attack, nodes", [("data-poisoning", 3), ("model-poisoning", 60)])
def test_fake_clients_join_a_flower_round_as_they_join_a_local_one(tiny_data, tmp_path, attack, nodes):
    """The fake clients train (or craft their updates) in the server's process, beside the nodes,
    and reach the aggregation as one client each. Model poisoning matches its norm to the median of
    the updates the server receives, which are per-node means: with one user a node, those are the
    local engine's per-user updates."""
    options = dict(
        num_rounds=1, server_optimizer="fedavg", attack=attack, attack_fraction=0.1, attack_targets=3
    )
    local = train(config(tiny_data, tmp_path / "local", **options))
    flower = train_on_grid(
        InProcessGrid(make_client_app(), partitions(nodes)),
        config(tiny_data, tmp_path / "flower", flower_supernodes=nodes, **options),
    )
    (local_record,), (flower_record,) = local.history, flower.history
    assert flower_record["attack_clients"] == local_record["attack_clients"] == 3
    assert flower_record["failed_clients"] == 0
    assert flower_record["train_loss"] == pytest.approx(
        local_record["train_loss"], rel=1e-5
    )  # genuine clients only
    assert_same_weights(weights(flower.run_dir), weights(local.run_dir), fedadam_rounds=0)
