"""Seconds per round of the Flower simulation vs the local vectorised engine on the same setting,
for 10, 100 and 1,000 clients per round; start-up time; peak memory (issue #4).

    python benchmarks/flower_round_time.py                          # full ML-1M (6,040 users), seed setting, 3 rounds
    python benchmarks/flower_round_time.py --clients 10 100 --rounds 5 --supernodes 4
    python benchmarks/flower_round_time.py --data synthetic         # 500 users: counts above 500 are capped
    python benchmarks/flower_round_time.py --data ml-1m-top1000 --clients 200 --secure-aggregation  # + Flower with SecAgg+
    python benchmarks/flower_round_time.py --quick                  # tiny synthetic run, 1-1.5 min on 2 cores (smoke test)

For every client count N, both engines run the same config and seed (client_fraction = N /
eligible users, so the same N users are sampled in every round, with the same batches): first
`feddmmr.train.train` with the vectorised engine, then `run_flower_simulation` with
`--supernodes` virtual SuperNodes (Ray actors, one CPU each) running the same local update. Each
run validates at its last round only (patience 0) and ends with the usual test, in its own
temporary run directory, and in a fresh process of its own (this script re-invokes itself), so
that neither's start-up, warm caches or peak memory pollute the other's.

What is reported, per run:
- round time: `train_seconds` of each round's record (sampling, batches, local training,
  aggregation; for Flower also messages out and back); the median over rounds 2.. is the
  steady-state figure, round 1 (one-off costs) is shown apart;
- start-up: wall seconds from the call (`train(config)` / `run_flower_simulation(config)`) to the
  first round's start: data, split, candidates, model; for Flower also Ray and the ServerApp.
  Flower's round 1 also waits for the SuperNodes to connect and asks each which users it holds:
  that part of round 1 is shown as "nodes";
- peak memory: the local run's peak RSS (getrusage); for Flower the peak of the RSS summed over
  this process and all its descendants (Ray's GCS, raylet, dashboard, log monitor, agents and
  the node workers: about 10 processes), sampled every `--sample-interval` seconds from /proc
  (Linux; psutil is not a dependency of the project). Summed RSS counts shared pages (libraries,
  Ray's object store) once per process, so it is an upper bound.

Train losses of the two engines agree only with `dropout 0` (the nodes draw dropout from their
own random streams); the sampled clients and their batches are the same either way.

Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
import common  # noqa: E402

from feddmmr.config import TrainConfig  # noqa: E402

RESULT_PREFIX = "RESULT "
PROGRESS_PREFIX = "progress: "
ENGINES = ("local", "flower", "flower-secagg")  # flower-secagg: with SecAgg+ (--secure-aggregation)
# Flower and Ray, quiet and offline (docs/DEPLOY.md, tests/integration/test_flower.py).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        default="ml-1m",
        help="ml-1m (default: all 6,040 users), ml-1m-top1000, synthetic, or a path",
    )
    p.add_argument("--top-users", type=int, help="keep the N most active users")
    p.add_argument(
        "--clients",
        type=int,
        nargs="+",
        default=[10, 100, 1000],
        help="clients per round, one pair of runs each",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (validation at the last only)")
    p.add_argument(
        "--supernodes", type=int, default=2, help="Flower simulation: virtual SuperNodes (Ray actors)"
    )
    p.add_argument("--max-seq-len", type=int, default=common.SEED_SETTING["max_seq_len"])
    p.add_argument("--batch-size", type=int, default=common.SEED_SETTING["batch_size"])
    p.add_argument("--hidden-dim", type=int, default=common.SEED_SETTING["hidden_dim"])
    p.add_argument("--num-blocks", type=int, default=common.SEED_SETTING["num_blocks"])
    p.add_argument("--local-epochs", type=int, default=common.SEED_SETTING["local_epochs"])
    p.add_argument("--dropout", type=float, default=TrainConfig.dropout)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch CPU threads of the local run and of Flower's server (default: all cores); "
        "Flower's nodes use one each",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="hard limit (s) on each run: its process group is killed after it (Ray can hang)",
    )
    p.add_argument("--sample-interval", type=float, default=0.2, help="seconds between memory samples")
    p.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="also run the Flower simulation with SecAgg+ and report its round time against plain Flower's",
    )
    p.add_argument(
        "--verbose", action="store_true", help="show each run's whole output (Flower's and Ray's logs)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="synthetic data, 5 and 20 clients, tiny model, 2 rounds: 1-1.5 min on 2 cores (smoke test)",
    )
    p.add_argument(
        "--write-docs",
        nargs="?",
        const=str(common.DOCS_RESULTS),
        metavar="FILE",
        help=f"also write the figures into a section of FILE (default {common.DOCS_RESULTS.relative_to(common.ROOT)})",
    )
    # Internal: measure one (engine, clients) pair in this process and print its RESULT line.
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "CLIENTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        if args.data == "ml-1m":
            args.data = "synthetic"
        if args.clients == [10, 100, 1000]:
            args.clients = [5, 20]
        args.hidden_dim, args.num_blocks, args.max_seq_len, args.rounds = 16, 1, 20, 2
        args.timeout = min(args.timeout, 240.0)
    if args.rounds < 1 or args.supernodes < 1 or min(args.clients) < 1:
        p.error("--rounds, --supernodes and --clients must be >= 1")
    return args


def dataset_size(data_dir: str | None, top_users: int | None) -> tuple[int, int, int]:
    """(users, items, eligible users: those with training targets) of the run's data."""
    from feddmmr.data.load import load_sequences
    from feddmmr.data.split import leave_one_out

    split = leave_one_out(load_sequences(data_dir, top_users=top_users))
    return split.num_users, split.num_items, int((split.num_train_targets > 0).sum())


def make_config(
    args, data_dir, top_users, clients: int, eligible: int, run_dir: str, engine: str
) -> TrainConfig:
    setting = {
        **common.SEED_SETTING,
        "max_seq_len": args.max_seq_len,
        "batch_size": args.batch_size,
        "hidden_dim": args.hidden_dim,
        "num_blocks": args.num_blocks,
        "local_epochs": args.local_epochs,
        "dropout": args.dropout,
        "client_fraction": clients / eligible,
    }  # sample_clients takes round(fraction * eligible) = clients
    return TrainConfig(
        data_dir=data_dir,
        top_users=top_users,
        run_dir=run_dir,
        threads=args.threads,
        device=args.device,
        seed=args.seed,
        num_rounds=args.rounds,
        validate_every=args.rounds,
        patience=0,
        engine="vectorized" if engine == "local" else "flower",
        flower_secure_aggregation=engine == "flower-secagg",
        flower_supernodes=args.supernodes,
        **setting,
    )


# ---------------------------------------------------------------------------------------------
# Memory of a process tree


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:  # gone since the listing
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid, ...
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class TreeMemory:
    """Peak RSS summed over this process and its descendants, sampled in a background thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.available = Path("/proc/self/statm").exists()
        self.peak_mb, self.peak_processes = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def __enter__(self) -> TreeMemory:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self.sample()

    def sample(self) -> None:
        tree = _process_tree(os.getpid())
        total = sum(common.current_rss_mb(pid) or 0.0 for pid in tree)  # a process gone meanwhile: 0
        if total > self.peak_mb:
            self.peak_mb, self.peak_processes = total, len(tree)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


# ---------------------------------------------------------------------------------------------
# One measurement (in a fresh process)


def measure_one(args, engine: str, clients: int) -> dict:
    data_dir, top_users, _ = common.dataset(args.data, args.top_users)
    _, _, eligible = dataset_size(data_dir, top_users)
    from feddmmr.callbacks import Callback

    import_started = time.perf_counter()
    if engine != "local":
        from feddmmr.flower.simulation import run_flower_simulation as run
    else:
        from feddmmr.train import train as run
    import_seconds = time.perf_counter() - import_started

    round_starts: list[float] = []  # from inside the run loop: when each round starts

    class RoundStarts(Callback):
        def on_round_start(self, run_, round_number: int) -> None:
            round_starts.append(time.perf_counter())

    def on_round(record: dict) -> None:
        print(
            f"{PROGRESS_PREFIX}{engine} {clients} clients: round {record['round']}: "
            f"{record['train_seconds']:.2f} s, loss {record['train_loss']:.4f}"
            f"{', ' + str(record['failed_clients']) + ' failed' if record.get('failed_clients') else ''}",
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix=f"feddmmr-flower-round-time-{engine}-") as tmp:
        config = make_config(args, data_dir, top_users, clients, eligible, str(Path(tmp) / "run"), engine)
        with TreeMemory(args.sample_interval) as tree:
            started = time.perf_counter()
            result = run(config, on_round=on_round, callbacks=[RoundStarts()])
            wall = time.perf_counter() - started
    history = result.history
    return {
        "engine": engine,
        "clients": clients,
        "sampled": [r["clients"] for r in history],
        "round_seconds": [r["train_seconds"] for r in history],
        "losses": [r["train_loss"] for r in history],
        "failed_clients": sum(r.get("failed_clients", 0) for r in history),
        "eval_seconds": sum(r["eval_seconds"] for r in history),
        "startup_seconds": round_starts[0] - started if round_starts else None,
        # Flower: round 1's wait for the nodes and their users (the engine's figure in metrics.jsonl)
        "node_seconds": history[0].get("node_seconds") if history else None,
        "import_seconds": import_seconds,
        "wall_seconds": wall,
        "test_hr10": result.final["test"].get("HR@10"),
        "peak_rss_mb": common.peak_rss_mb(),
        "peak_tree_mb": tree.peak_mb if tree.available else None,
        "peak_tree_processes": tree.peak_processes,
    }


def run_one(args, argv: list[str], engine: str, clients: int) -> dict:
    """This script with `--one engine clients` in a new session: its own process, its own Ray;
    the whole process group is killed after it (leftover Ray processes) or on timeout."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--one", engine, str(clients)]
    with tempfile.TemporaryDirectory(prefix="feddmmr-flower-round-time-") as tmp:
        env = {**common.child_env(), **FLOWER_ENV, "FLWR_HOME": str(Path(tmp) / "flwr-home")}
        log_path = Path(tmp) / "run.log"
        # Output to a file, not a pipe: a chatty child (Ray) must never block on a full pipe.
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=env, start_new_session=True
            )
        deadline = time.monotonic() + args.timeout
        timed_out = False
        try:
            with open(log_path) as reader:
                pending = ""  # a line the child has not finished writing yet
                while True:
                    done = process.poll() is not None
                    *lines, pending = (pending + reader.read()).split("\n")
                    for line in lines + ([pending] if done and pending else []):
                        if args.verbose or line.startswith(PROGRESS_PREFIX):
                            print("    " + line.rstrip().removeprefix(PROGRESS_PREFIX), flush=True)
                    if done:
                        break
                    if time.monotonic() > deadline:
                        timed_out = True
                        break
                    time.sleep(0.5)
        finally:  # also when this script is interrupted or terminated
            try:
                os.killpg(
                    process.pid, signal.SIGKILL
                )  # its group: the child, and Ray's processes if any are left
            except ProcessLookupError:
                pass
            process.wait()
        output = log_path.read_text()
    results = [line[len(RESULT_PREFIX) :] for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if timed_out or process.returncode != 0 or not results:
        why = (
            f"did not finish within --timeout {args.timeout:g} s"
            if timed_out
            else f"exited {process.returncode}"
        )
        print(output[-6000:])
        sys.exit(f"{engine} run with {clients} clients {why} (its output's end is above)")
    return json.loads(results[-1])


# ---------------------------------------------------------------------------------------------
# Report


def steady(seconds: list[float]) -> list[float]:
    """Rounds 2.. (round 1 pays one-off costs), or round 1 when it is the only one."""
    return seconds[1:] or seconds


def describe(r: dict) -> str:
    rounds = ", ".join(f"{s:.2f}" for s in r["round_seconds"])
    nodes = f" (nodes {r['node_seconds']:.2f} s)" if r.get("node_seconds") is not None else ""
    memory = f"peak RSS {r['peak_rss_mb']:.0f} MiB"
    if r["engine"] != "local" and r["peak_tree_mb"] is not None:
        memory = (
            f"peak summed RSS {r['peak_tree_mb']:.0f} MiB over {r['peak_tree_processes']} processes "
            f"(this one alone: {r['peak_rss_mb']:.0f} MiB)"
        )
    failed = f" | {r['failed_clients']} clients failed" if r["failed_clients"] else ""
    imports = f" (+ importing Flower {r['import_seconds']:.2f} s)" if r["engine"] != "local" else ""
    return (
        f"{r['engine']} {r['clients']} clients: rounds [{rounds}] s{nodes} | start-up {r['startup_seconds']:.2f} s"
        f"{imports} | evaluation {r['eval_seconds']:.2f} s | whole run "
        f"{r['wall_seconds']:.1f} s | losses [{', '.join(f'{x:.4f}' for x in r['losses'])}] | "
        f"test HR@10 {r['test_hr10']:.4f} | {memory}{failed}"
    )


def table(pairs: list[tuple[dict, dict]], rounds: int) -> list[str]:
    which = f"median of rounds 2-{rounds}" if rounds > 2 else ("round 2" if rounds == 2 else "round 1")
    header = (
        f"{'clients':>7} | {'local s/round':>13} | {'flower s/round':>14} | {'flower/local':>12} | "
        f"{'round 1: local':>14} | {'flower (nodes)':>16} | {'start-up: local':>15} | {'flower':>7} | "
        f"{'peak MiB: local':>15} | {'flower (sum)':>12}"
    )
    legend = (
        f"round time = {which}; start-up = call to round 1 (Flower's round 1 also starts its nodes: "
        f"'nodes'); peak memory: local RSS, Flower RSS summed over its processes"
    )
    lines = [legend, header, "-" * len(header)]
    for local, flower in pairs:
        lt, ft = common.median(steady(local["round_seconds"])), common.median(steady(flower["round_seconds"]))
        nodes = f"{flower['node_seconds']:.2f}" if flower.get("node_seconds") is not None else "?"
        tree = f"{flower['peak_tree_mb']:.0f}" if flower["peak_tree_mb"] is not None else "n/a"
        lines.append(
            f"{local['clients']:>7} | {lt:>13.2f} | {ft:>14.2f} | {common.ratio(ft, lt):>12} | "
            f"{local['round_seconds'][0]:>14.2f} | {flower['round_seconds'][0]:>7.2f} ({nodes:>6}) | "
            f"{local['startup_seconds']:>15.2f} | {flower['startup_seconds']:>7.2f} | "
            f"{local['peak_rss_mb']:>15.0f} | {tree:>12}"
        )
    return lines


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.one:
        engine, clients = args.one[0], int(args.one[1])
        if engine not in ENGINES:
            sys.exit(f"--one: engine must be one of {ENGINES}")
        print(RESULT_PREFIX + json.dumps(measure_one(args, engine, clients)), flush=True)
        return

    common.require_feddmmr()
    # SIGTERM as an exception, so that run_one's cleanup kills a running measurement's process group.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    data_dir, top_users, label = common.dataset(args.data, args.top_users)
    print(common.machine_line(), flush=True)
    users, items, eligible = dataset_size(data_dir, top_users)
    counts = []
    for n in args.clients:
        if n > eligible:
            print(f"note: {n} clients > the {eligible} eligible users of {label}: measured with {eligible}")
            n = eligible
        if n not in counts:
            counts.append(n)
    lines = []  # the results, also for --write-docs

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    report(
        f"setting: {label} ({users} users, {eligible} eligible, {items} items) | d={args.hidden_dim} "
        f"blocks={args.num_blocks} heads={common.SEED_SETTING['num_heads']} max_seq_len={args.max_seq_len} "
        f"batch={args.batch_size} negatives={common.SEED_SETTING['num_negatives']} local_epochs={args.local_epochs} "
        f"dropout={args.dropout:g} | "
        f"{args.rounds} rounds, validation at the last | local: vectorised engine, threads={args.threads} | "
        f"flower: simulation, {args.supernodes} SuperNodes (1 CPU, 1 thread each), server threads={args.threads} | "
        f"seed {args.seed} | device {args.device}"
    )
    if data_dir is not None and args.data not in ("ml-1m", "ml-1m-top1000"):
        argv = [*argv, "--data", str(Path(data_dir).resolve())]  # the runs start in a temporary folder
    pairs = []
    for n in counts:
        print(f"{n} clients per round:", flush=True)
        local = run_one(args, argv, "local", n)
        report(describe(local))
        flower = run_one(args, argv, "flower", n)
        report(describe(flower))
        pairs.append((local, flower))
        if args.secure_aggregation:
            secure = run_one(args, argv, "flower-secagg", n)
            report(describe(secure))
            plain, masked = (
                common.median(steady(flower["round_seconds"])),
                common.median(steady(secure["round_seconds"])),
            )
            report(
                f"{n} clients: Flower round with SecAgg+ {masked:.2f} s vs without {plain:.2f} s: "
                f"{common.ratio(masked, plain)}"
            )
    for line in table(pairs, args.rounds):
        report(line)

    if args.write_docs:
        common.write_result(
            args.write_docs,
            f"flower-round-time-{label}-d{args.hidden_dim}-L{args.max_seq_len}",
            f"Flower simulation vs local engine: {label}, d {args.hidden_dim}, "
            f"max_seq_len {args.max_seq_len}, {args.supernodes} SuperNodes",
            lines,
        )


if __name__ == "__main__":
    main()
