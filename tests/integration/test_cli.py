import json

import pytest
from helpers import TINY_FLAGS
from typer.testing import CliRunner

from feddmmr.cli import app
from feddmmr.config import TrainConfig
from feddmmr.config_files import read_config_file, resolve_config

runner = CliRunner()
TINY = TINY_FLAGS


def test_train_and_evaluate_from_the_command_line(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "--data-dir",
            str(tiny_data),
            "--run-dir",
            str(run_dir),
            "--num_rounds",
            "2",
            "--batch_size",
            "4",
            *TINY,
        ],
    )  # the seed's spellings
    assert result.exit_code == 0, result.output
    assert "round   1" in result.output and "val skipped (next at round 2)" in result.output
    assert "test HR@10" in result.output
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["num_rounds"] == 2 and saved["batch_size"] == 4
    final = json.loads((run_dir / "final.json").read_text())
    evaluated = runner.invoke(app, ["evaluate", str(run_dir)])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout[evaluated.stdout.index("{") :])
    assert (again["test"], again["valid"], again["eval"]) == (final["test"], final["valid"], "sampled")
    full = runner.invoke(app, ["evaluate", str(run_dir), "--eval", "full"])
    assert full.exit_code == 0, full.output
    ranked = json.loads(full.stdout[full.stdout.index("{") :])
    assert ranked["eval"] == "full" and ranked["best_round"] == final["best_round"]
    # Every item outranks the held-out item at least as often as 100 sampled ones do.
    assert ranked["test"]["MRR"] <= final["test"]["MRR"] and ranked["test"] != final["test"]
    assert ranked["test"] == final["test_full"]  # the run tested under both protocols at its end
    wrong = runner.invoke(app, ["evaluate", str(run_dir), "--eval", "all"])
    assert (
        wrong.exit_code == 2
        and "unknown eval mode 'all'; expected one of ('sampled', 'full')" in wrong.output
    )


def test_config_file_presets_and_flags_override_them(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("num-rounds: 7\nlearning_rate: 0.0001\nbatch_size: 32\n")
    config = resolve_config(preset, batch_size=16, seed=None)
    assert (config.num_rounds, config.learning_rate, config.batch_size) == (7, 1e-4, 16)


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="engine: expected one of .*got 'gpu'"):
        TrainConfig(engine="gpu")
    with pytest.raises(ValueError, match="router: expected one of learned, uniform, got 'none'"):
        TrainConfig(router="none")
    with pytest.raises(ValueError, match=r"client_fraction: expected a number in \(0, 1\]"):
        TrainConfig(client_fraction=0)


def test_unknown_preset_keys_are_named(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"num_round": 3}))
    with pytest.raises(ValueError, match="unknown settings num_round"):
        read_config_file(preset)


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    missing = runner.invoke(
        app, ["train", "--data-dir", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r")]
    )
    assert missing.exit_code == 2
    assert "nowhere" in missing.output and "Traceback" not in missing.output
    bad = runner.invoke(app, ["train", "--loss", "hinge", "--run-dir", str(tmp_path / "r2")])
    assert bad.exit_code == 2 and "loss: expected one of ce, bpr, gbce, ce-full, got 'hinge'" in bad.output


def test_resume_refuses_other_settings(tmp_path):
    result = runner.invoke(app, ["train", "--resume", str(tmp_path), "--learning-rate", "3"])
    assert result.exit_code == 2 and "--learning-rate" in result.output


def test_download_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = runner.invoke(app, ["data", "download", "ml-100k", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1  # the input was fine; the network was not
    assert str(tmp_path) in result.output.replace("\n", "")


def test_a_retired_setting_in_a_preset_or_an_old_config_is_ignored_with_a_note(tmp_path, caplog):
    import logging

    preset = tmp_path / "old.yaml"
    preset.write_text("memory_surprise: 0.3\nnum_rounds: 7\n")
    with caplog.at_level(logging.WARNING):
        config = resolve_config(preset)
    assert config.num_rounds == 7 and not hasattr(config, "memory_surprise")
    assert "setting memory_surprise is ignored: it never had an effect" in caplog.text


def test_the_old_holdout_flags_name_their_replacement(tmp_path):
    result = CliRunner().invoke(app, ["train", "--holdout-content", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--holdout-content is --modality-objective holdout" in result.output
    assert not (tmp_path / "run").exists()
    preset = tmp_path / "old.yaml"
    for flags, objective in [
        ("holdout_content: true\nholdout_backbone: true\n", "holdout-backbone"),
        ("holdout_content: true\n", "holdout"),
        ("holdout_content: false\n", "joint"),
    ]:
        preset.write_text("model: feddmmr\nmodality: text=t.npz\n" + flags)
        assert resolve_config(preset).modality_objective == objective


def test_version_and_the_shipped_presets(tmp_path):
    from feddmmr import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"feddmmr {__version__}"
    listed = runner.invoke(app, ["configs"])
    assert listed.exit_code == 0
    names = [line.split()[0] for line in listed.output.splitlines()]
    assert {"fedsasrec", "feddmmr_text", "stage1", "stage2", "stage3"} <= set(names)
    assert resolve_config("fedsasrec").top_users == 1000  # by name, wherever feddmmr is installed
    unknown = runner.invoke(app, ["train", "--config", "fedsasrecc", "--run-dir", str(tmp_path / "r")])
    assert (
        unknown.exit_code == 2
        and "no shipped preset of that name; the presets are continue_pretrain" in unknown.output
    )


def test_help_at_80_columns_shows_every_flag_whole_in_panels():
    from feddmmr.config import FIELDS

    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0
    assert "…" not in result.output  # rich cuts a name that does not fit with an ellipsis
    assert max(len(line) for line in result.output.splitlines()) <= 80
    for name in FIELDS:
        assert "--" + name.replace("_", "-") in result.output
        assert (
            "--" + name not in result.output or "_" not in name
        )  # underscore spellings: accepted, not shown
    for panel in (
        "Data",
        "Model",
        "FedDMMR",
        "Client (local training)",
        "Server",
        "Privacy",
        "Evaluation",
        "Runtime",
        "Flower",
    ):
        assert f"─ {panel} ─" in result.output
    assert "(default: train everything) (default" not in result.output


def test_a_log_that_is_not_a_terminal_has_one_whole_line_per_round_and_a_run_log(tiny_data, tmp_path):
    run_dir = tmp_path / ("a-long-folder-name-" * 4) / "run"
    result = runner.invoke(
        app,
        ["train", "--data-dir", str(tiny_data), "--run-dir", str(run_dir), "--num-rounds", "3", *TINY],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 3 and all(line.rstrip().endswith("s") and " eval " in line for line in rounds)
    summary = [line for line in lines if line.startswith("best round")]
    assert len(summary) == 1 and summary[0].endswith(f"({run_dir})")  # a long line, not wrapped
    assert not any(line.startswith(" ") for line in lines)  # no continuation of a wrapped line
    run_log = (run_dir / "run.log").read_text().splitlines()
    assert sum(" round " in line and " loss " in line for line in run_log) == 3
    assert any(f"({run_dir})" in line and "best round" in line for line in run_log)


def test_report_compares_runs_with_a_table_and_marked_plots(tiny_data, tmp_path):
    import matplotlib.image

    for name, rate in (("slow", "0.1"), ("fast", "1.0")):
        result = runner.invoke(
            app,
            [
                "train",
                "--data-dir",
                str(tiny_data),
                "--run-dir",
                str(tmp_path / name),
                "--num-rounds",
                "3",
                "--validate-every",
                "1",
                "--learning-rate",
                rate,
                *TINY,
            ],
        )
        assert result.exit_code == 0, result.output
    one = runner.invoke(app, ["report", str(tmp_path / "fast")])
    assert one.exit_code == 0, one.output
    assert (tmp_path / "fast" / "plots" / "training.png").stat().st_size > 0
    both = runner.invoke(
        app,
        ["report", str(tmp_path / "slow"), str(tmp_path / "fast"), "--output", str(tmp_path / "compared")],
    )
    assert both.exit_code == 0, both.output
    table = both.stdout.splitlines()
    assert table[0].split()[:3] == ["run", "best", "round"]
    finals = {name: json.loads((tmp_path / name / "final.json").read_text()) for name in ("slow", "fast")}
    for line, name in zip(table[1:3], ("slow", "fast")):
        cells = line.split()
        assert cells[0] == name and int(cells[1]) == finals[name]["best_round"]
        assert float(cells[3]) == round(finals[name]["test"]["HR@10"], 4)
        assert float(cells[5]) == round(finals[name]["test_full"]["HR@10"], 4)  # the test under full ranking
    image = matplotlib.image.imread(tmp_path / "compared" / "comparison.png")
    assert image.shape[0] > 500 and image.shape[1] > 800


def test_report_over_seeds_gives_mean_and_se_per_setting_as_csv_and_markdown(tiny_data, tmp_path):
    """Two settings (learning rates), the first over seeds 0 and 1: one row each, the mean and the
    standard error of the seeds' figures; the same seed twice, or an unfinished run, is an error."""
    import csv
    import io
    import shutil

    runs = {("a", 0): "0.1", ("a", 1): "0.1", ("b", 0): "1.0"}
    for (name, seed), rate in runs.items():
        result = runner.invoke(
            app,
            [
                "train",
                "--data-dir",
                str(tiny_data),
                "--run-dir",
                str(tmp_path / f"{name}{seed}"),
                "--num-rounds",
                "1",
                "--learning-rate",
                rate,
                "--seed",
                str(seed),
                *TINY,
            ],
        )
        assert result.exit_code == 0, result.output
    dirs = [str(tmp_path / f"{name}{seed}") for name, seed in runs]
    table = runner.invoke(
        app, ["report", *dirs, "--output", str(tmp_path / "plots"), "--over-seeds", "--format", "csv"]
    )
    assert table.exit_code == 0, table.output
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["setting (its first run)"], r["seeds"]) for r in rows] == [("a0", "0 1"), ("b0", "0")]
    tests = [
        json.loads((tmp_path / name / "final.json").read_text())["test"]["HR@10"] for name in ("a0", "a1")
    ]
    assert float(rows[0]["test 1:N HR@10 mean"]) == pytest.approx(sum(tests) / 2)
    assert float(rows[0]["test 1:N HR@10 se"]) == pytest.approx(abs(tests[0] - tests[1]) / 2)
    assert rows[1]["test 1:N HR@10 se"] == ""  # one seed: no standard error
    markdown = runner.invoke(
        app, ["report", *dirs, "--output", str(tmp_path / "plots"), "--over-seeds", "--format", "markdown"]
    ).stdout.splitlines()
    assert markdown[0].startswith("| setting (its first run) | seeds |") and markdown[1].startswith("|---|")
    assert f"{sum(tests) / 2:.4f} ± {abs(tests[0] - tests[1]) / 2:.4f}" in markdown[2]
    shutil.copytree(tmp_path / "a0", tmp_path / "again")
    twice = runner.invoke(app, ["report", dirs[0], str(tmp_path / "again"), "--over-seeds"])
    assert twice.exit_code == 2 and "one seed would count more than once" in twice.output
    (tmp_path / "again" / "final.json").unlink()
    unfinished = runner.invoke(app, ["report", dirs[0], str(tmp_path / "again"), "--over-seeds"])
    assert unfinished.exit_code == 2 and "not finished: again" in unfinished.output


def test_the_plots_mark_the_best_round_and_the_test_figures(tiny_data, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from feddmmr.report import _training, load_run

    run_dir = tmp_path / "run"
    assert (
        runner.invoke(
            app,
            [
                "train",
                "--data-dir",
                str(tiny_data),
                "--run-dir",
                str(run_dir),
                "--num-rounds",
                "3",
                "--validate-every",
                "1",
                *TINY,
            ],
        ).exit_code
        == 0
    )
    run = load_run(run_dir)
    figure = _training(plt, run)
    loss_axis, val_axis, client_axis = figure.axes
    labels = [line.get_label() for line in val_axis.get_lines()]
    assert f"best round {run.final['best_round']}" in labels
    assert f"test HR@10 {run.final['test']['HR@10']:.4f}" in labels
    for axis in figure.axes:
        assert axis.get_xlabel() and axis.get_ylabel()
    plt.close(figure)


def test_seeds_run_a_study_into_one_folder_and_print_mean_and_se(tiny_data, tmp_path):
    study = tmp_path / "study"
    args = ["train", "--data-dir", str(tiny_data), "--run-dir", str(study), "--num-rounds", "1", *TINY]
    result = runner.invoke(app, [*args, "--seeds", "3,4"])
    assert result.exit_code == 0, result.output
    for seed in (3, 4):
        assert json.loads((study / f"seed{seed}" / "config.json").read_text())["seed"] == seed
        assert (study / f"seed{seed}" / "final.json").exists()
    assert "3 4" in result.output and "±" in result.output  # one row: both seeds, mean ± se
    for bad, message in (
        (["--seeds", "3,x"], "--seeds '3,x': expected whole numbers"),
        (["--seeds", "3,3"], "expected distinct whole numbers"),
        (["--seeds", "1,2", "--seed", "1"], "--seeds gives each run its seed: drop --seed"),
        (["--seeds", "5,4"], f"--seeds: {study / 'seed4'} already hold runs"),  # checked before seed 5 runs
    ):
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (study / "seed5").exists()
