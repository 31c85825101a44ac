"""Setting up (or resuming) a run: the model, the client memories, the server optimiser, the
data split and its fixed evaluation candidates, all from the config."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from feddmmr import provenance, run_directory
from feddmmr.checkpoint import load_checkpoint, load_weights_into, write_json
from feddmmr.config import TrainConfig
from feddmmr.data.cold import choose_cold_items
from feddmmr.data.cold import describe as describe_cold
from feddmmr.data.load import load_sequences
from feddmmr.data.negatives import draw_eval_candidates, load_candidates, save_candidates
from feddmmr.data.split import LeaveOneOut, leave_one_out
from feddmmr.data.stats import dataset_stats
from feddmmr.data.types import SequenceData
from feddmmr.errors import InputError
from feddmmr.evaluation import make_eval_sets
from feddmmr.features.store import AlignedFeatures, load_modality, parse_modality_spec
from feddmmr.federated.aggregation import ServerAdam, ServerMomentum
from feddmmr.federated.attacks import Attack
from feddmmr.federated.local import positive_weight
from feddmmr.federated.precision import Precision
from feddmmr.federated.schedule import EarlyStopping, ValidationSchedule
from feddmmr.federated.stages import frozen_parameters
from feddmmr.memory.clients import ClientMemories
from feddmmr.memory.two_tier import MemoryConfig
from feddmmr.model.feddmmr import FedDMMR, FedDMMRConfig
from feddmmr.model.item_tower import combined_features, content_tower
from feddmmr.model.sasrec import SASRec, SASRecConfig
from feddmmr.rounds import payload_bytes
from feddmmr.run_state import Evaluation, Run, RunFiles, RunState, Training, restore
from feddmmr.trackers import check_tracking_uri

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices (0 to "
            f"{torch.cuda.device_count() - 1})"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            f"--device {name}: MPS (Apple GPUs) is not available on this machine (use --device cpu or auto)"
        )
    return device


def build_model(
    config: TrainConfig,
    num_items: int,
    device: torch.device,
    features: dict[str, AlignedFeatures] | None = None,
    train_counts: np.ndarray | None = None,
) -> SASRec | FedDMMR:
    """FedSASRec, or FedDMMR over the modality `features` (see `load_run_features`);
    `train_counts` [num_items + 1], each item's occurrences in the training sequences
    (`LeaveOneOut.train_counts`), is what the content item tower (`item_tower=content`, either
    model) fits its stand-ins on."""
    torch.manual_seed(config.seed)
    sasrec = SASRecConfig(
        num_items=num_items,
        max_seq_len=config.max_seq_len,
        hidden_dim=config.hidden_dim,
        num_blocks=config.num_blocks,
        num_heads=config.num_heads,
        dropout=config.dropout,
    )
    if config.model != "feddmmr":
        model = SASRec(sasrec)
        if config.item_tower == "content":  # FedSASRec with new items scored from their features
            model.item_tower = content_tower(
                {n: torch.from_numpy(f.matrix) for n, f in features.items()},
                None if train_counts is None else torch.from_numpy(train_counts),
            )
        return model.to(device)
    if not features:
        raise ValueError(
            "model=feddmmr needs its modality features: build_model(..., load_run_features(config, item_ids))"
        )
    model = FedDMMR(
        FedDMMRConfig(
            sasrec,
            learned_router=config.router == "learned",
            content_history=config.content_history,
            holdout_content=config.modality_objective != "joint",
            holdout_backbone=config.modality_objective == "holdout-backbone",
            item_tower=config.item_tower,
            mixture=config.stage != 1,  # stage 1 trains (and scores with) the ID-only backbone
        ),
        {n: torch.from_numpy(f.matrix) for n, f in features.items()},
        {n: torch.from_numpy(f.available) for n, f in features.items()},
        None if train_counts is None else torch.from_numpy(train_counts),
    )
    return model.to(device)


def load_run_data(config: TrainConfig) -> SequenceData:
    """The run's sequences, as its data settings say."""
    return load_sequences(
        config.data_dir, format=config.format, top_users=config.top_users, min_length=config.min_length
    )


def run_split(config: TrainConfig, data: SequenceData) -> LeaveOneOut:
    """The run's leave-one-out split of `data`, its new items (`--cold-items`) held out of training."""
    if not config.cold_items:
        return leave_one_out(data)
    return leave_one_out(data, choose_cold_items(data, config.cold_items, config.cold_items_by, config.seed))


def load_run_features(config: TrainConfig, item_ids: np.ndarray) -> dict[str, AlignedFeatures]:
    """The modality features of `config.modality`, aligned to the dataset's items (`item_ids`, by dense id)."""
    features = [load_modality(spec, item_ids) for spec in config.modality]
    return {f.name: f for f in features}


def feature_paths(config: TrainConfig) -> dict[str, Path]:
    """Each modality's feature file, by modality name."""
    return dict(parse_modality_spec(spec) for spec in config.modality)


def memory_config(config: TrainConfig) -> MemoryConfig:
    defaults = MemoryConfig()
    return MemoryConfig(
        long_capacity=config.memory_long_capacity,
        novelty_threshold=config.memory_novelty,
        retrieve_long=min(defaults.retrieve_long, config.memory_long_capacity),
    )


def make_memories(
    config: TrainConfig, num_users: int, features: dict[str, AlignedFeatures], device: torch.device
) -> ClientMemories | None:
    """Every user's (empty) memory for FedDMMR; None for FedSASRec. The memory compares items by
    the combined feature: normalise(concat of the normalised modality features)."""
    if config.model != "feddmmr":
        return None
    combined = combined_features([torch.from_numpy(features[name].matrix) for name in sorted(features)])
    return ClientMemories.empty(num_users, memory_config(config), combined.to(device))


def make_server_optimizer(config: TrainConfig) -> ServerAdam | ServerMomentum | None:
    if config.server_optimizer == "fedadam":
        return ServerAdam(config.server_learning_rate, tau=config.server_epsilon)
    if config.server_optimizer == "fedavgm":
        return ServerMomentum(config.server_learning_rate, config.server_momentum)
    return None


def check_data_settings(config: TrainConfig, data: SequenceData) -> None:
    """The settings that depend on the data's size."""
    if config.loss == "ce-full":
        return  # every item is a negative: nothing is drawn
    num_items = data.num_items
    smaller = "or --config short_history (4 negatives of its own for each target)"
    if config.num_negatives >= num_items:
        raise InputError(
            f"--num-negatives {config.num_negatives}: the data has {num_items} items, so a target has at "
            f"most {num_items - 1} other items to contrast with; use fewer, {smaller}"
        )
    if config.negatives == "shared":
        # A step's negatives are distinct items outside the user's history (a superset of what
        # training sees): the longest history bounds how many there are.
        unread = num_items - max(len(np.unique(data.sequence(u))) for u in range(data.num_users))
        if config.num_negatives > unread:
            raise InputError(
                f"--num-negatives {config.num_negatives} with --negatives shared: a user of the data has "
                f"read all but {unread} of its {num_items} items, so a step has at most {unread} distinct "
                f"negatives; use at most {unread}, {smaller}"
            )


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run(config: TrainConfig, *, resume: bool = False, memories_on_nodes: bool = False) -> Run:
    """`memories_on_nodes`: FedDMMR on Flower, whose client memories live on the SuperNodes."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if (
        config.stage in (2, 3) and not config.init_from and not resume
    ):  # a new run only: old folders still load
        frozen = "the backbone" if config.stage == 2 else "the item embedding"
        raise InputError(
            f"stage={config.stage} keeps {frozen} frozen where it starts: give the previous stage's "
            f"run with --init-from RUN_DIR (without it, {frozen} would stay at its random start)"
        )
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir()
    if memories_on_nodes and resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise InputError(
            f"{run_dir}: a FedDMMR run on Flower cannot be resumed: its client memories lived on the "
            f"SuperNodes and ended with them; start a new run from its weights with --init-from {run_dir}"
        )
    # Everything that can fail on the settings alone fails before the run directory is made.
    data = load_run_data(config)
    check_data_settings(config, data)
    split = run_split(config, data)
    device = resolve_device(config.device)
    features = load_run_features(config, data.item_ids)
    model = build_model(config, data.num_items, device, features, split.train_counts())
    if config.init_from and not resume:
        checkpoint = load_checkpoint(
            Path(config.init_from),
            fix="--init-from takes a best.pt or last.pt written by feddmmr, or a run directory",
        )
        loaded = load_weights_into(model, checkpoint["model"], config.init_from)
        log.info(
            "init-from %s: loaded %d tensors (round %s of that run)",
            config.init_from,
            loaded,
            checkpoint.get("round"),
        )

    check_tracking_uri(config)
    lock = run_directory.claim(run_dir, resume=resume)
    run_log = run_directory.RunLog(run_dir)
    try:
        config.run_dir = str(run_dir)
        write_json(run_dir / "config.json", config.to_dict())
        start = provenance.record_start(run_dir, device, resume=resume)
        source = start["source"]
        log.info(
            "feddmmr %s%s, torch %s",
            start["packages"]["feddmmr"],
            ""
            if source is None
            else f" (commit {source['commit'][:10]}{', with changes' if source['changed'] else ''})",
            start["packages"]["torch"],
        )
        feature_files = feature_paths(config)
        if resume:
            run_directory.check_data(run_dir, data, feature_files)
        else:
            run_directory.record_data(run_dir, data, feature_files)
        candidates_path = run_dir / "candidates.npz"
        if resume and candidates_path.exists():
            valid_c, test_c = load_candidates(candidates_path, split, config.num_negatives_eval)
        else:
            valid_c, test_c = draw_eval_candidates(split, config.num_negatives_eval, config.seed)
            save_candidates(candidates_path, split, valid_c, test_c)
        valid_set, test_set = make_eval_sets(split, config.max_seq_len, valid_c, test_c)
        attack = None
        if config.attack is not None:
            attack = Attack.plan(
                config.attack,
                config.attack_fraction,
                config.attack_targets,
                split,
                config.max_seq_len,
                config.seed,
            )
        run = Run(
            config,
            run_dir,
            split,
            model,
            RunState(early_stopping=EarlyStopping(patience=config.patience)),
            Training(
                Precision.of(config.amp, device),
                memory=None
                if memories_on_nodes
                else make_memories(config, split.num_users, features, device),
                frozen=frozen_parameters(model, config.stage),
                server_optimizer=make_server_optimizer(config),
                attack=attack,
            ),
            Evaluation(ValidationSchedule(config.num_rounds, config.validate_every), valid_set, test_set),
            RunFiles(lock, run_log),
        )
        if resume:
            restore(run)
    except BaseException:
        run_log.close()
        lock.release()
        raise
    log_start(run)
    return run


def log_start(run: Run) -> None:
    c, s = run.config, run.split
    eligible = int((s.num_train_targets > 0).sum())
    per_round = max(1, int(round(c.client_fraction * eligible)))
    log.info(
        "data: %s: %d users, %d items, %d interactions",
        s.data.source,
        s.num_users,
        s.num_items,
        s.data.num_interactions,
    )
    stats = dataset_stats(s.data)
    log.info(
        "data: density %.4f%%, items a user: median %g, mean %.1f, max %g; the top 1%% of items hold %.1f%% of "
        "the interactions",
        100 * stats["density"],
        stats["sequence_length"]["q50"],
        stats["sequence_length"]["mean"],
        stats["sequence_length"]["q100"],
        100 * stats["share_of_top_1pct_items"],
    )
    if s.cold is not None:
        log.info(describe_cold(s.data, s.cold, s.test_items))
    log.info(
        "device %s | amp %s | engine %s | %s",
        run.device,
        run.training.precision.mode,
        "centralized" if c.centralized else c.engine,
        "all users pooled" if c.centralized else f"{per_round} of {eligible} clients per round",
    )
    if c.centralized:
        log.info(
            "centralised optimiser: %s, lr %g, batches of %d windows (%s); the field's reference recipe is "
            "--config sasrec_plus",
            c.local_optimizer,
            c.learning_rate,
            c.batch_size,
            "every user's newest window an epoch" if c.train_windows == "last" else "every window an epoch",
        )
    else:
        parameters = {n: p for n, p in run.model.named_parameters()}
        log.info(
            "per client and round: %.2f MiB down (the model), %.2f MiB up (its update); %.1f MiB a round for "
            "%d clients",
            payload_bytes(parameters) / 2**20,
            payload_bytes(parameters, run.training.frozen) / 2**20,
            per_round * (payload_bytes(parameters) + payload_bytes(parameters, run.training.frozen)) / 2**20,
            per_round,
        )
        log.info(
            "local training: %s, lr %g, %d epochs of batches of %d windows | server: %s%s",
            c.local_optimizer,
            c.learning_rate,
            c.local_epochs,
            c.batch_size,
            c.server_optimizer,
            "" if c.server_optimizer == "fedavg" else f", lr {c.server_learning_rate:g}",
        )
    if c.dp_clip_norm is not None:
        log.info(
            "differential privacy: DP-FedAvg, updates clipped to L2 norm %g, noise multiplier %g, "
            "Poisson sampling at rate %g, epsilon reported at delta %g%s",
            c.dp_clip_norm,
            c.dp_noise_multiplier,
            c.client_fraction,
            c.dp_delta,
            "" if c.dp_noise_multiplier else " (no noise: clipping only, no privacy guarantee)",
        )
    training = {
        "ce-full": f"every item ({c.loss})",
        "shared": f"{c.num_negatives} shared by each local step's targets",
        "per-target": f"{c.num_negatives} per training target",
    }[c.loss if c.loss == "ce-full" else c.negatives]
    log.info("negatives: %s, %d per held-out item in %s evaluation", training, c.num_negatives_eval, c.eval)
    targets = s.num_train_targets[s.num_train_targets > 0]
    if len(targets):
        typical = int(np.percentile(targets, 95))
        log.info(
            "windows: %d positions; 95%% of the training histories hold at most %d targets%s",
            c.max_seq_len,
            typical,
            " (the vectorised engine cuts the padding a chunk's windows share)"
            if typical < c.max_seq_len and not c.centralized
            else "",
        )
    if c.loss == "gbce":
        log.info(
            "loss: gbce, calibration t %g: the positive's log-probability weighs %.4g",
            c.gbce_t,
            positive_weight(c, s.num_items),
        )
    log.info(
        "validation: %s; %s",
        run.evaluation.schedule.describe(),
        f"early stopping after {c.patience} validated rounds without {c.select_metric} gain"
        if c.patience
        else "no early stopping",
    )
    if run.training.attack is not None:
        log.info(
            "attack: %s by %d fake clients (%d genuine users), targets %s (dense item ids)",
            run.training.attack.kind,
            len(run.training.attack.fake_users),
            s.num_users,
            run.training.attack.targets.tolist(),
        )
    if c.model == "feddmmr":
        log.info(
            "model feddmmr: modalities %s | memory LT %d, K %d slots | stage %s (%d of %d parameter tensors frozen)",
            ", ".join(run.model.modalities),
            c.memory_long_capacity,
            memory_config(c).retrieval_slots,
            c.stage or "none",
            len(run.training.frozen),
            len(list(run.model.parameters())),
        )
    log.info("run directory: %s", run.run_dir)
