"""Seconds per federated round, vectorised vs sequential engine, measured in one process; plus
one 1:100 validation of every user, and the process's peak memory.

    python benchmarks/round_time.py                      # the seed's setting, ML-1M top-1000 (~15 min on 2 cores)
    python benchmarks/round_time.py --max-seq-len 200 --batch-size 128
    python benchmarks/round_time.py --engines vectorized --rounds 10
    python benchmarks/round_time.py --quick              # tiny synthetic run, seconds (smoke test)

Both engines time the same round numbers (so the same sampled clients and batches), each from its
own copy of the initial weights, taking turns round by round so that load from other jobs on a shared machine
hits both alike. The vectorised engine first runs `--warmup` untimed rounds (its first round pays
one-off costs); the sequential one needs none in the already warm process.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere
import common  # noqa: E402

from feddmmr.config import TrainConfig  # noqa: E402
from feddmmr.engines import ENGINES, make_engine  # noqa: E402
from feddmmr.train import prepare_run, run_round  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="ml-1m-top1000", help="ml-1m-top1000 (default), ml-1m, synthetic, or a path"
    )
    p.add_argument(
        "--top-users", type=int, help="keep the N most active users (default: 1000 for ml-1m-top1000)"
    )
    p.add_argument(
        "--engines", nargs="+", choices=ENGINES, default=list(ENGINES), help="engines to time, in order"
    )
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of the vectorised engine")
    p.add_argument(
        "--sequential-rounds", type=int, default=2, help="timed rounds of the sequential engine (slow)"
    )
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before the vectorised engine's timed ones"
    )
    p.add_argument(
        "--sequential-warmup",
        type=int,
        help="untimed rounds before the sequential engine's (default: 0 after the vectorised "
        "engine's warm-up has warmed the process, else --warmup)",
    )
    p.add_argument("--eval-repeats", type=int, default=5, help="timed validations of all users")
    p.add_argument(
        "--setting",
        choices=("seed", "default"),
        default="seed",
        help="seed: the seed's setting (client Adam, batch 64, 1 epoch, FedAvg); default: feddmmr's "
        "default recipe (SGD clients, batch 4, 2 epochs, server Adam)",
    )
    p.add_argument(
        "--local-optimizer",
        choices=("sgd", "adam"),
        help="override the setting's client optimiser (sgd: lr 1.0; adam: lr 1e-3)",
    )
    p.add_argument("--max-seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--hidden-dim", type=int)
    p.add_argument("--client-fraction", type=float)
    p.add_argument(
        "--chunk-clients", default="auto", help="clients per chunk, or auto (the engine's default)"
    )
    p.add_argument("--chunk-windows", default="auto", help="windows per chunk, or auto")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "fp16", "bf16"))
    p.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--quick", action="store_true", help="tiny synthetic run that finishes in seconds (smoke test)"
    )
    p.add_argument(
        "--write-docs",
        nargs="?",
        const=str(common.DOCS_RESULTS),
        metavar="FILE",
        help=f"also write the figures into a section of FILE (default {common.DOCS_RESULTS.relative_to(common.ROOT)})",
    )
    args = p.parse_args(argv)
    setting = dict(common.SEED_SETTING) if args.setting == "seed" else {}
    if args.local_optimizer:
        setting.update(
            local_optimizer=args.local_optimizer, learning_rate=1.0 if args.local_optimizer == "sgd" else 1e-3
        )
    for name in ("max_seq_len", "batch_size", "hidden_dim", "client_fraction"):
        if getattr(args, name) is None:
            setting_value = setting.get(name, getattr(TrainConfig, name))
            setattr(args, name, setting_value)
        setting[name] = getattr(args, name)
    args.train_setting = setting
    if args.sequential_warmup is None:
        args.sequential_warmup = (
            0 if "vectorized" in args.engines and args.rounds > 0 and args.warmup > 0 else args.warmup
        )
    if args.quick:
        # Few clients, small model, one timed round each: exercises every code path quickly.
        if args.data == "ml-1m-top1000":
            args.data = "synthetic"
        args.top_users = args.top_users or 20
        args.hidden_dim, args.max_seq_len = 16, 20
        args.rounds, args.sequential_rounds, args.warmup, args.eval_repeats = 1, 1, 1, 2
    return args


def config_for(args, data_dir, top_users, run_dir: str) -> TrainConfig:
    setting = dict(args.train_setting)
    if args.quick:
        setting.update(hidden_dim=args.hidden_dim, max_seq_len=args.max_seq_len)
    return TrainConfig(
        data_dir=data_dir,
        top_users=top_users,
        run_dir=run_dir,
        threads=args.threads,
        device=args.device,
        chunk_clients=args.chunk_clients,
        chunk_windows=args.chunk_windows,
        amp=args.amp,
        **setting,
    )


def is_seed_setting(args, label: str) -> bool:
    """The issue's reference figures only describe the seed's setting on the top-1000 subset."""
    return (
        label == "ml-1m-top1000"
        and not args.quick
        and args.setting == "seed"
        and not args.local_optimizer
        and args.max_seq_len == 50
        and args.batch_size == 64
        and args.hidden_dim == 128
        and args.client_fraction == 0.2
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    data_dir, top_users, label = common.dataset(args.data, args.top_users)
    print(common.machine_line())
    lines = []  # the results, also for --write-docs

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory(prefix="feddmmr-round-time-") as tmp:
        config = config_for(args, data_dir, top_users, tmp)
        run = prepare_run(config)
        initial = {k: v.clone() for k, v in run.model.state_dict().items()}
        eligible = int((run.split.num_train_targets > 0).sum())
        report(
            f"setting: {label} ({run.split.num_users} users, {run.split.num_items} items) | "
            f"d={config.hidden_dim} blocks={config.num_blocks} heads={config.num_heads} "
            f"max_seq_len={config.max_seq_len} batch={config.batch_size} negatives={config.num_negatives} "
            f"local_epochs={config.local_epochs} client_fraction={config.client_fraction} "
            f"({max(1, round(config.client_fraction * eligible))} clients/round) | "
            f"chunks of <= {args.chunk_clients} clients / {args.chunk_windows} windows | "
            f"threads={args.threads} device={run.device}"
        )

        # Engines take turns round by round, the first alternating (ABBA...), so that on a shared
        # machine a burst of load falls on both alike; each keeps its own weights between turns,
        # so its rounds are exactly those it would run alone.
        timed = {"vectorized": args.rounds, "sequential": args.sequential_rounds}
        warmups = {"vectorized": args.warmup, "sequential": args.sequential_warmup}
        names = [n for n in args.engines if timed[n] > 0]
        engines = {
            n: make_engine(
                n,
                run.model,
                chunk_clients=args.chunk_clients,
                chunk_windows=args.chunk_windows,
                num_negatives=config.num_negatives,
            )
            for n in names
        }
        weights = {n: initial for n in names}
        first_timed = args.warmup + 1  # every engine times rounds first_timed, first_timed+1, ...

        def one_round(name: str, r: int) -> dict:
            run.model.load_state_dict(weights[name])
            record = run_round(run, engines[name], r)
            weights[name] = {k: v.clone() for k, v in run.model.state_dict().items()}
            return record

        for name in names:
            for r in range(first_timed - warmups[name], first_timed):
                one_round(name, r)
        per_round: dict[str, list[float]] = {n: [] for n in names}
        for i in range(max((timed[n] for n in names), default=0)):
            turn = [n for n in names if timed[n] > i]
            for name in turn if i % 2 == 0 else turn[::-1]:
                record = one_round(name, first_timed + i)
                per_round[name].append(record["train_seconds"])
                rss = common.current_rss_mb()
                print(
                    f"  {name} round {first_timed + i}: {record['train_seconds']:.2f} s  loss {record['train_loss']:.4f}"
                    + (f"  RSS now {rss:.0f} MiB" if rss is not None else ""),
                    flush=True,
                )
        for name, times in per_round.items():
            report(f"round time {name}: {common.spread(times)}  [{', '.join(f'{t:.2f}' for t in times)}]")
        if {"vectorized", "sequential"} <= per_round.keys():
            vec, seq = per_round["vectorized"], per_round["sequential"]
            paired = [
                s / v for s, v in zip(seq, vec)
            ]  # the same round, moments apart: robust to drifting load
            report(
                f"speed-up vectorized vs sequential: {common.ratio(common.median(seq), common.median(vec))} "
                f"(ratio of medians); {common.median(paired):.1f}x (median of {len(paired)} same-round ratios: "
                f"{', '.join(f'{x:.1f}' for x in paired)})"
            )

        valid_times = common.repeat(lambda: run.validate(run.state.round), args.eval_repeats)
        report(
            f"validation (1:{config.num_negatives_eval}, {run.split.num_users} users): {common.spread(valid_times)}"
        )
        peak = common.peak_rss_mb()
        report(f"peak RSS (whole process): {peak:.0f} MiB")

    ref = common.REFERENCE
    report(
        "reference (issue; original code, seed setting, ML-1M top-1000): "
        f"round {ref['round_s_cpu']:.0f} s on this 2-core machine, {ref['round_s_gpu']:.0f} s on the seed's GPU; "
        f"validation {ref['valid_s_cpu']:.0f} s here, {ref['valid_s_gpu']:.0f} s on GPU; peak memory {ref['peak_rss_mb']:.0f} MiB"
    )
    if not is_seed_setting(args, label):
        report("speed-up vs reference: n/a (this run's setting differs from the reference's)")
    else:
        best = "vectorized" if "vectorized" in per_round else next(iter(per_round), None)
        if best:
            t = common.median(per_round[best])
            report(
                f"speed-up vs reference ({best}): round {common.ratio(ref['round_s_cpu'], t)} vs original on this CPU, "
                f"{common.ratio(ref['round_s_gpu'], t)} vs original on GPU"
            )
        v = common.median(valid_times)
        report(
            f"speed-up vs reference: validation {common.ratio(ref['valid_s_cpu'], v)} vs original on this CPU, "
            f"{common.ratio(ref['valid_s_gpu'], v)} vs original on GPU; "
            f"peak memory {peak / ref['peak_rss_mb']:.2f} of the original's (this process held both engines)"
        )

    if args.write_docs:
        common.write_result(
            args.write_docs,
            f"round-time-{label}-L{args.max_seq_len}-B{args.batch_size}",
            f"Round time: {label}, max_seq_len {args.max_seq_len}, batch {args.batch_size}",
            lines,
        )


if __name__ == "__main__":
    main()
