"""The benchmark scripts run and print what they promise, on the built-in synthetic data.

Smoke only: no figure is checked against a threshold (timings belong in the benchmarks' output,
never in assertions).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{name} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.mark.slow
def test_round_time_quick_prints_every_figure():
    out = run_script("round_time.py", "--quick", "--data", "synthetic")
    for label in (
        "machine:",
        "setting: synthetic",
        "round time vectorized: median",
        "round time sequential: median",
        "speed-up vectorized vs sequential:",
        "validation (1:100",
        "peak RSS (whole process):",
        "reference (issue",
        "speed-up vs reference: n/a",
    ):
        assert label in out, f"{label!r} missing from:\n{out}"


@pytest.mark.slow
def test_flower_round_time_quick_prints_every_figure():
    pytest.importorskip("flwr")
    # Two Flower simulations (Ray start-up each) and two local runs; the script kills each run's
    # process group after its own hard timeout (240 s each with --quick), so this one is generous.
    out = run_script("flower_round_time.py", "--quick", "--threads", "1", timeout=1000)
    for label in (
        "machine:",
        "setting: synthetic",
        "5 clients per round:",
        "20 clients per round:",
        "local 5 clients: rounds [",
        "flower 5 clients: rounds [",
        "flower 20 clients: rounds [",
        "peak summed RSS" if sys.platform == "linux" else "peak RSS",
        "flower/local",
        "start-up: local",
    ):
        assert label in out, f"{label!r} missing from:\n{out}"
    rows = [line.split("|") for line in out.splitlines() if line.strip().startswith(("5 |", "20 |"))]
    assert [int(row[0]) for row in rows] == [5, 20]


def test_recipe_cost_quick_prints_every_recipe():
    out = run_script("recipe_cost.py", "--quick", "--recipes", "default", "fedsasrec", "--threads", "1")
    for label in (
        "machine:",
        "default #0: rounds [",
        "fedsasrec #0: rounds [",
        "default: train",
        "fedsasrec: train",
        "--config fedsasrec",
        "round time / default's: 1.00",
    ):
        assert label in out, f"{label!r} missing from:\n{out}"
    assert out.count("peak RSS") == 2


def test_quality_dry_run_prints_commands_and_runs_nothing(tmp_path):
    out = run_script(
        "quality.py",
        "--dry-run",
        "--data",
        "synthetic",
        "--seeds",
        "0",
        "1",
        "--out",
        str(tmp_path),
        "--",
        "--max-seq-len",
        "20",
    )
    commands = [line for line in out.splitlines() if "command:" in line]
    assert len(commands) == 4  # 2 modes x 2 seeds
    assert sum("--centralized" in c for c in commands) == 2
    # The extra flag replaces the setting's, rather than repeating it.
    assert all("--max-seq-len 20" in c and "--max-seq-len 50" not in c for c in commands)
    assert "no finished runs yet" in out
    assert not any(tmp_path.rglob("*.json"))


def test_peak_memory_dry_run_prints_the_command():
    out = run_script("peak_memory.py", "--dry-run", "--quick")
    assert "command:" in out and "-m feddmmr train" in out and "--num-rounds 1" in out


def _common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_section_appends_then_replaces_in_place(tmp_path):
    common = _common()
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmarks\n\nHand-written intro.\n")
    common.write_section(path, "a", "first A")
    common.write_section(path, "b", "only B")
    common.write_section(path, "a", "second A")
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written intro.\n")
    assert "second A" in text and "first A" not in text and "only B" in text
    assert text.index("second A") < text.index("only B")  # replaced where it was, not moved
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary file left


def test_train_command_lets_extra_flags_override_the_setting():
    common = _common()
    command = common.train_command(None, 40, {"max_seq_len": 50, "batch_size": 64}, ["--max_seq_len=200"])
    assert "--max-seq-len" not in command and command[-1] == "--max_seq_len=200"
    assert command[command.index("--batch-size") + 1] == "64"


@pytest.mark.slow
def test_feddmmr_round_time_quick_prints_both_models_and_the_ratio():
    out = run_script(
        "feddmmr_round_time.py",
        "--quick",
        "--content-history",
        "3",
        "--modality-objective",
        "holdout-backbone",
    )
    for label in (
        "machine:",
        "setting: synthetic",
        "FedDMMR content history 3, modality objective holdout-backbone",
        "round time feddmmr: median",
        "round time fedsasrec: median",
        "FedDMMR vs FedSASRec round:",
    ):
        assert label in out, f"{label!r} missing from:\n{out}"


def test_the_ablations_genre_modality_is_each_movies_genre_multi_hot(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling modules by name
    try:
        spec = importlib.util.spec_from_file_location("bench_ablation", BENCHMARKS / "feddmmr_ablation.py")
        ablation = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ablation)
    finally:
        sys.path.remove(str(BENCHMARKS))
    from feddmmr.features.store import load_features

    movies = tmp_path / "movies.dat"
    movies.write_bytes("1::Toy Story (1995)::Animation|Comedy\n7::Caf\xe9 (1999)::Drama\n".encode("latin-1"))
    ids, matrix = load_features(ablation.write_genre_features(movies, tmp_path / "genres.npz"))
    assert ids.tolist() == [1, 7]  # columns: Animation, Comedy, Drama
    assert matrix.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    movies.write_text("1::Toy Story (1995)\n")
    with pytest.raises(
        SystemExit, match=r"movies.dat, line 1: expected MovieID::Title \(Year\)::Genre1\|Genre2"
    ):
        ablation.write_genre_features(movies, tmp_path / "bad.npz")


TINY_RUN = dict(
    **TINY_MODEL,
    client_fraction=0.5,
    learning_rate=0.5,
    num_rounds=2,
    validate_every=1,
    threads=1,
)


def _item_features(tiny_data: Path, path: Path) -> Path:
    import numpy as np

    from feddmmr.features.store import save_features

    ids = sorted({int(x) for line in tiny_data.read_text().splitlines() for x in line.split()[1:]})
    return save_features(
        path, np.array(ids), np.random.default_rng(0).normal(size=(len(ids), 12)).astype(np.float32)
    )


def _final(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "final.json").read_text())


@pytest.mark.parametrize(
    "content",
    [
        {},
        {"content_history": 3, "modality_objective": "holdout"},
        {"content_history": 3, "modality_objective": "holdout-backbone"},
    ],
)
def test_the_gate_scan_at_factor_1_reproduces_the_runs_own_metrics(tiny_data, tmp_path, content):
    from feddmmr.config import TrainConfig
    from feddmmr.train import train

    features = _item_features(tiny_data, tmp_path / "text.npz")
    run = train(
        TrainConfig(
            data_dir=str(tiny_data),
            run_dir=str(tmp_path / "run"),
            model="feddmmr",
            modality=[f"text={features}"],
            **content,
            **TINY_RUN,
        )
    ).run_dir
    extra = ["--match-factors", "0", "1"] if content else []
    out = run_script("feddmmr_gate_scan.py", str(run), "--factors", "0", "1", *extra)
    final = _final(run)
    trained, backbone = ("g x 1 mu x 1", "g x 0 mu x 0") if content else ("g x 1", "g x 0")
    assert (
        f"{trained}: valid HR@10 {final['valid']['HR@10']:.3f} NDCG@10 {final['valid']['NDCG@10']:.4f} | "
        f"test HR@10 {final['test']['HR@10']:.3f} NDCG@10 {final['test']['NDCG@10']:.4f}"
    ) in out, out
    assert f"{backbone}: valid HR@10" in out
    if content:
        assert out.count("valid HR@10") == 4  # every pair of factors
    else:  # a run without content-match weights has none to scale
        with pytest.raises(AssertionError, match="no content-match weights to scale"):
            run_script("feddmmr_gate_scan.py", str(run), "--match-factors", "0")


def test_content_signal_starts_from_the_runs_own_metrics_and_tries_every_history(tiny_data, tmp_path):
    from feddmmr.config import TrainConfig
    from feddmmr.train import train

    run = train(TrainConfig(data_dir=str(tiny_data), run_dir=str(tmp_path / "run"), **TINY_RUN)).run_dir
    features = _item_features(tiny_data, tmp_path / "text.npz")
    out = run_script("content_signal.py", str(run), "--features", f"text={features}")
    final = _final(run)
    assert (
        f"the model alone: valid HR@10 {final['valid']['HR@10']:.3f}, test HR@10 {final['test']['HR@10']:.3f} "
        f"NDCG@10 {final['test']['NDCG@10']:.4f}"
    ) in out, out
    for history in ("mean of last 5", "max of last 5", "mean of last 50", "max of last 50"):
        assert f"{history}: alone valid HR@10" in out, out


def test_content_scores_average_and_max_over_the_real_history_items_only():
    import torch

    spec = importlib.util.spec_from_file_location("bench_content", BENCHMARKS / "content_signal.py")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        content = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(content)
    finally:
        sys.path.remove(str(BENCHMARKS))
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # row 0: padding
    inputs = torch.tensor([[0, 0, 1, 2]])  # left-padded history: items 1, 2
    scores = content.content_scores(features, inputs, torch.tensor([[3, 1]]), k=3)
    torch.testing.assert_close(
        scores["mean of last 3"], torch.tensor([[0.7, 0.5]])
    )  # (0.6 + 0.8) / 2, (1 + 0) / 2
    torch.testing.assert_close(scores["max of last 3"], torch.tensor([[0.8, 1.0]]))
    scores = content.content_scores(features, inputs, torch.tensor([[3, 1]]), k=1)  # the last item only: 2
    torch.testing.assert_close(scores["mean of last 1"], torch.tensor([[0.8, 0.0]]))


def test_paired_comparison_reads_each_runs_own_metrics_and_differences_per_user(tiny_data, tmp_path):
    from feddmmr.config import TrainConfig
    from feddmmr.train import train

    features = _item_features(tiny_data, tmp_path / "text.npz")
    plain = train(TrainConfig(data_dir=str(tiny_data), run_dir=str(tmp_path / "a"), **TINY_RUN)).run_dir
    held_out = train(
        TrainConfig(
            data_dir=str(tiny_data),
            run_dir=str(tmp_path / "b"),
            model="feddmmr",
            modality=[f"text={features}"],
            content_history=3,
            modality_objective="holdout",
            **TINY_RUN,
        )
    ).run_dir
    out = run_script("paired_comparison.py", "--a", str(plain), "--b", str(held_out))
    a, b = _final(plain)["test"], _final(held_out)["test"]
    assert (
        f"test sampled: HR@10 {b['HR@10']:.4f} - {a['HR@10']:.4f} = {b['HR@10'] - a['HR@10']:+.4f} | "
        f"NDCG@10 {b['NDCG@10']:.4f} - {a['NDCG@10']:.4f}"
    ) in out, out
    assert "test    full: HR@10" in out and "pooled over 1 pair(s), B - A:" in out
    # One pair: no spread across pairs to give a standard error from.
    assert (
        f"test sampled: HR@10 {b['HR@10'] - a['HR@10']:+.4f} (se n/a), "
        f"{int(b['HR@10'] > a['HR@10'])} of 1 ahead"
    ) in out, out
    # A run against itself differs by nothing, user by user.
    same = run_script("paired_comparison.py", "--a", str(plain), "--b", str(plain))
    assert same.count("HR@10 +0.0000 (se 0.0000) | NDCG@10 +0.0000 (se 0.0000)") == 4, same
    # Two pairs, one the other swapped: pair means d and -d, so their mean is 0, the standard error
    # of their spread |d| (std sqrt(2)|d| over sqrt(2) pairs), and B leads in one pair.
    swapped = run_script(
        "paired_comparison.py", "--a", str(plain), str(held_out), "--b", str(held_out), str(plain)
    )
    d = b["NDCG@10"] - a["NDCG@10"]
    assert d != 0, "the tiny runs should differ for this check to mean anything"
    across = swapped.split("across the 2 pair(s)")[1]
    test_line = next(line for line in across.splitlines() if "test sampled:" in line)
    assert test_line.endswith(f"NDCG@10 +0.0000 (se {abs(d):.4f}), 1 of 2 ahead"), swapped
    with pytest.raises(AssertionError, match="--a has 2 runs and --b 1"):
        run_script("paired_comparison.py", "--a", str(plain), str(plain), "--b", str(held_out))


def test_gpu_check_without_cuda_says_so_and_exits():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for real")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_check.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "gpu_check: no CUDA device is visible" in result.stderr and "--device cpu --quick" in result.stderr


@pytest.mark.slow
def test_gpu_check_quick_on_the_cpu_runs_every_path_and_prints_the_table():
    out = run_script("gpu_check.py", "--device", "cpu", "--quick", timeout=600)
    paths = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(paths) == 9 and all(" ok (" in p or "n/a (fp16 is CUDA only)" in p for p in paths), out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [row.split("|")[2].strip() for row in rows] == ["off", "bf16", "off", "off"]
    assert all(len(row.split("|")) == 9 for row in rows)


@pytest.mark.slow
def test_fp16_on_cpu_runs_float16_autocast_and_reports_finite_weights():
    out = run_script("fp16_on_cpu.py", "--data", "synthetic", "--rounds", "2", "--amp", "fp16", timeout=600)
    rounds = [line for line in out.splitlines() if line.startswith("  fp16 round")]
    assert len(rounds) == 2 and all("global weights finite: True" in line for line in rounds), out
    assert "synthetic fp16: validation HR@10 round 2" in out


@pytest.mark.slow
def test_privacy_leakage_quick_prints_the_table():
    out = run_script("privacy_leakage.py", "--quick")
    for label in (
        "what the server sees",
        "4 negatives a target",
        "secagg nodes of 5",
        "64 negatives",
        "DP clip 1, noise 1.0",
    ):
        assert label in out, f"{label!r} missing from:\n{out}"


@pytest.mark.slow
def test_attacks_quick_prints_a_row_per_run():
    out = run_script(
        "attacks.py",
        "--quick",
        "--aggregators",
        "fedavg",
        "median",
        "--attacks",
        "none",
        "model-poisoning:0.05",
    )
    rows = [line for line in out.splitlines() if line.startswith(("fedavg ", "median "))]
    assert len(rows) == 4 and all(len(row.split()) == 5 for row in rows)


def test_attack_reach_moves_the_targets_into_the_top_10_and_restores_the_model(tiny_data, tmp_path):
    from feddmmr.config import TrainConfig
    from feddmmr.train import train

    run_dir = tmp_path / "run"
    train(TrainConfig(data_dir=str(tiny_data), run_dir=str(run_dir), **{**TINY_RUN, "num_rounds": 1}))
    best_before = (run_dir / "checkpoints" / "best.pt").read_bytes()
    out = run_script("attack_reach.py", str(run_dir), "--targets", "3", "--deltas", "0", "100")
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [float(row[0]) for row in rows] == [0.0, 100.0] and all(len(row) == 3 for row in rows)
    # a move of 100 a coordinate along the users' own mean puts a target above everything for most users
    assert float(rows[1][2]) > 0.5 >= float(rows[0][2])
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == best_before  # measured in memory only


def test_tie_order_writes_both_orders_and_counts_the_held_out_items_that_move(tmp_path):
    """Made-up ratings: user 1's last two share a second (both held-out items move), user 2's first
    two (the validation item moves, the test item does not)."""
    ratings = tmp_path / "ratings.dat"
    ratings.write_text(
        "1::30::5::100\n1::10::4::200\n1::50::3::300\n1::20::3::300\n"
        "2::7::5::100\n2::9::5::100\n2::8::5::200\n"
    )
    sequences = tmp_path / "sequences.txt"
    sequences.write_text("1 30 10 50 20\n2 9 7 8\n")  # ties in some order, as a preprocessed file holds them
    out = run_script(
        "tie_order.py", "--ratings", str(ratings), "--sequences", str(sequences), "--out", str(tmp_path / "o")
    )
    assert "2 users: ordering ties by movie id changes the test item of 1 and the validation item of 2" in out
    assert (tmp_path / "o" / "time_then_id.txt").read_text() == "1 30 10 20 50\n2 7 9 8\n"
    assert (tmp_path / "o" / "shared_order.txt").read_text() == "1 30 10 50 20\n2 9 7 8\n"
