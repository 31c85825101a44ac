"""The one typed place for a run's settings; presets are files of the same keys.

`feddmmr train` builds its options from these fields (so every field is a flag, spelled with
hyphens or, as in the seed's scripts, with underscores), and writes the resolved config into the
run directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


MODALITY_OBJECTIVES = ("joint", "holdout", "holdout-backbone")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """The default recipe (clients: 2 epochs of plain SGD, lr 1, in batches of 4 windows; server:
    an Adam step, lr 8e-3, along the clients' weighted mean change) was chosen by measurement on
    the ML-1M top-1000 subset (docs/RESULTS.md). Clients that run their own fresh Adam (the
    seed's recipe) each move every weight they touch by about the learning rate, whatever their
    gradient's size, so averaging one-user clients mostly cancels their moves: every such recipe
    sat at the popularity level (validation HR@10 0.34) for 15-20 rounds. SGD clients keep their
    gradients' sizes, so their mean is a large-batch update, which the server's Adam scales as a
    centralised Adam would: validation HR@10 at round 20 was 0.556 with client lr 1, 0.492 with
    0.3, against 0.394 for the best client-Adam recipe (lr 4e-3, FedAvg). A server lr of 8e-3
    (test HR@10 0.656 over 3 seeds) beat 5e-3 (0.645) and 3e-3 (0.636) in 50 rounds."""

    # data
    data_dir: str | None = _opt(None, "MovieLens folder or data file; omitted: the built-in synthetic dataset")
    format: str | None = _opt(None, "force the data format (ml-1m, ml-100k, sequences, user-item, csv, parquet)")
    top_users: int | None = _opt(None, "keep the N users with the most interactions (the seed: 1000)")
    min_length: int = _opt(3, "drop users with fewer items (leave-one-out needs 3)")
    # model
    model: str = _opt("fedsasrec", "fedsasrec (ID-only SASRec) or feddmmr (SASRec + modality experts over a local memory)")
    modality: list[str] = field(default_factory=list, metadata={
        "help": "feddmmr: a modality feature file as NAME=FILE (e.g. text=features/ml-1m-text.npz); repeat for several"})
    stage: int | None = _opt(None, "staged training: 1 ID-only backbone, 2 modality parts with the backbone frozen, "
                                   "3 all but the item embedding (default: train everything)")
    memory_long_capacity: int = _opt(200, "feddmmr: long-term memory slots per client")
    memory_novelty: float = _opt(0.583, "feddmmr: novelty (1 - the highest cosine with the short-term memory) an item needs to enter the long-term memory")
    router: str = _opt("learned", "feddmmr: learned (an MLP over the candidate's features weighs the experts) or "
                                  "uniform (equal weights over the candidate's available modalities: the no-router ablation)")
    load_balance_weight: float = _opt(0.01, "feddmmr: weight of the router's load-balance loss")
    alignment_weight: float = _opt(0.0, "feddmmr: weight of the drift-adaptive alignment loss (the seed's lambda)")
    contrastive_weight: float = _opt(0.0, "feddmmr: weight of the drift-adaptive contrastive loss between two experts")
    content_history: int = _opt(0, "feddmmr: add to the score a learned weight times the candidate's highest feature "
                                   "cosine with the user's last N items; 0: off (not in the seed's design; docs/RESULTS.md)")
    modality_objective: str = _opt("joint", "feddmmr: which targets train what. joint (the seed's): every target "
                                            "trains the backbone and the modality side together; holdout: each training "
                                            "window's last target trains only the modality side (projections, experts, "
                                            "router, gate, content weights), the others only the ID backbone on its own "
                                            "score; holdout-backbone: holdout, and the backbone trains on the last targets "
                                            "too (the measured best with --content-history 5; docs/RESULTS.md)")
    max_seq_len: int = _opt(50, "items of history the model reads")
    hidden_dim: int = _opt(128, "embedding and Transformer width d")
    num_blocks: int = _opt(2, "Transformer blocks")
    num_heads: int = _opt(4, "attention heads")
    dropout: float = _opt(0.1, "dropout rate")
    # federated training
    num_rounds: int = _opt(50, "federated rounds (epochs with --centralized)")
    client_fraction: float = _opt(0.2, "fraction of clients sampled per round")
    local_epochs: int = _opt(2, "passes over its data each sampled client makes")
    batch_size: int = _opt(4, "training windows (of max_seq_len positions) per local step")
    learning_rate: float = _opt(1.0, "learning rate of the client's optimiser (and of the model's with --centralized)")
    weight_decay: float = _opt(0.0, "L2 weight decay of the client optimiser")
    local_optimizer: str = _opt("sgd", "the client's optimiser, fresh each round: sgd or adam (also the optimiser of --centralized)")
    aggregator: str = _opt("fedavg", "how the clients' updates combine: fedavg (their mean, weighted by training targets), "
                                     "or a rule registered with feddmmr.federated.aggregation.register_aggregator")
    server_optimizer: str = _opt("fedadam", "fedadam (an Adam step along the clients' weighted mean change), fedavg (adopt the weighted mean) or fedavgm (server momentum along it)")
    server_learning_rate: float = _opt(8e-3, "server learning rate of fedadam and fedavgm (fedavgm: 1 is FedAvg's step)")
    server_epsilon: float = _opt(1e-6, "fedadam's epsilon (tau in Reddi et al. 2021), added to the root of its second moment")
    server_momentum: float = _opt(0.9, "fedavgm's momentum")
    # user-level differential privacy (DP-FedAvg; docs/PRIVACY.md)
    dp_clip_norm: float | None = _opt(None, "DP on: clip each client's update to this L2 norm; clients are Poisson-sampled and count equally")
    dp_noise_multiplier: float = _opt(0.0, "DP: Gaussian noise std on the sum of clipped updates, in units of dp_clip_norm")
    dp_delta: float = _opt(1e-5, "DP: the delta at which epsilon is reported")
    num_negatives: int = _opt(4, "sampled negatives per training target")
    loss: str = _opt("ce", "ce (softmax over positive + negatives) or bpr")
    engine: str = _opt("vectorized", "vectorized, sequential or flower")
    centralized: bool = _opt(False, "train one model on all users pooled (the centralised baseline)")
    chunk_clients: str = _opt("auto", "vectorized engine: clients trained together at most, or auto (sized from "
                                      "the device's free memory, logged at start)")
    chunk_windows: str = _opt("auto", "vectorized engine: padded windows per step at most, or auto")
    flower_supernodes: int = _opt(2, "flower engine: SuperNodes the simulation starts (a deployment waits for this many before round 1)")
    flower_round_timeout: float = _opt(600.0, "flower engine: seconds a round waits for replies; nodes that miss it count as failed")
    flower_secure_aggregation: bool = _opt(False, "flower engine: SecAgg+ (Flower's secaggplus), the server sees only the weighted mean of the nodes' updates (docs/PRIVACY.md)")
    flower_secagg_clipping_range: float = _opt(1.0, "flower engine, secure aggregation: updates are quantized in [-range, range]; a node whose update leaves it fails the round")
    # evaluation
    eval: str = _opt("sampled", "sampled (1:N candidates) or full (rank all items)")
    num_negatives_eval: int = _opt(100, "negatives per held-out item in sampled evaluation")
    validate_every: int | None = _opt(None, "validate every N rounds (default: the dynamic schedule)")
    patience: int = _opt(5, "early stopping: validated rounds without improvement (0: never stop)")
    # runtime
    device: str = _opt("auto", "cpu, cuda, cuda:N or auto")
    amp: str = _opt("auto", "mixed precision: auto (float32: measured as fast as bf16 on an H200), off, fp16 "
                            "(CUDA, with per-client loss scaling), bf16")
    seed: int = _opt(0, "seed of everything: data sampling, client sampling, negatives, init")
    run_dir: str | None = _opt(None, "where the run writes (default: runs/<time>)")
    init_from: str | None = _opt(None, "start from the weights of this checkpoint or run directory")
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)")

    def __post_init__(self) -> None:
        for section in SECTIONS:  # each setting is checked in its section's method, and only there
            getattr(self, f"_check_{section}")()

    def section(self, name: str) -> dict[str, Any]:
        """The settings of one section (`SECTIONS`), by name."""
        return {field: getattr(self, field) for field in SECTIONS[name]}

    def _choose(self, name: str, allowed: tuple) -> None:
        if getattr(self, name) not in allowed:
            raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")

    def _at_least_one(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def _check_data(self) -> None:
        # Before a run directory exists: the readers check these too, later.
        if self.top_users is not None:
            self._at_least_one("top_users")
        self._at_least_one("min_length")

    def _check_model(self) -> None:
        self._choose("model", ("fedsasrec", "feddmmr"))
        self._at_least_one("max_seq_len", "hidden_dim", "num_blocks", "num_heads")

    def _check_client(self) -> None:
        self._choose("local_optimizer", ("adam", "sgd"))
        self._choose("loss", ("ce", "bpr"))
        self._at_least_one("local_epochs", "batch_size", "num_negatives")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    def _check_server(self) -> None:
        from feddmmr.federated.aggregation import AGGREGATORS  # rules registered by name

        self._choose("aggregator", tuple(AGGREGATORS))
        self._choose("server_optimizer", ("fedavg", "fedavgm", "fedadam"))
        self._at_least_one("num_rounds")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ValueError(f"client_fraction must be in (0, 1], got {self.client_fraction}")
        if self.server_learning_rate <= 0:
            raise ValueError(f"server_learning_rate must be > 0, got {self.server_learning_rate}")
        if self.server_epsilon < 0:
            raise ValueError(f"server_epsilon must be >= 0, got {self.server_epsilon}")

    def _check_engine(self) -> None:
        from feddmmr.engines import ENGINES  # engines registered by name

        self._choose("engine", (*ENGINES, "flower"))
        for name in ("chunk_clients", "chunk_windows"):
            setattr(self, name, _chunk_setting(name, getattr(self, name)))
        self._at_least_one("flower_supernodes")
        if self.flower_round_timeout <= 0:
            raise ValueError(f"flower_round_timeout must be > 0 seconds, got {self.flower_round_timeout}")
        if self.flower_secure_aggregation and self.engine != "flower":
            raise ValueError(f"flower_secure_aggregation is for engine=flower (the SuperNodes mask their updates), "
                             f"got engine={self.engine!r}")
        if not self.flower_secagg_clipping_range > 0:
            raise ValueError(f"flower_secagg_clipping_range must be > 0, got {self.flower_secagg_clipping_range}")

    def _check_evaluation(self) -> None:
        self._choose("eval", ("sampled", "full"))
        self._at_least_one("num_negatives_eval")

    def _check_runtime(self) -> None:
        self._choose("amp", ("auto", "off", "fp16", "bf16"))

    def _check_privacy(self) -> None:
        if self.dp_clip_norm is None:
            if self.dp_noise_multiplier:
                raise ValueError("dp_noise_multiplier needs dp_clip_norm: noise is calibrated to the clipping norm")
            return
        if self.dp_clip_norm <= 0:
            raise ValueError(f"dp_clip_norm must be > 0, got {self.dp_clip_norm}")
        if self.dp_noise_multiplier < 0:
            raise ValueError(f"dp_noise_multiplier must be >= 0, got {self.dp_noise_multiplier}")
        if not 0.0 < self.dp_delta < 1.0:
            raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        if self.centralized:
            raise ValueError("dp_clip_norm is user-level DP for federated rounds; --centralized pools the users")
        if self.aggregator != "fedavg":
            raise ValueError(f"dp_clip_norm aggregates with DP-FedAvg (clipped updates plus noise); it cannot be combined "
                             f"with aggregator={self.aggregator!r}")

    def _check_feddmmr(self) -> None:
        self._choose("router", ("learned", "uniform"))
        self._choose("modality_objective", MODALITY_OBJECTIVES)
        if isinstance(self.modality, str):  # a preset may give a single NAME=FILE
            self.modality = [self.modality]
        self.modality = list(self.modality)
        from feddmmr.features.store import parse_modality_spec

        names = [parse_modality_spec(spec)[0] for spec in self.modality]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must differ, got {', '.join(names)}")
        if self.model == "feddmmr" and not self.modality:
            raise ValueError("model=feddmmr needs at least one modality: --modality NAME=FILE (e.g. text=features/ml-1m-text.npz)")
        if self.model != "feddmmr" and self.modality:
            raise ValueError(f"modality is for model=feddmmr; model={self.model!r} is ID-only")
        if self.stage is not None and self.stage not in (1, 2, 3):
            raise ValueError(f"stage must be 1, 2 or 3, got {self.stage}")
        if self.stage == 2 and self.model != "feddmmr":
            raise ValueError("stage=2 trains the modality parts of model=feddmmr; fedsasrec has none")
        if self.model == "feddmmr" and self.centralized:
            raise ValueError("model=feddmmr trains with client memories: it runs federated, not --centralized")
        if self.content_history < 0 or self.content_history > self.max_seq_len:
            raise ValueError(f"content_history must be in [0, max_seq_len={self.max_seq_len}] (items matched; 0: off), "
                             f"got {self.content_history}")
        if self.content_history and self.model != "feddmmr":
            raise ValueError("content_history matches a candidate's modality features with the user's items: it needs model=feddmmr")
        if self.modality_objective != "joint" and self.model != "feddmmr":
            raise ValueError(f"modality_objective={self.modality_objective} splits the targets between the backbone and "
                             f"the modality side of model=feddmmr; fedsasrec has no modality side")
        if self.contrastive_weight and len(self.modality) < 2:
            raise ValueError("contrastive_weight > 0 contrasts two experts: give at least two modalities")
        if self.contrastive_weight and self.modality_objective != "joint":
            raise ValueError(f"contrastive_weight > 0 contrasts the targets of one window, but with modality_objective="
                             f"{self.modality_objective} the modality side trains on each window's last target only: use "
                             f"one or the other")
        if self.memory_long_capacity < 1:
            raise ValueError(f"memory_long_capacity must be >= 1, got {self.memory_long_capacity}")
        if not 0.0 <= self.memory_novelty <= 2.0:  # 1 - cosine lies in [0, 2]; also rejects NaN
            raise ValueError(f"memory_novelty must be in [0, 2] (1 - a cosine), got {self.memory_novelty}")
        for name in ("load_balance_weight", "alignment_weight", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# The sections of a config, in the order they are checked; every field is in exactly one. Flags and
# files stay flat (`--learning-rate`, `learning_rate:`); `TrainConfig.section(name)` reads one.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data_dir", "format", "top_users", "min_length"),
    "model": ("model", "max_seq_len", "hidden_dim", "num_blocks", "num_heads", "dropout"),
    "client": ("local_epochs", "batch_size", "learning_rate", "weight_decay", "local_optimizer", "num_negatives",
               "loss"),
    "server": ("num_rounds", "client_fraction", "aggregator", "server_optimizer", "server_learning_rate",
               "server_epsilon", "server_momentum"),
    "engine": ("engine", "centralized", "chunk_clients", "chunk_windows", "flower_supernodes", "flower_round_timeout",
               "flower_secure_aggregation", "flower_secagg_clipping_range"),
    "privacy": ("dp_clip_norm", "dp_noise_multiplier", "dp_delta"),
    "feddmmr": ("modality", "stage", "memory_long_capacity", "memory_novelty", "router", "load_balance_weight",
                "alignment_weight", "contrastive_weight", "content_history", "modality_objective"),
    "evaluation": ("eval", "num_negatives_eval", "validate_every", "patience"),
    "runtime": ("device", "amp", "seed", "run_dir", "init_from", "threads"),
}
# Settings that no longer exist, and why; a preset or an old run's config.json may still hold them.
RETIRED = {
    "memory_surprise": "it never had an effect (FedDMMR's memory gates long-term writes by novelty, "
                       "--memory-novelty, and no engine passed it losses)",
}


OLD_OBJECTIVE_FLAGS = ("holdout_content", "holdout_backbone")


def translate_old_settings(values: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """A preset or config.json written before --modality-objective replaced holdout_content and
    holdout_backbone: the same objective under its new name."""
    old = {name: values.pop(name) for name in OLD_OBJECTIVE_FLAGS if name in values}
    if old and "modality_objective" not in values:
        content, backbone = bool(old.get("holdout_content")), bool(old.get("holdout_backbone"))
        values["modality_objective"] = "holdout-backbone" if content and backbone else "holdout" if content else "joint"
        log.info("%s: %s read as modality_objective=%s", source, ", ".join(f"{k}={v}" for k, v in old.items()),
                 values["modality_objective"])
    return values


def _chunk_setting(name: str, value: Any) -> str:
    """A chunk size as its one spelling: "auto" or a positive whole number written out ("32")."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be auto or a whole number >= 1, got {value!r}")
    return str(int(text))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A preset: YAML or JSON mapping of TrainConfig keys (hyphens or underscores)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: {error}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    values = translate_old_settings({str(k).replace("-", "_"): v for k, v in raw.items()}, path)
    for name in sorted(set(values) & set(RETIRED)):
        log.warning("%s: setting %s is ignored: %s", path, name, RETIRED[name])
        del values[name]
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    return values


# Settings a resumed run may change. The first three do not affect the numbers it produces;
# `patience` decides where it stops, and a new one is applied to the saved validations (patience 0
# continues an early-stopped run to num_rounds, as if it had never stopped).
RESUME_SAFE = frozenset({"device", "threads", "flower_round_timeout", "patience"})


def saved_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config a run saved in RUN_DIR/config.json, then `overrides` (None means 'not given'),
    with run_dir = `run_dir` (the folder may have moved since)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no config.json; is this a feddmmr run directory?")
    config = resolve_config(path, **overrides)
    config.run_dir = str(run_dir)
    return config


def resolve_config(config_file: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the preset file, then explicit overrides (None means 'not given')."""
    values = read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
