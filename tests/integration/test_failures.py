"""Bad input and faults, through the command line: each ends with exit code 2 (bad input) or 1 (a
failed run), one `error:` line that names the culprit (flag, key, file), and no traceback."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import typing

import numpy as np
import pytest
import torch
from helpers import TINY_MODEL
from typer.testing import CliRunner

from feddmmr.cli import app
from feddmmr.config import BOOL, FIELDS, TrainConfig
from feddmmr.config_rules import Between, Matches, OneOf
from feddmmr.train import train

runner = CliRunner()

TINY = dict(
    **TINY_MODEL,
    client_fraction=0.5,
    learning_rate=5e-3,
)


def fails(args: list[str], culprit: str, code: int = 2) -> str:
    """Run the CLI; check the exit code, that exactly one `error:` line names `culprit`, and that
    no traceback was printed. Returns the error line."""
    result = runner.invoke(app, [str(a) for a in args])
    output = result.output
    assert result.exit_code == code, output[-3000:]
    assert "Traceback" not in output and "locals" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-3000:]
    assert culprit in errors[0], errors[0]
    assert len(errors[0]) < 1000  # however large the input
    return errors[0]


def tiny_flags(data, run_dir) -> list[str]:
    flags = ["--data-dir", data, "--run-dir", run_dir]
    for name, value in TINY.items():
        flags += ["--" + name.replace("_", "-"), value]
    return flags


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """A finished two-round run (both rounds validated), copied by each test that damages it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(TrainConfig(data_dir=str(tiny_data), run_dir=str(run_dir), num_rounds=2, validate_every=1, **TINY))
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


# ---------------------------------------------------------------------------------------------
# Every setting: a value of the wrong type in a preset, and a value outside its rule as a flag.

HINTS = typing.get_type_hints(TrainConfig)


def base_type(name: str):
    hint = HINTS[name]
    if typing.get_origin(hint) is list:
        return list
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    return arguments[0] if arguments else hint


WRONG_TYPE = {int: "two", float: "fast", str: ["a", "list"], bool: "yes please", list: {"text": 1}}


def outside_rule(name: str):
    """A value of the right type that the field's rule rejects, as a flag would spell it."""
    rule = FIELDS[name].metadata["rule"]
    if isinstance(rule, Between):
        low = rule.low
        value = low if rule.low_open else low - 1
        return str(int(value) if base_type(name) is int else float(value))
    if isinstance(rule, OneOf):
        return "7" if base_type(name) is int else "nonsense"
    assert isinstance(rule, Matches)
    return {"device": "tpu", "modality": "features.npz", "chunk_clients": "0", "chunk_windows": "-3"}.get(
        name, "   "
    )


def elsewhere(name: str, tmp_path) -> list[str]:
    """The run directory in tmp_path, and a data folder that is not there: should a bad value slip
    through, the run fails at once (with another message) instead of training."""
    run_dir = [] if name == "run_dir" else ["--run-dir", str(tmp_path / "run")]
    return run_dir + ([] if name in ("data_dir", "format") else ["--data-dir", str(tmp_path / "no-data")])


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_a_preset_value_of_the_wrong_type_names_the_file_and_key(name, tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({name: WRONG_TYPE[base_type(name)]}))
    line = fails(["train", "--config", preset, *elsewhere(name, tmp_path)], f"{preset}: {name}: expected")
    assert "got" in line
    assert not (tmp_path / "run").exists()  # nothing made before the settings were checked


@pytest.mark.parametrize("name", sorted(n for n in FIELDS if FIELDS[n].metadata["rule"] is not BOOL))
def test_a_flag_outside_its_range_or_choices_names_the_flag(name, tmp_path):
    flag = "--" + name.replace("_", "-")
    line = fails(["train", flag, outside_rule(name), *elsewhere(name, tmp_path)], f"{flag}: expected")
    assert str(FIELDS[name].metadata["rule"]) in line  # says what it takes
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# Settings and preset files, as the issue found them


@pytest.mark.parametrize(
    "text, culprit",
    [
        ('{"num_rounds": 2.7}', "num_rounds: expected a whole number >= 1, got 2.7"),
        ('{"centralized": "yes please"}', "centralized: expected true or false, got 'yes please'"),
        ('{"num_rounds": true}', "num_rounds: expected a whole number >= 1, got True"),
        ('{"client_fraction": [0.1, 0.2]}', "client_fraction: expected a number in (0, 1], got [0.1, 0.2]"),
        ('{"learning_rate": null}', "learning_rate: expected a number > 0, got null"),
        ('{"hidden_dim": "64"}', "hidden_dim: expected a whole number >= 1, got '64'"),
        ('{"num_round": 3}', "unknown settings num_round (did you mean num_rounds?)"),
        ("[1, 2]", "expected a mapping of settings"),
        ('{"num_rounds": ', "not valid JSON"),
        ('{"learning_rate": NaN}', "learning_rate: expected a finite number"),
    ],
)
def test_bad_json_presets(text, culprit, tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_text(text)
    assert str(preset) in fails(["train", "--config", preset, "--run-dir", tmp_path / "run"], culprit)


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("num_rounds: two\n", "num_rounds: expected a whole number >= 1, got 'two'"),
        ("num_rounds: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping of settings"),
        ("learning_rate: .inf\n", "learning_rate: expected a finite number"),
        (
            "dropout: 1e-0\n",
            "dropout: expected a number in [0, 0.996094], got 1.0",
        ),  # 1e-0 is a number, as users mean it
    ],
)
def test_bad_yaml_presets(text, culprit, tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    fails(["train", "--config", preset, "--run-dir", tmp_path / "run"], culprit)


def test_a_binary_preset_is_not_read_as_settings(tmp_path):
    preset = tmp_path / "preset.json"
    preset.write_bytes(bytes(range(256)))
    fails(["train", "--config", preset], "not a text file")


def test_a_folder_or_missing_preset(tmp_path):
    fails(["train", "--config", tmp_path], "is a folder")
    fails(["train", "--config", tmp_path / "none.yaml"], "none.yaml does not exist")


@pytest.mark.parametrize(
    "args, culprit",
    [
        (["--device", "tpu"], "--device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        (["--device", "cuda:0"], "--device cuda:0: CUDA is not available"),
        (["--threads", "-1"], "--threads: expected a whole number >= 1, got -1"),
        (["--seed", "-1"], "--seed: expected a whole number in [0, 4294967295], got -1"),
        (["--weight-decay", "-1"], "--weight-decay: expected a number >= 0, got -1.0"),
        (["--hidden-dim", "30", "--num-heads", "4"], "hidden_dim=30 must be a multiple of num_heads=4"),
        (["--format", "ml-1m"], "format needs data_dir"),
        (["--dp-noise-multiplier", "1"], "dp_noise_multiplier needs dp_clip_norm"),
        (["--dp-clip-norm", "1", "--centralized"], "--centralized pools the users"),
        (["--model", "feddmmr"], "model=feddmmr needs at least one modality"),
        (["--modality", "text=t.npz"], "modality is for model=feddmmr"),
        (["--flower-secure-aggregation"], "flower_secure_aggregation is for engine=flower"),
    ],
)
def test_bad_flags(args, culprit, tmp_path):
    if args[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(["train", *args, "--run-dir", tmp_path / "run", "--num-rounds", "1"], culprit)
    assert not (tmp_path / "run").exists()


def test_the_data_bounds_the_negatives(tiny_data, tmp_path):
    fails(
        ["train", *tiny_flags(tiny_data, tmp_path / "a"), "--num-negatives", "5000"],
        "--num-negatives 5000: the data has 150 items",
    )
    fails(
        ["train", *tiny_flags(tiny_data, tmp_path / "b")[:-2], "--num-negatives-eval", "140"],
        "--num-negatives-eval 140: user",
    )
    fails(
        ["train", *tiny_flags(tiny_data, tmp_path / "c"), "--negatives", "shared", "--num-negatives", "140"],
        "--num-negatives 140 with --negatives shared: a user of the data has read all but 90 of its 150 items",
    )
    # The default (256 shared negatives) on a catalogue this small names the recipe that fits it.
    fails(
        ["train", "--data-dir", str(tiny_data), "--run-dir", str(tmp_path / "d")],
        "--num-negatives 256: the data has 150 items, so a target has at most 149 other items to contrast with; "
        "use fewer, or --config short_history",
    )
    fails(
        ["train", "--data-dir", str(tiny_data), "--run-dir", str(tmp_path / "e"), "--num-negatives", "100"],
        "a user of the data has read all but 90 of its 150 items, so a step has at most 90 distinct negatives; use "
        "at most 90, or --config short_history",
    )
    assert not any((tmp_path / name).exists() for name in "acde")


@pytest.mark.parametrize(
    "extra, module, args",
    [
        ("flower", "flwr", ["--engine", "flower"]),
        ("dp", "opacus", ["--dp-clip-norm", "1.0"]),
    ],
)
def test_a_missing_extra_says_what_to_install(extra, module, args, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a)
    )
    fails(["train", *args, "--run-dir", tmp_path / "run"], f"pip install 'feddmmr[{extra}]'")
    assert not (tmp_path / "run").exists()


def test_resume_takes_no_other_settings(run_copy):
    fails(["train", "--resume", run_copy, "--learning-rate", "0.5"], "drop --learning-rate")
    fails(["train", "--resume", run_copy, "--num-rounds", "1"], "--num-rounds 1: ")


# ---------------------------------------------------------------------------------------------
# Data files


@pytest.mark.parametrize(
    "content, culprit",
    [
        (b"", "no interactions"),
        (b"1 2\n1 x\n", ":2:"),
        (bytes(range(256)), "not valid UTF-8"),
        (b"1 " + b"9" * 5000 + b"x\n", "more characters"),  # a huge bad line is quoted, not printed whole
    ],
)
def test_bad_data_files_name_the_file_and_line(content, culprit, tmp_path):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    assert str(data) in fails(["train", "--data-dir", data, "--run-dir", tmp_path / "run"], culprit)
    assert not (tmp_path / "run").exists()


def test_missing_data(tmp_path):
    fails(["train", "--data-dir", tmp_path / "nowhere", "--run-dir", tmp_path / "run"], "nowhere")


def test_negative_csv_ids_are_refused_as_in_the_text_formats(tmp_path):
    data = tmp_path / "log.csv"
    data.write_text("user,item,time\n1,5,1\n1,-6,2\n")
    fails(["train", "--data-dir", data], f"{data}:3: item -6 is not a non-negative integer")


# ---------------------------------------------------------------------------------------------
# Damaged files of a run, and checkpoints given by the user


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "a tensor":
        torch.save(torch.zeros(3), path)
    elif how == "folder":
        path.unlink()
        path.mkdir()


HOW = ["truncated", "random", "empty", "a tensor", "folder"]


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_last_checkpoint_stops_resume(how, run_copy):
    last = run_copy / "checkpoints" / "last.pt"
    damage(last, how)
    fails(["train", "--resume", run_copy, "--patience", "0"], str(last))


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_best_checkpoint_stops_evaluate(how, run_copy):
    best = run_copy / "checkpoints" / "best.pt"
    damage(best, how)
    fails(["evaluate", run_copy], str(best))


@pytest.mark.parametrize("how", HOW)
def test_a_damaged_init_from_checkpoint(how, run_copy, tiny_data, tmp_path):
    best = run_copy / "checkpoints" / "best.pt"
    damage(best, how)
    fails(["train", *tiny_flags(tiny_data, tmp_path / "new"), "--init-from", best], str(best))


@pytest.mark.parametrize("how", ["truncated", "random", "empty", "folder"])
def test_damaged_candidates(how, run_copy):
    candidates = run_copy / "candidates.npz"
    damage(candidates, how)
    fails(["evaluate", run_copy], str(candidates))


def test_candidates_of_another_run(run_copy):
    with np.load(run_copy / "candidates.npz") as saved:
        arrays = dict(saved)
    np.savez(
        run_copy / "candidates.npz",
        users=arrays["users"],
        valid=arrays["valid"][:, :11],
        test=arrays["test"][:, :11],
    )
    fails(
        ["evaluate", run_copy], "holds 10 negatives per user, but the run's config says num_negatives_eval=20"
    )


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("{", "config.json: not valid JSON"),
        ('{"num_rounds": "two"}', "config.json: num_rounds: expected a whole number"),
        ('{"num_round": 2}', "config.json: unknown settings num_round"),
    ],
)
def test_a_damaged_run_config(text, culprit, run_copy):
    (run_copy / "config.json").write_text(text)
    fails(["evaluate", run_copy], culprit)
    fails(["train", "--resume", run_copy], culprit)


def test_not_a_run_directory(tmp_path):
    fails(["evaluate", tmp_path], "no config.json; is this a feddmmr run directory?")
    fails(["train", "--resume", tmp_path], "no config.json; is this a feddmmr run directory?")
    fails(["report", tmp_path], "no metrics.jsonl")


@pytest.mark.parametrize(
    "line, culprit",
    [
        ("{not json", "line 3: not a JSON record"),
        ("[1, 2]", "line 3: not a round's record"),
    ],
)
def test_report_names_a_corrupt_metrics_line(line, culprit, run_copy):
    metrics = run_copy / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + line + "\n")
    assert str(metrics) in fails(["report", run_copy], culprit)


def test_report_output_must_be_a_folder(run_copy, tmp_path):
    target = tmp_path / "plots.png"
    target.write_text("")
    fails(["report", run_copy, "--output", target], f"--output {target} is a file")


def test_a_damaged_feature_file(tiny_data, tmp_path):
    from feddmmr.data.load import load_sequences
    from feddmmr.features.store import save_features

    items = load_sequences(str(tiny_data)).item_ids[1:]
    features = save_features(tmp_path / "text.npz", items, np.ones((len(items), 8), dtype=np.float32))
    damage(features, "truncated")
    fails(
        [
            "train",
            *tiny_flags(tiny_data, tmp_path / "run"),
            "--model",
            "feddmmr",
            "--modality",
            f"text={features}",
        ],
        str(features),
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# One run directory, one run


def test_run_dir_is_a_file(tiny_data, tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    fails(["train", *tiny_flags(tiny_data, target)], f"--run-dir {target} is a file")


def test_a_new_run_never_reuses_a_run_directory(run_copy, tiny_data):
    fails(
        ["train", *tiny_flags(tiny_data, run_copy)],
        f"{run_copy} already holds a run; continue it with --resume",
    )


def test_one_writer_at_a_time(run_copy):
    from feddmmr.run_directory import RunLock

    lock = RunLock(run_copy)  # as another process would hold it
    try:
        fails(
            ["train", "--resume", run_copy, "--patience", "0"], "is in use by another feddmmr process", code=1
        )
    finally:
        lock.release()


def test_resume_refuses_changed_data(tiny_data, tmp_path):
    data = tmp_path / "data.txt"
    shutil.copy(tiny_data, data)
    first = runner.invoke(app, ["train", *tiny_flags(data, tmp_path / "run"), "--num-rounds", "2"])
    assert first.exit_code == 0, first.output[-3000:]
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-1]) + "\n")  # one user fewer
    fails(["train", "--resume", tmp_path / "run"], "is not the data this run started with (users 60 -> 59")
    fails(["evaluate", tmp_path / "run"], "is not the data this run started with")


def test_resume_refuses_a_changed_feature_file(tiny_data, tmp_path):
    from feddmmr.data.load import load_sequences
    from feddmmr.features.store import save_features

    items = load_sequences(str(tiny_data)).item_ids[1:]
    rng = np.random.default_rng(0)
    features = save_features(
        tmp_path / "text.npz", items, rng.normal(size=(len(items), 8)).astype(np.float32)
    )
    args = [*tiny_flags(tiny_data, tmp_path / "run"), "--model", "feddmmr", "--modality", f"text={features}"]
    assert runner.invoke(app, ["train", *args, "--num-rounds", "1"]).exit_code == 0
    save_features(features, items, rng.normal(size=(len(items), 8)).astype(np.float32))
    fails(
        ["train", "--resume", tmp_path / "run"],
        f"the feature file of modality text ({features}) is not the one",
    )


def test_out_of_memory_says_what_to_lower(tiny_data, tmp_path, monkeypatch):
    import feddmmr.run_setup as run_setup

    def too_big(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 512000000000 bytes."
        )

    monkeypatch.setattr(run_setup, "build_model", too_big)
    fails(["train", *tiny_flags(tiny_data, tmp_path / "run")], "out of memory", code=1)


def test_a_deleted_checkpoint_restarts_without_repeating_rounds(run_copy):
    (run_copy / "checkpoints" / "last.pt").unlink()
    result = runner.invoke(app, ["train", "--resume", run_copy])
    assert result.exit_code == 0, result.output[-2000:]
    rounds = [json.loads(line)["round"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]


# ---------------------------------------------------------------------------------------------
# Faults while running


def test_a_full_disk_stops_cleanly_and_the_run_resumes(tiny_data, tmp_path, monkeypatch):
    import feddmmr.atomic as atomic

    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["train", *tiny_flags(tiny_data, run_dir), "--num-rounds", "2"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    (run_dir / "checkpoints" / "last.pt").write_bytes(before["last.pt"])
    line = fails(["train", "--resume", run_dir, "--patience", "0"], "No space left on device", code=1)
    assert "--resume" in line
    monkeypatch.undo()
    assert {
        p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()
    } == before  # intact, no temp files
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("stage", ["2", "3"])
def test_a_later_stage_without_the_previous_stages_weights_is_refused(tiny_data, tmp_path, stage):
    """Stages 2 and 3 freeze part of the model where it starts: from random weights that is no
    training at all, so they need --init-from."""
    extra = ["--model", "feddmmr", "--modality", f"text={tmp_path / 'unread.npz'}"] if stage == "2" else []
    line = fails(["train", *tiny_flags(tiny_data, tmp_path / "run"), "--stage", stage, *extra], "--init-from")
    assert f"stage={stage}" in line and not (tmp_path / "run").exists()


def test_training_without_posix_file_locks_says_where_it_runs(tiny_data, tmp_path, monkeypatch):
    """Windows has no fcntl: training stops as it claims the run directory, and names the alternatives."""
    import feddmmr.run_directory as run_directory

    monkeypatch.setattr(run_directory, "fcntl", None)
    line = fails(["train", *tiny_flags(tiny_data, tmp_path / "run")], "Windows lacks", code=1)
    assert "WSL2" in line


@pytest.fixture
def silent_server():
    """A local port that accepts connections and never answers: an MLflow server that hangs."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.mark.parametrize(
    "uri, culprit",
    [
        ("foo://tracking", "unknown scheme 'foo'"),
        ("http://127.0.0.1:9", "no MLflow server answered"),
        ("silent", "no MLflow server answered within 0.5 s"),
    ],
)
def test_an_unusable_mlflow_uri_fails_fast_and_before_the_run_folder(
    tiny_data, tmp_path, monkeypatch, silent_server, uri, culprit
):
    pytest.importorskip("mlflow")
    import feddmmr.trackers as trackers

    monkeypatch.setattr(trackers, "SERVER_CHECK_SECONDS", 0.5)
    uri = silent_server if uri == "silent" else uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    line = fails(["train", *tiny_flags(tiny_data, tmp_path / "run"), "--tracker", "mlflow"], culprit)
    assert f"MLFLOW_TRACKING_URI={uri}" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql+psycopg2://user@db.example/mlflow",
        "mysql+pymysql://user@db/mlflow",
        "sqlite:///runs/mlflow.db",
        "uc:databricks-uc",
        "/srv/mlruns",
    ],
)
def test_mlflow_uris_that_mlflow_takes_pass_the_check(monkeypatch, uri):
    """Database schemes may name their driver; none of these needs a server to answer."""
    from feddmmr.trackers import check_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    check_tracking_uri(type("Settings", (), {"tracker": ["mlflow"]})())  # raises if refused


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 64 KiB file system (tmpfs), too small for a run's checkpoints: mounting needs root (CI
    runs as root)."""
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_names_the_file_and_the_run_resumes_once_there_is_room(
    tiny_data, tmp_path, small_tmpfs
):
    """Not a patched fault: torch.save meets a real ENOSPC (which it would wrap in a RuntimeError
    written straight to the file). The error names the file and says --resume; after the disk
    grows, the resumed run ends where an uninterrupted one does."""
    import subprocess

    run_dir = small_tmpfs / "run"
    wide = [
        "--num-rounds",
        "2",
        "--hidden-dim",
        "128",
    ]  # checkpoints of about 1 MiB: torch.save meets the full disk
    line = fails(["train", *tiny_flags(tiny_data, run_dir), *wide], "No space left on device", code=1)
    assert str(run_dir) in line and "--resume" in line
    assert not list(run_dir.rglob(".*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_tmpfs)], check=True)
    assert runner.invoke(app, ["train", "--resume", str(run_dir)]).exit_code == 0
    reference = tmp_path / "reference"
    assert runner.invoke(app, ["train", *tiny_flags(tiny_data, reference), *wide]).exit_code == 0
    resumed, uninterrupted = (json.loads((d / "final.json").read_text()) for d in (run_dir, reference))
    assert {k: v for k, v in resumed.items() if k != "train_seconds"} == {
        k: v for k, v in uninterrupted.items() if k != "train_seconds"
    }


@pytest.mark.parametrize("code, hint", [(errno.EIO, "check the device"), (errno.EDQUOT, "raise the quota")])
def test_io_and_quota_errors_name_the_file_and_say_what_to_do(tiny_data, tmp_path, monkeypatch, code, hint):
    import feddmmr.atomic as atomic

    def failing(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "fsync", failing)
    line = fails(["train", *tiny_flags(tiny_data, tmp_path / "run")], os.strerror(code), code=1)
    assert str(tmp_path / "run") in line and hint in line and "--resume" in line


def test_a_read_only_run_directory(tiny_data, tmp_path, monkeypatch):
    import feddmmr.atomic as atomic

    def read_only(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path.parent))

    monkeypatch.setattr(atomic, "create_temp", read_only)
    line = fails(["train", *tiny_flags(tiny_data, tmp_path / "run")], "Permission denied", code=1)
    assert str(tmp_path / "run") in line and "pick another --run-dir" in line


def test_a_diverged_model_stops_the_run_and_is_never_saved(tiny_data, tmp_path):
    from feddmmr.federated.aggregation import AGGREGATORS, FedAvg, register_aggregator

    class Poisoned(FedAvg):
        def result(self):
            return {name: torch.full_like(value, float("nan")) for name, value in super().result().items()}

    register_aggregator("poisoned", lambda params, fraction: Poisoned(params))
    try:
        line = fails(
            [
                "train",
                *tiny_flags(tiny_data, tmp_path / "run"),
                "--aggregator",
                "poisoned",
                "--validate-every",
                "1",
            ],
            "round 1: the global model's weights became non-finite",
            code=1,
        )
    finally:
        del AGGREGATORS["poisoned"]
    assert "--learning-rate" in line
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_a_bug_prints_a_short_traceback_without_locals(tiny_data, tmp_path, monkeypatch):
    import feddmmr.run_setup as run_setup

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(run_setup, "build_model", broken)
    result = runner.invoke(app, ["train", *tiny_flags(tiny_data, tmp_path / "run")])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "this is a bug in feddmmr" in result.output
    assert "locals" not in result.output and len(result.output.splitlines()) < 80


def test_debug_shows_the_traceback_of_an_expected_error(tmp_path):
    result = runner.invoke(app, ["train", "--num-rounds", "0", "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.output and "error: --num-rounds: expected" in result.output


def test_an_interrupt_says_how_to_resume(tiny_data, tmp_path, monkeypatch):
    import feddmmr.run_setup as run_setup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_setup, "build_model", interrupted)
    result = runner.invoke(app, ["train", *tiny_flags(tiny_data, tmp_path / "run")])
    assert result.exit_code == 130 and "--resume RUN_DIR" in result.output
    assert "Traceback" not in result.output


def test_skipped_steps_are_one_line_a_round_and_a_round_that_trained_nothing_stops(tmp_path, caplog):
    import logging

    from feddmmr.errors import TrainingDiverged
    from feddmmr.federated.local import ClientReport
    from feddmmr.rounds import check_skipped_steps

    config = TrainConfig(learning_rate=2.0)
    with caplog.at_level(logging.WARNING, logger="feddmmr.rounds"):
        check_skipped_steps([ClientReport(1, 0.5, 3, 1), ClientReport(2, 0.4, 4, 0)], 7, config, tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        "round 7: skipped 1 of 8 local steps (12.5%) in 1 of 2 clients: a non-finite loss or gradient"
    ]
    with pytest.raises(
        TrainingDiverged,
        match=r"round 7: every local step \(5\) had a non-finite loss or gradient, "
        r"so nothing trained; .* lower --learning-rate \(now 2\)",
    ):
        check_skipped_steps([ClientReport(1, 0.0, 0, 2), ClientReport(2, 0.0, 0, 3)], 7, config, tmp_path)
    # --centralized at an absurd learning rate: its second epoch skips every step; it stops, it does not log loss 0
    with pytest.raises(
        TrainingDiverged, match=r"epoch 2: every step \(\d+\) had a non-finite loss or gradient"
    ):
        train(
            TrainConfig(
                **{
                    **TINY,
                    "top_users": 120,
                    "validate_every": 1,
                    "num_rounds": 2,
                    "centralized": True,
                    "learning_rate": 1e6,
                    "run_dir": str(tmp_path / "run"),
                }
            )
        )
