"""A training run from start to finish: data, split, candidates, rounds, early stopping, test.

`run_round` is one federated round, top to bottom: sample clients, build their batches, train
them locally on the engine, aggregate (FedAvg, then by default a FedAdam server step). `train` runs the
rounds: validation when the schedule says so, early stopping, checkpoints, then one test.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from feddmmr.checkpoint import load_checkpoint, load_weights_into, save_checkpoint, write_json, write_text
from feddmmr.config import TrainConfig, saved_config
from feddmmr.data.load import load_sequences
from feddmmr.data.negatives import draw_eval_candidates, load_candidates, save_candidates
from feddmmr.data.split import LeaveOneOut, leave_one_out
from feddmmr.engines import LocalTraining, RoundContext, make_engine
from feddmmr.engines.base import guarded_step
from feddmmr.evaluation import EvalSet, evaluate, held_out_ranks, make_eval_sets, metrics_from_ranks, router_usage
from feddmmr.features.store import AlignedFeatures, load_modality
from feddmmr.federated.adam import TORCH_OPTIMIZERS
from feddmmr.federated.aggregation import ServerAdam, ServerMomentum, make_aggregator
from feddmmr.federated.privacy import DPFedAvg, poisson_sample, privacy_spent
from feddmmr.federated.batches import BatchSettings, client_rng, make_client_batches
from feddmmr.federated.precision import Precision, resolve_amp
from feddmmr.federated.sampling import sample_clients
from feddmmr.federated.schedule import EarlyStopping, ValidationSchedule
from feddmmr.federated.stages import frozen_parameters
from feddmmr.memory.clients import ClientMemories, combined_features
from feddmmr.memory.two_tier import MemoryConfig, MemoryState
from feddmmr.memory.two_tier import summary as memory_summary
from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig
from feddmmr.model.losses import AuxiliaryWeights, next_item_loss
from feddmmr.model.sasrec import SASRec, SASRecConfig

if TYPE_CHECKING:  # Flower is an optional extra
    from feddmmr.engines.flower.engine import FlowerEngine

log = logging.getLogger(__name__)

SELECTION_METRIC = "HR@10"

# progress_factory(round_number, clients_in_round) -> callback(clients_done_since_last_call)
ProgressFactory = Callable[[int, int], Callable[[int], None]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def round_seed(seed: int, round_number: int) -> int:
    """Seed for torch's own randomness (dropout) in a round, so a resumed run repeats it."""
    return int(np.random.SeedSequence([seed, 3, round_number]).generate_state(1)[0])


def build_model(config: TrainConfig, num_items: int, device: torch.device,
                features: dict[str, AlignedFeatures] | None = None) -> SASRec | FedDMMR:
    """FedSASRec, or FedDMMR over the modality `features` (see `load_run_features`)."""
    torch.manual_seed(config.seed)
    sasrec = SASRecConfig(
        num_items=num_items, max_seq_len=config.max_seq_len, hidden_dim=config.hidden_dim,
        num_blocks=config.num_blocks, num_heads=config.num_heads, dropout=config.dropout,
    )
    if config.model != "feddmmr":
        return SASRec(sasrec).to(device)
    if not features:
        raise ValueError("model=feddmmr needs its modality features: build_model(..., load_run_features(config, split))")
    model = FedDMMR(FedDMMRConfig(sasrec, learned_router=config.router == "learned",
                                  content_history=config.content_history, holdout_content=config.holdout_content,
                                  holdout_backbone=config.holdout_backbone),
                    {n: torch.from_numpy(f.matrix) for n, f in features.items()},
                    {n: torch.from_numpy(f.available) for n, f in features.items()})
    model.use_mixture = config.stage != 1  # stage 1 trains (and scores with) the ID-only backbone
    return model.to(device)


def load_run_features(config: TrainConfig, split: LeaveOneOut) -> dict[str, AlignedFeatures]:
    """The modality features of `config.modality`, aligned to the dataset's items (FedDMMR)."""
    features = [load_modality(spec, split.data.item_ids) for spec in config.modality]
    return {f.name: f for f in features}


def memory_config(config: TrainConfig) -> MemoryConfig:
    defaults = MemoryConfig()
    return MemoryConfig(long_capacity=config.memory_long_capacity, surprise_threshold=config.memory_surprise,
                        novelty_threshold=config.memory_novelty,
                        retrieve_long=min(defaults.retrieve_long, config.memory_long_capacity))


def make_memories(config: TrainConfig, num_users: int, features: dict[str, AlignedFeatures],
                  device: torch.device) -> ClientMemories | None:
    """Every user's (empty) memory for FedDMMR; None for FedSASRec. The memory compares items by
    the combined feature: normalise(concat of the normalised modality features)."""
    if config.model != "feddmmr":
        return None
    combined = combined_features([torch.from_numpy(features[name].matrix) for name in sorted(features)])
    return ClientMemories.empty(num_users, memory_config(config), combined.to(device))


def auxiliary_weights(config: TrainConfig) -> AuxiliaryWeights:
    """FedDMMR's auxiliary loss weights of the run."""
    return AuxiliaryWeights(config.load_balance_weight, config.alignment_weight, config.contrastive_weight)


@dataclass
class RunState:
    """Everything a resumed run needs besides the files it can rebuild from the config."""

    round: int = 0
    early_stopping: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=0))
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


@dataclass
class Run:
    config: TrainConfig
    run_dir: Path
    split: LeaveOneOut
    model: SASRec
    device: torch.device
    precision: Precision
    schedule: ValidationSchedule
    valid_set: EvalSet
    test_set: EvalSet
    state: RunState
    memory: ClientMemories | None = None  # FedDMMR: every user's memory
    frozen: frozenset[str] = frozenset()  # parameters the stage keeps as they are
    server_optimizer: ServerAdam | ServerMomentum | None = None  # None: plain FedAvg
    # FedDMMR on Flower: the engine whose nodes hold the memories and evaluate (memory is None)
    nodes: FlowerEngine | None = None

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def params(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def batch_settings(self) -> BatchSettings:
        c = self.config
        return BatchSettings(max_len=c.max_seq_len, batch_size=c.batch_size, epochs=c.local_epochs,
                             num_negatives=c.num_negatives, num_items=self.split.num_items)

    def local_training(self) -> LocalTraining:
        c = self.config
        return LocalTraining(c.learning_rate, c.weight_decay, c.loss, self.precision, memory=self.memory,
                             auxiliary=auxiliary_weights(c), frozen=self.frozen, optimizer=c.local_optimizer,
                             clip_norm=c.dp_clip_norm)

    def memory_slots(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Every user's retrieved memory (items, mask) [users, K], what evaluation reads; None for FedSASRec."""
        return None if self.memory is None else self.memory.retrieve(self.memory.state)

    def validate(self, round_number: int) -> tuple[dict[str, float], dict]:
        """(validation metrics, diagnostics) of the model after `round_number`."""
        if self.nodes is not None:
            best = self.state.early_stopping.best_round
            ranks, diagnostics = self.nodes.evaluate_on_nodes(self.params(), "valid", self.valid_set, round_number,
                                                              round_number, [best] if best else [])
            if self.model.mixes:
                diagnostics.update(self.model.scalars())
            return metrics_from_ranks(ranks), diagnostics
        metrics = evaluate(self.model, self.valid_set, self.config.eval, precision=self.precision,
                           memory=self.memory_slots())
        return metrics, self.diagnostics()

    def test(self, best_round: int) -> dict[str, float]:
        """Test metrics of the model as it is now (the best round's, with that round's memories)."""
        if self.nodes is not None:
            ranks, _ = self.nodes.evaluate_on_nodes(self.params(), "test", self.test_set, self.state.round, best_round,
                                                    [best_round])
            return metrics_from_ranks(ranks)
        return evaluate(self.model, self.test_set, self.config.eval, precision=self.precision, memory=self.memory_slots())

    def diagnostics(self) -> dict:
        """FedDMMR, per validated round: mean router weight per expert, gate g, memory summary."""
        if self.memory is None:
            return {}
        out = {"memory": memory_summary(self.memory.state)}
        if self.model.mixes:
            out["router_weights"] = router_usage(self.model, self.valid_set, self.memory_slots(), precision=self.precision)
            out.update(self.model.scalars())
        return out


# ---------------------------------------------------------------------------------------------
# Setting up (or resuming) a run


def make_server_optimizer(config: TrainConfig) -> ServerAdam | ServerMomentum | None:
    if config.server_optimizer == "fedadam":
        return ServerAdam(config.server_learning_rate, tau=config.server_epsilon)
    if config.server_optimizer == "fedavgm":
        return ServerMomentum(config.server_learning_rate, config.server_momentum)
    return None


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run(config: TrainConfig, *, resume: bool = False, memories_on_nodes: bool = False) -> Run:
    """`memories_on_nodes`: FedDMMR on Flower, whose client memories live on the SuperNodes."""
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
    if memories_on_nodes and resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise ValueError(f"{run_dir}: a FedDMMR run on Flower cannot be resumed: its client memories lived on the "
                         f"SuperNodes and ended with them; start a new run from its weights with --init-from {run_dir}")
    if not resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    config.run_dir = str(run_dir)
    write_json(run_dir / "config.json", config.to_dict())

    data = load_sequences(config.data_dir, format=config.format, top_users=config.top_users, min_length=config.min_length)
    split = leave_one_out(data)
    candidates_path = run_dir / "candidates.npz"
    if candidates_path.exists():
        valid_c, test_c = load_candidates(candidates_path, split)
    else:
        valid_c, test_c = draw_eval_candidates(split, config.num_negatives_eval, config.seed)
        save_candidates(candidates_path, split, valid_c, test_c)
    valid_set, test_set = make_eval_sets(split, config.max_seq_len, valid_c, test_c)

    device = resolve_device(config.device)
    precision = Precision(resolve_amp(config.amp, device), device.type)
    features = load_run_features(config, split)
    model = build_model(config, split.num_items, device, features)
    state = RunState(early_stopping=EarlyStopping(patience=config.patience))
    run = Run(config, run_dir, split, model, device, precision,
              ValidationSchedule(config.num_rounds, config.validate_every), valid_set, test_set, state,
              memory=None if memories_on_nodes else make_memories(config, split.num_users, features, device),
              frozen=frozen_parameters(model, config.stage),
              server_optimizer=make_server_optimizer(config))
    if resume:
        restore(run)
    elif config.init_from:
        checkpoint = load_checkpoint(Path(config.init_from))
        loaded = load_weights_into(model, checkpoint["model"], config.init_from)
        log.info("init-from %s: loaded %d tensors (round %s of that run)", config.init_from, loaded, checkpoint.get("round"))
    log_start(run)
    return run


def log_start(run: Run) -> None:
    c, s = run.config, run.split
    eligible = int((s.num_train_targets > 0).sum())
    per_round = max(1, int(round(c.client_fraction * eligible)))
    log.info("data: %s: %d users, %d items, %d interactions", s.data.source, s.num_users, s.num_items, s.data.num_interactions)
    log.info("device %s | amp %s | engine %s | %s", run.device, run.precision.mode,
             "centralized" if c.centralized else c.engine,
             "all users pooled" if c.centralized else f"{per_round} of {eligible} clients per round")
    if c.centralized:
        log.info("centralised optimiser: %s, lr %g, batches of %d windows (the clients' settings); the measured "
                 "centralised recipe is --local-optimizer adam --learning-rate 1e-3 --batch-size 64 --dropout 0.2",
                 c.local_optimizer, c.learning_rate, c.batch_size)
    else:
        log.info("local training: %s, lr %g, %d epochs of batches of %d windows | server: %s%s", c.local_optimizer,
                 c.learning_rate, c.local_epochs, c.batch_size, c.server_optimizer,
                 "" if c.server_optimizer == "fedavg" else f", lr {c.server_learning_rate:g}")
    if c.dp_clip_norm is not None:
        log.info("differential privacy: DP-FedAvg, updates clipped to L2 norm %g, noise multiplier %g, "
                 "Poisson sampling at rate %g, epsilon reported at delta %g%s", c.dp_clip_norm,
                 c.dp_noise_multiplier, c.client_fraction, c.dp_delta,
                 "" if c.dp_noise_multiplier else " (no noise: clipping only, no privacy guarantee)")
    log.info("negatives: %d per training target, %d per held-out item in %s evaluation",
             c.num_negatives, c.num_negatives_eval, c.eval)
    log.info("validation: %s; early stopping after %s validated rounds without %s gain",
             run.schedule.describe(), c.patience or "no", SELECTION_METRIC)
    if c.model == "feddmmr":
        log.info("model feddmmr: modalities %s | memory LT %d, K %d slots | stage %s (%d of %d parameter tensors frozen)",
                 ", ".join(run.model.modalities), c.memory_long_capacity, memory_config(c).retrieval_slots,
                 c.stage or "none", len(run.frozen), len(list(run.model.parameters())))
    log.info("run directory: %s", run.run_dir)


def checkpoint_state(run: Run) -> dict:
    st = run.state
    return {
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "round": st.round,
        "early_stopping": vars(st.early_stopping).copy(),
        "history": st.history,
        "stopped_early": st.stopped_early,
        "loss_scale": run.precision.scale,
        "loss_scale_good_steps": run.precision.good_steps,
        **({} if run.server_optimizer is None else {"server_optimizer": run.server_optimizer.state_dict()}),
        **memory_entry(run),
    }


def memory_entry(run: Run) -> dict:
    """The memories' part of a checkpoint (its tensors, not copies: save it before the next round)."""
    return {} if run.memory is None else {"memory": run.memory.state.to_dict()}


def load_memory(run: Run, saved: dict) -> None:
    if run.memory is not None:
        if "memory" not in saved:
            raise ValueError(f"{run.run_dir}: the checkpoint holds no client memories (a run of another model?)")
        run.memory.state = MemoryState.from_dict(saved["memory"])


def restore(run: Run) -> None:
    path = run.checkpoints / "last.pt"
    if not path.exists():
        log.info("resume: %s has no checkpoint yet; starting from round 1", run.run_dir)
        return
    saved = load_checkpoint(path)
    run.model.load_state_dict({k: v.to(run.device) for k, v in saved["model"].items()})
    load_memory(run, saved)
    # The config's patience (resume may change it) judges the saved validations afresh.
    early_stopping = EarlyStopping(**{**saved["early_stopping"], "patience": run.config.patience})
    run.state = RunState(
        round=saved["round"],
        early_stopping=early_stopping,
        history=list(saved["history"]),
        stopped_early=early_stopping.should_stop,
    )
    run.precision.scale = saved["loss_scale"]
    run.precision.good_steps = saved.get("loss_scale_good_steps", 0)  # absent before it was saved
    if run.server_optimizer is not None:
        run.server_optimizer.load_state_dict(saved["server_optimizer"])
    # metrics.jsonl may hold a line written after the checkpoint: rewrite it from the checkpoint.
    write_metrics(run)
    log.info("resume: continuing %s after round %d", run.run_dir, run.state.round)


def write_metrics(run: Run) -> None:
    write_text(run.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in run.state.history))


# ---------------------------------------------------------------------------------------------
# One round


def run_round(run: Run, engine, round_number: int, progress_factory: ProgressFactory | None = None) -> dict:
    c, split = run.config, run.split
    torch.manual_seed(round_seed(c.seed, round_number))
    started = time.perf_counter()

    global_params = run.params()
    eligible = np.flatnonzero(split.num_train_targets > 0)
    if c.dp_clip_norm is None:
        users = sample_clients(eligible, c.client_fraction, c.seed, round_number)
        aggregator = make_aggregator(c.aggregator, global_params)
    else:
        users = poisson_sample(eligible, c.client_fraction, c.seed, round_number)
        noise = torch.Generator().manual_seed(round_seed(c.seed, round_number) + 1)
        aggregator = DPFedAvg(global_params, c.dp_clip_norm, c.dp_noise_multiplier,
                              c.client_fraction * len(eligible), noise)
    settings = run.batch_settings()
    batches = [
        make_client_batches(int(u), split.train_sequence(u), settings, client_rng(c.seed, round_number, int(u)))
        for u in users
    ]
    progress = progress_factory(round_number, len(users)) if progress_factory else None
    reports = engine.train(RoundContext(round_number, c.seed), global_params, batches, run.local_training(),
                           aggregator.add, progress)
    new_params = aggregator.result()
    if run.server_optimizer is not None:
        new_params = run.server_optimizer.step(global_params, new_params)
    new_params.update({name: global_params[name] for name in run.frozen})  # never aggregated: exactly as they were
    run.model.load_state_dict(new_params, strict=False)

    dropped = [r.user for r in reports if r.dropped]
    if dropped:
        log.warning("round %d: dropped the updates of %d clients (non-finite weights): users %s", round_number,
                    len(dropped), [int(split.data.user_ids[u]) for u in sorted(dropped)[:20]])
        if len(dropped) == len(reports):
            raise RuntimeError(
                f"round {round_number}: every client's update ({len(dropped)}) was non-finite, so the round "
                f"has nothing to aggregate; the global model stays finite, but training cannot go on. "
                f"Lower --learning-rate, or use --amp off instead of {c.amp!r} (the run resumes from round "
                f"{round_number - 1} with --resume {run.run_dir})")

    # The Flower engine reports only the clients whose node replied: average over those.
    targets = {b.user: b.num_targets for b in batches}
    reported = sorted(reports, key=lambda r: r.user)
    weights = np.array([targets[r.user] for r in reported], dtype=np.float64)
    losses = np.array([r.mean_loss for r in reported])
    record = {
        "round": round_number,
        "clients": len(users),
        "failed_clients": len(users) - len(reported),
        "train_loss": float(np.average(losses, weights=weights)) if reported else float("nan"),
        "skipped_steps": int(sum(r.skipped_steps for r in reports)),
        "dropped_clients": len(dropped),
        "train_seconds": time.perf_counter() - started,
    }
    if c.dp_clip_norm is not None:
        epsilon = privacy_spent(c.dp_noise_multiplier, c.client_fraction, round_number, c.dp_delta)
        record["dp"] = {"epsilon": epsilon if math.isfinite(epsilon) else None, "delta": c.dp_delta}
    return record


def run_centralized_epoch(run: Run, optimizer: torch.optim.Optimizer, round_number: int) -> dict:
    """The pooled baseline: one model trains on every user's windows, shuffled together."""
    c, split = run.config, run.split
    torch.manual_seed(round_seed(c.seed, round_number))
    started = time.perf_counter()
    settings = BatchSettings(max_len=c.max_seq_len, batch_size=1 << 30, epochs=1,
                             num_negatives=c.num_negatives, num_items=split.num_items)
    eligible = np.flatnonzero(split.num_train_targets > 0)
    per_user = [make_client_batches(int(u), split.train_sequence(u), settings, client_rng(c.seed, round_number, int(u)))
                for u in eligible]
    inputs = torch.from_numpy(np.concatenate([b.inputs[0] for b in per_user]))
    candidates = torch.from_numpy(np.concatenate([b.candidates[0] for b in per_user]))
    order = torch.from_numpy(np.random.default_rng([c.seed, 4, round_number]).permutation(len(inputs)))
    model = run.model
    model.train()
    total, count, skipped = 0.0, 0.0, 0
    scales = run.precision.client_scales(1, run.device)
    for start in range(0, len(order), c.batch_size):
        rows = order[start : start + c.batch_size]
        batch_inputs, batch_candidates = inputs[rows].to(run.device), candidates[rows].to(run.device)
        with run.precision.autocast():
            scores = model(batch_inputs, batch_candidates)
        loss_sum, n = next_item_loss(scores.float(), batch_candidates[..., 0] > 0, c.loss)
        if not guarded_step(loss_sum / n.clamp(min=1), list(model.parameters()), optimizer, scales):
            skipped += 1
            continue
        total += float(loss_sum.detach())
        count += float(n)
    run.precision.settle([scales])
    if skipped:
        log.warning("round %d: skipped %d steps with a non-finite loss or gradient", round_number, skipped)
    return {"round": round_number, "clients": len(eligible), "train_loss": total / max(count, 1.0),
            "skipped_steps": skipped, "train_seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclass
class RunResult:
    run_dir: Path
    final: dict
    history: list[dict]


def train(config: TrainConfig, *, resume: bool = False, on_round: Callable[[dict], None] | None = None,
          progress_factory: ProgressFactory | None = None, engine=None) -> RunResult:
    """Run (or resume) training. `engine` overrides the one named in the config: the Flower
    ServerApp passes an engine that sends each round's local updates to Flower clients (a run
    with engine=flower starts as a Flower app: `run_flower_simulation`, or `flwr run`)."""
    if config.engine == "flower" and engine is None and not config.centralized:
        raise ValueError("engine=flower runs as a Flower app: feddmmr.engines.flower.simulation.run_flower_simulation"
                         "(config), `feddmmr train --engine flower` or `flwr run` (docs/DEPLOY.md)")
    nodes = engine if config.model == "feddmmr" and hasattr(engine, "evaluate_on_nodes") else None
    run = prepare_run(config, resume=resume, memories_on_nodes=nodes is not None)
    run.nodes = nodes
    c, state = run.config, run.state
    if engine is None and not c.centralized:
        engine = make_engine(c.engine, run.model, chunk_clients=c.chunk_clients, chunk_windows=c.chunk_windows,
                             num_negatives=c.num_negatives)
    optimizer = (TORCH_OPTIMIZERS[c.local_optimizer](run.model.parameters(), lr=c.learning_rate,
                                                     weight_decay=c.weight_decay)
                 if c.centralized else None)
    if c.centralized and state.round > 0:
        # The centralised optimiser state lives in the last checkpoint.
        saved = load_checkpoint(run.checkpoints / "last.pt")
        optimizer.load_state_dict(saved["optimizer"])

    while state.round < c.num_rounds and not state.stopped_early:
        round_number = state.round + 1
        if c.centralized:
            record = run_centralized_epoch(run, optimizer, round_number)
        else:
            record = run_round(run, engine, round_number, progress_factory)
        record["validated"] = run.schedule.validates(round_number)
        eval_started = time.perf_counter()
        if record["validated"]:
            record["val"], diagnostics = run.validate(round_number)
            record.update(diagnostics)
            if state.early_stopping.update(round_number, record["val"][SELECTION_METRIC]):
                save_checkpoint(run.checkpoints / "best.pt",
                                {"model": checkpoint_state(run)["model"], "round": round_number, "val": record["val"],
                                 **memory_entry(run)})
            state.stopped_early = state.early_stopping.should_stop
        else:
            record["next_validation"] = run.schedule.next_validation(round_number)
        record["eval_seconds"] = time.perf_counter() - eval_started
        state.round = round_number
        state.history.append(record)
        last = checkpoint_state(run)
        if optimizer is not None:
            last["optimizer"] = optimizer.state_dict()
        save_checkpoint(run.checkpoints / "last.pt", last)
        with open(run.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if on_round:
            on_round(record)
        if state.stopped_early:
            log.info("early stopping at round %d: no %s gain in %d validations (best: round %d)",
                     round_number, SELECTION_METRIC, c.patience, state.early_stopping.best_round)

    final = final_evaluation(run)
    return RunResult(run.run_dir, final, state.history)


def final_evaluation(run: Run) -> dict:
    """Test once, on the best validated model."""
    best = load_checkpoint(run.checkpoints / "best.pt")
    run.model.load_state_dict({k: v.to(run.device) for k, v in best["model"].items()})
    load_memory(run, best)  # the memories of the best round
    final = {
        "best_round": best["round"],
        "valid": best["val"],
        "test": run.test(best["round"]),
        "eval": run.config.eval,
        "rounds_run": run.state.round,
        "stopped_early": run.state.stopped_early,
        "train_seconds": sum(r["train_seconds"] for r in run.state.history),
    }
    write_json(run.run_dir / "final.json", final)
    return final


@dataclass
class BestModel:
    """A finished run's best model, ready to evaluate: its memories' retrieved slots (FedDMMR) and
    the run's validation and test sets on its saved candidates."""

    config: TrainConfig
    round: int
    model: torch.nn.Module
    item_ids: np.ndarray  # the dataset's item ids by dense id (what modality files are aligned to)
    memory_slots: tuple[torch.Tensor, torch.Tensor] | None  # (items [users, K], mask)
    valid_set: EvalSet
    test_set: EvalSet
    precision: Precision

    def ranks(self, eval_set: EvalSet, mode: str | None = None) -> np.ndarray:
        """[users] 0-based rank of each held-out item, ranking as `mode` says (default: the run's own `eval`)."""
        return held_out_ranks(self.model, eval_set, mode or self.config.eval, precision=self.precision,
                              memory=self.memory_slots)

    def evaluate(self, eval_set: EvalSet, mode: str | None = None) -> dict[str, float]:
        """Metrics on `eval_set` (`mode` as for `ranks`)."""
        return metrics_from_ranks(self.ranks(eval_set, mode))


def load_best_model(run_dir: str | Path) -> BestModel:
    run_dir = Path(run_dir)
    config = saved_config(run_dir)
    if config.model == "feddmmr" and config.engine == "flower":
        raise ValueError(f"{run_dir}: a FedDMMR run on Flower kept its client memories on the SuperNodes, so its "
                         f"test (final.json) was computed there and cannot be recomputed from the checkpoint")
    data = load_sequences(config.data_dir, format=config.format, top_users=config.top_users, min_length=config.min_length)
    split = leave_one_out(data)
    valid_c, test_c = load_candidates(run_dir / "candidates.npz", split)
    valid_set, test_set = make_eval_sets(split, config.max_seq_len, valid_c, test_c)
    device = resolve_device(config.device)
    features = load_run_features(config, split)
    model = build_model(config, split.num_items, device, features)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    model.load_state_dict({k: v.to(device) for k, v in best["model"].items()})
    memory = make_memories(config, split.num_users, features, device)
    slots = None
    if memory is not None:
        memory.state = MemoryState.from_dict(best["memory"])
        slots = memory.retrieve(memory.state)
    precision = Precision(resolve_amp(config.amp, device), device.type)
    return BestModel(config, best["round"], model, split.data.item_ids, slots, valid_set, test_set, precision)


def evaluate_run(run_dir: str | Path, mode: str | None = None) -> dict:
    """Re-evaluate a finished run's best model on its saved candidates (reproduces final.json's test),
    or with another ranking `mode` (sampled or full; default: the run's own)."""
    best = load_best_model(run_dir)
    mode = mode or best.config.eval
    return {"best_round": best.round, "eval": mode, "valid": best.evaluate(best.valid_set, mode),
            "test": best.evaluate(best.test_set, mode)}
