"""Helpers shared by the benchmark scripts: data location, repeat statistics, peak memory,
machine context, and a markdown results file whose named sections can be updated in place.

Benchmarks print figures measured side by side in one process; they never assert on time.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# Real MovieLens files live beside the repository, never in it (their licence forbids
# redistribution); a fresh clone has no shared/ folder.
SHARED_DATA = ROOT.parent / "shared" / "data"
ML1M_SEQUENCES = SHARED_DATA / "ml-1m" / "ml-1m_sequences.txt"
DOCS_RESULTS = (
    ROOT / "docs" / "RESULTS.md"
)  # the current claims; docs/notebook/2026-12-06-benchmarks.md is the notebook

# The seed's setting (FedSASRec on the ML-1M top-1000 users), as TrainConfig fields: its clients
# ran a fresh Adam (lr 1e-3) and the server adopted their FedAvg.
SEED_SETTING = dict(
    hidden_dim=128,
    num_blocks=2,
    num_heads=4,
    max_seq_len=50,
    batch_size=64,
    num_negatives=4,
    negatives="per-target",
    local_epochs=1,
    client_fraction=0.2,
    local_optimizer="adam",
    learning_rate=1e-3,
    server_optimizer="fedavg",
)


# The recipe the security figures (docs/SECURITY.md) were measured with, the default until long
# histories replaced it: the shipped short_history preset's settings.
def short_history() -> dict:
    from feddmmr.config_files import read_config_file

    return read_config_file("short_history")


# Figures from the issue, for the seed setting on the top-1000 subset.
REFERENCE = {
    "round_s_cpu": 590.0,  # original code, one round, on this 2-core machine
    "round_s_gpu": 4.2 * 60,  # original code, one round, on the seed's GPU
    "valid_s_cpu": 200.0,  # validating 1,000 users (1:100), this machine
    "valid_s_gpu": 1.6 * 60,  # the same on the seed's GPU
    "peak_rss_mb": 1.9 * 1024,  # peak memory of the original run
}
MEMORY_BAR_MB = 1024.0  # the bar: a whole run under 1 GB


# ---------------------------------------------------------------------------------------------
# Data


def dataset(name: str, top_users: int | None = None) -> tuple[str | None, int | None, str]:
    """(data_dir, top_users, label) for a --data value: `ml-1m-top1000` (the default
    everywhere), `ml-1m`, `synthetic`, `sparse` (`sparse_log`), or a path. Exits with a clear message when the shared
    ML-1M file is needed but absent, so a fresh clone skips instead of crashing."""
    if name == "synthetic":
        return None, top_users, "synthetic" + (f"-top{top_users}" if top_users else "")
    if name == "sparse":
        return str(sparse_log()), top_users, "sparse" + (f"-top{top_users}" if top_users else "")
    if name in ("ml-1m", "ml-1m-top1000"):
        if not ML1M_SEQUENCES.exists():
            skip(
                f"the shared ML-1M file is not at {ML1M_SEQUENCES} (it exists only in the dev "
                f"workspace); pass --data PATH to a MovieLens file, or --data synthetic"
            )
        top = top_users if top_users is not None else (1000 if name == "ml-1m-top1000" else None)
        return str(ML1M_SEQUENCES), top, "ml-1m" + (f"-top{top}" if top else "")
    path = Path(name)
    if not path.exists():
        sys.exit(f"--data {name}: no such file or folder (or use ml-1m-top1000, ml-1m, synthetic)")
    return str(path), top_users, path.stem + (f"-top{top_users}" if top_users else "")


def sparse_log(folder: Path | None = None) -> Path:
    """A sparse sequences file shaped like the Amazon review sets (10,000 users, 8,000 items, 9.9
    items a user, 95th percentile 25, longest 68; Zipf popularity), generated deterministically: what
    the 200-position default meets when histories are short."""
    import numpy as np

    path = Path(folder or tempfile.gettempdir()) / "feddmmr-sparse-10k.txt"
    if not path.exists():
        rng = np.random.default_rng(0)
        users, items = 10_000, 8_000
        popularity = 1 / np.arange(1, items + 1) ** 0.9
        popularity /= popularity.sum()
        lengths = rng.geometric(1 / 8, users) + 2
        lines = [
            f"{u + 1} " + " ".join(map(str, rng.choice(items, size=n, replace=False, p=popularity) + 1))
            for u, n in enumerate(lengths)
        ]
        partial = path.with_suffix(".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(path)
    return path


def skip(reason: str) -> None:
    """Nothing measured, nothing wrong: say why and exit 0 (like a skipped test)."""
    print(f"SKIPPED: {reason}")
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# `feddmmr train` command lines


def split_passthrough(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """(the script's own arguments, extra `feddmmr train` flags after a bare `--`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0].replace("_", "-")


def require_feddmmr() -> None:
    """The children run `sys.executable -m feddmmr`: fail early and clearly when this interpreter
    is not the project's environment (a bare `python` outside the venv)."""
    import importlib.util

    if importlib.util.find_spec("feddmmr") is None:
        sys.exit(
            f"{sys.executable} cannot import feddmmr: run this with the project's environment "
            f"(. .venv/bin/activate, or .venv/bin/python {Path(sys.argv[0]).name})"
        )


def child_env() -> dict[str, str]:
    """Environment of a `feddmmr train` child: a wide console, so its log file is not wrapped at
    80 columns (rich's width when not writing to a terminal)."""
    return {**os.environ, "COLUMNS": "160"}


def train_command(data_dir: str | None, top_users: int | None, setting: dict, extra: list[str]) -> list[str]:
    """`python -m feddmmr train` with the data, a setting (TrainConfig fields) and extra flags;
    a setting flag that `extra` also gives is dropped, so the printed command is unambiguous."""
    base: list[tuple[str, str]] = []
    if data_dir is not None:
        base.append(("--data-dir", data_dir))
    if top_users is not None:
        base.append(("--top-users", str(top_users)))
    base += [("--" + k.replace("_", "-"), str(v)) for k, v in setting.items()]
    overridden = {_flag_name(t) for t in extra if t.startswith("--")}
    command = [sys.executable, "-m", "feddmmr", "train"]
    for flag, value in base:
        if flag not in overridden:
            command += [flag, value]
    return command + extra


# ---------------------------------------------------------------------------------------------
# Measuring


def repeat(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """'median 1.23 s (min 1.10, n=5)': the median is the figure, the min shows the noise floor."""
    return f"median {median(values):.3f} s (min {min(values):.3f}, n={len(values)})"


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory (MiB) of this process, or of its largest waited-for child.
    RSS, not tracemalloc: torch allocates outside Python's allocator."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def current_rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory now (MiB) of this process or of `pid`, from /proc (Linux); None elsewhere
    or when the process is gone. Printed per round, it tells growth across rounds (a leak,
    fragmentation) from one heavy round."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return None


def machine_line() -> str:
    """What the numbers were measured on; on a shared machine the load average matters."""
    import torch

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {platform.node()} | {os.cpu_count()} cores | load average {load} | "
        f"torch {torch.__version__} | python {platform.python_version()}"
    )


def ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.1f}x" if fast > 0 else "n/a"


# ---------------------------------------------------------------------------------------------
# Results file


def write_section(path: str | Path, name: str, body: str) -> None:
    """Put `body` into the section `name` of a markdown file: replace it if present, append it
    otherwise. Sections are delimited by HTML comments so hand-written text around them stays.
    The file is replaced atomically (a crash never leaves half a file)."""
    path = Path(path)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_result(path: str | Path, key: str, title: str, lines: list[str]) -> None:
    """Put a script's printed lines, under `title` and the machine line, into section `key` of `path`."""
    body = "\n".join([f"### {title}", "", "```", machine_line(), *lines, "```"])
    write_section(path, key, body)
    print(f"wrote {path}")
