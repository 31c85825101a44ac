"""The one typed place for a run's settings; presets are files of the same keys.

`feddmmr train` builds its options from these fields (so every field is a flag, spelled with
hyphens or, as in the seed's scripts, with underscores), and writes the resolved config into the
run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from typing import Any

from feddmmr.config_rules import Between, Matches, OneOf, Rule, above, at_least, checked_value
from feddmmr.data.cold import COLD_BY
from feddmmr.data.readers import FORMATS
from feddmmr.errors import InputError

log = logging.getLogger(__name__)


MODALITY_OBJECTIVES = ("joint", "holdout", "holdout-backbone")
ITEM_TOWERS = ("id", "content")
NEGATIVE_LAYOUTS = ("per-target", "shared")  # and, with loss=ce-full, every item (federated/batches.py)
PATH = Matches(r"(?s).*\S.*", "a path")
BOOL = OneOf((False, True))
# The model's dropout draws in steps of 1/256 (model/sasrec.py `dropout`): 255/256 is the most it can drop.
MAX_DROPOUT = 255 / 256
CHUNK = Matches(r"auto|[1-9][0-9]*", "auto or a whole number >= 1")


def _aggregators() -> tuple[str, ...]:
    from feddmmr.federated.aggregation import AGGREGATORS  # rules registered by name

    return tuple(AGGREGATORS)


def _attacks() -> tuple[str, ...]:
    from feddmmr.federated.attacks import ATTACKS  # the simulated attacks, where they are built

    return ATTACKS


def _engines() -> tuple[str, ...]:
    from feddmmr.engines import ENGINES  # engines registered by name

    return (*ENGINES, "flower")


def _opt(default, help: str, *, rule: Rule):
    """A setting: its default, what it means, and what values it takes (checked, and shown in --help)."""
    return field(default=default, metadata={"help": help, "rule": rule})


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
    (test HR@10 0.656 over 3 seeds) beat 5e-3 (0.645) and 3e-3 (0.636) in 50 rounds. Each user's
    last 200 items, each local step's targets against 256 shared negatives: on full ML-1M this beat
    50 items and 4 negatives a target under full ranking on every seed (docs/RESULTS.md §3), at
    about 1.8x the seconds a round; the older recipe ships as the short_history preset."""

    # data
    data_dir: str | None = _opt(
        None, "MovieLens folder or data file; omitted: the built-in synthetic dataset", rule=PATH
    )
    format: str | None = _opt(
        None,
        "force the data format (ml-1m, ml-100k, sequences, user-item, csv, parquet)",
        rule=OneOf(FORMATS),
    )
    top_users: int | None = _opt(
        None, "keep the N users with the most interactions (the seed: 1000)", rule=at_least(1)
    )
    min_length: int = _opt(3, "drop users with fewer items (leave-one-out needs 3)", rule=at_least(1))
    cold_items: float = _opt(
        0.0,
        "new items: this share of the items is held out of training, seen only as test items, "
        "and test metrics are also given for users whose test item is new (cold) or trained "
        "(warm); 0: off (docs/DATA.md)",
        rule=Between(0.0, 1.0, high_open=True),
    )
    cold_items_by: str = _opt(
        "random",
        "which items are new: random (drawn by the seed) or time (the items first "
        "interacted with last; needs timestamps)",
        rule=OneOf(COLD_BY),
    )
    # model
    model: str = _opt(
        "fedsasrec",
        "fedsasrec (ID-only SASRec) or feddmmr (SASRec + modality experts over a local memory)",
        rule=OneOf(("fedsasrec", "feddmmr")),
    )
    modality: list[str] = field(
        default_factory=list,
        metadata={
            "help": "feddmmr, or item_tower=content: a modality feature file as NAME=FILE (e.g. "
            "text=features/ml-1m-text.npz); repeat for several",
            "rule": Matches(
                r"[A-Za-z][A-Za-z0-9_-]*=.+", "NAME=FILE, NAME a letter then letters, digits, _ or -"
            ),
        },
    )
    stage: int | None = _opt(
        None,
        "staged training: 1 ID-only backbone, 2 modality parts with the backbone frozen, "
        "3 all but the item embedding (default: train everything)",
        rule=OneOf((1, 2, 3)),
    )
    memory_long_capacity: int = _opt(200, "feddmmr: long-term memory slots per client", rule=at_least(1))
    memory_novelty: float = _opt(
        0.583,
        "feddmmr: novelty (1 - the highest cosine with the short-term memory) an item needs to enter the long-term memory",
        rule=Between(0.0, 2.0),
    )
    router: str = _opt(
        "learned",
        "feddmmr: learned (an MLP over the candidate's features weighs the experts) or "
        "uniform (equal weights over the candidate's available modalities: the no-router ablation)",
        rule=OneOf(("learned", "uniform")),
    )
    load_balance_weight: float = _opt(
        0.01, "feddmmr: weight of the router's load-balance loss", rule=at_least(0)
    )
    alignment_weight: float = _opt(
        0.0, "feddmmr: weight of the drift-adaptive alignment loss (the seed's lambda)", rule=at_least(0)
    )
    contrastive_weight: float = _opt(
        0.0, "feddmmr: weight of the drift-adaptive contrastive loss between two experts", rule=at_least(0)
    )
    item_tower: str = _opt(
        "id",
        "id (every item's vector is its learned ID embedding: the seed's) or content "
        "(an item no client trained on, such as a new one, gets a vector from its modality "
        "features, a ridge regression of the trained items' ID embeddings on theirs, refitted "
        "in evaluation: training is the ID model's; either model; docs/RESULTS.md)",
        rule=OneOf(ITEM_TOWERS),
    )
    content_history: int = _opt(
        0,
        "feddmmr: add to the score a learned weight times the candidate's highest feature "
        "cosine with the user's last N items; 0: off (not in the seed's design; docs/RESULTS.md)",
        rule=at_least(0),
    )
    modality_objective: str = _opt(
        "joint",
        "feddmmr: which targets train what. joint (the seed's): every target "
        "trains the backbone and the modality side together; holdout: each training "
        "window's last target trains only the modality side (projections, experts, "
        "router, gate, content weights), the others only the ID backbone on its own "
        "score; holdout-backbone: holdout, and the backbone trains on the last targets "
        "too (the measured best with --content-history 5; docs/RESULTS.md)",
        rule=OneOf(MODALITY_OBJECTIVES),
    )
    max_seq_len: int = _opt(200, "items of history the model reads", rule=at_least(1))
    hidden_dim: int = _opt(128, "embedding and Transformer width d", rule=at_least(1))
    num_blocks: int = _opt(2, "Transformer blocks", rule=at_least(1))
    num_heads: int = _opt(4, "attention heads", rule=at_least(1))
    dropout: float = _opt(
        0.1,
        "dropout rate, at most 255/256 = 0.996 (it is drawn in steps of 1/256)",
        rule=Between(0.0, MAX_DROPOUT),
    )
    # federated training
    num_rounds: int = _opt(50, "federated rounds (epochs with --centralized)", rule=at_least(1))
    client_fraction: float = _opt(
        0.2, "fraction of clients sampled per round", rule=Between(0.0, 1.0, low_open=True)
    )
    local_epochs: int = _opt(2, "passes over its data each sampled client makes", rule=at_least(1))
    batch_size: int = _opt(4, "training windows (of max_seq_len positions) per local step", rule=at_least(1))
    train_windows: str = _opt(
        "all",
        "which of a history's max_seq_len-position windows an epoch trains: all (every "
        "target once) or last (the newest only: SASRec+'s one sample a user an epoch)",
        rule=OneOf(("all", "last")),
    )
    learning_rate: float = _opt(
        1.0, "learning rate of the client's optimiser (and of the model's with --centralized)", rule=above(0)
    )
    weight_decay: float = _opt(0.0, "L2 weight decay of the client optimiser", rule=at_least(0))
    local_optimizer: str = _opt(
        "sgd",
        "the client's optimiser, fresh each round: sgd or adam (also the optimiser of --centralized)",
        rule=OneOf(("adam", "sgd")),
    )
    aggregator: str = _opt(
        "fedavg",
        "how the clients' updates combine: fedavg (their mean, weighted by training targets), "
        "norm-bound, median, trimmed-mean, krum or row-bound (robust to malicious clients; "
        "docs/SECURITY.md), "
        "or a rule registered with register_aggregator (in feddmmr.federated.aggregation)",
        rule=OneOf(_aggregators),
    )
    robust_fraction: float = _opt(
        0.1,
        "trimmed-mean and krum: the share of clients they are built to withstand "
        "(trimmed from each side; Krum's f)",
        rule=Between(0.0, 0.5, high_open=True),
    )
    server_optimizer: str = _opt(
        "fedadam",
        "fedadam (an Adam step along the clients' weighted mean change), fedavg (adopt the weighted mean) or fedavgm (server momentum along it)",
        rule=OneOf(("fedavg", "fedavgm", "fedadam")),
    )
    server_learning_rate: float = _opt(
        8e-3, "server learning rate of fedadam and fedavgm (fedavgm: 1 is FedAvg's step)", rule=above(0)
    )
    server_epsilon: float = _opt(
        1e-6,
        "fedadam's epsilon (tau in Reddi et al. 2021), added to the root of its second moment",
        rule=at_least(0),
    )
    server_momentum: float = _opt(0.9, "fedavgm's momentum", rule=Between(0.0, 1.0, high_open=True))
    # user-level differential privacy (DP-FedAvg; docs/PRIVACY.md)
    dp_clip_norm: float | None = _opt(
        None,
        "DP on: clip each client's update to this L2 norm; clients are Poisson-sampled and count equally",
        rule=above(0),
    )
    dp_noise_multiplier: float = _opt(
        0.0,
        "DP: Gaussian noise std on the sum of clipped updates, in units of dp_clip_norm",
        rule=at_least(0),
    )
    dp_delta: float = _opt(
        1e-5, "DP: the delta at which epsilon is reported", rule=Between(0.0, 1.0, True, True)
    )
    update_noise: float = _opt(
        0.0,
        "each client adds Gaussian noise to every row of its item-table change before "
        "sending it, std this x the RMS of its change over the rows it moved, to blur "
        "which items it read (docs/SECURITY.md); 0: none",
        rule=at_least(0),
    )
    num_negatives: int = _opt(
        256, "training negatives: per target, or per local step with negatives=shared", rule=at_least(1)
    )
    negatives: str = _opt(
        "shared",
        "per-target (num_negatives drawn for each target) or shared (num_negatives "
        "distinct items drawn once per local step for all its targets, scored as one "
        "matrix product: hundreds cost little)",
        rule=OneOf(NEGATIVE_LAYOUTS),
    )
    loss: str = _opt(
        "ce",
        "ce (softmax over the target and its negatives), bpr, gbce (gSASRec's calibrated binary "
        "cross-entropy over them), or ce-full (softmax over every item; negatives and "
        "num_negatives unused)",
        rule=OneOf(("ce", "bpr", "gbce", "ce-full")),
    )
    gbce_t: float = _opt(
        0.75,
        "loss=gbce: calibration t (0: plain binary cross-entropy; 1: calibrated to the whole "
        "catalogue; gSASRec's 0.75)",
        rule=Between(0.0, 1.0),
    )
    engine: str = _opt("vectorized", "vectorized, sequential or flower", rule=OneOf(_engines))
    centralized: bool = _opt(
        False, "train one model on all users pooled (the centralised baseline)", rule=BOOL
    )
    chunk_clients: str = _opt(
        "auto",
        "vectorized engine: clients trained together at most, or auto (sized from "
        "the device's free memory, logged at start)",
        rule=CHUNK,
    )
    chunk_windows: str = _opt(
        "auto", "vectorized engine: padded windows per step at most, or auto", rule=CHUNK
    )
    flower_supernodes: int = _opt(
        2,
        "flower engine: SuperNodes the simulation starts (a deployment waits for this many before round 1)",
        rule=at_least(1),
    )
    flower_round_timeout: float = _opt(
        600.0,
        "flower engine: seconds a round waits for replies; nodes that miss it count as failed",
        rule=above(0),
    )
    flower_secure_aggregation: bool = _opt(
        False,
        "flower engine: SecAgg+ (Flower's secaggplus), the server sees only the weighted mean of the nodes' updates (docs/PRIVACY.md)",
        rule=BOOL,
    )
    flower_secagg_clipping_range: float = _opt(
        1.0,
        "flower engine, secure aggregation: updates are quantized in [-range, range]; a node whose update leaves it fails the round",
        rule=above(0),
    )
    # attack simulation (docs/SECURITY.md)
    attack: str | None = _opt(
        None,
        "add fake clients that promote target items: data-poisoning (made-up sequences), "
        "model-poisoning (crafted updates of a genuine norm) or boosted-model-poisoning "
        "(crafted updates scaled so that the mean carries them whole)",
        rule=OneOf(_attacks),
    )
    attack_fraction: float = _opt(
        0.01,
        "fake clients, as a share of the genuine users (at least one)",
        rule=Between(0.0, 0.5, low_open=True),
    )
    attack_targets: int = _opt(
        5, "target items, chosen by the seed among the coldest fifth", rule=at_least(1)
    )
    # evaluation
    eval: str = _opt(
        "sampled", "sampled (1:N candidates) or full (rank all items)", rule=OneOf(("sampled", "full"))
    )
    num_negatives_eval: int = _opt(100, "negatives per held-out item in sampled evaluation", rule=at_least(1))
    validate_every: int | None = _opt(
        None, "validate every N rounds (default: the dynamic schedule)", rule=at_least(1)
    )
    # 10, not 5: validating 1,000 users has a standard error of about 0.015 HR@10, and late rounds gain
    # about 0.01 in 10; 5 validations (10 rounds) stopped ML-1M top-1000 seed 0 on noise at round 34
    # with test HR@10 0.612, against 0.659 after 50 rounds (docs/RESULTS.md §3).
    select_metric: str = _opt(
        "HR@10",
        "the validation metric that picks the best round and drives early stopping (SASRec+: NDCG@10)",
        rule=OneOf(("HR@10", "NDCG@10")),
    )
    patience: int = _opt(
        10, "early stopping: validated rounds without improvement (0: never stop)", rule=at_least(0)
    )
    # runtime
    device: str = _opt(
        "auto",
        "cpu, cuda, cuda:N or auto",
        rule=Matches(r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, cuda, cuda:N or mps"),
    )
    amp: str = _opt(
        "auto",
        "mixed precision: auto (float32: measured as fast as bf16 on an H200), off, fp16 "
        "(CUDA, with per-client loss scaling), bf16",
        rule=OneOf(("auto", "off", "fp16", "bf16")),
    )
    seed: int = _opt(
        0, "seed of everything: data sampling, client sampling, negatives, init", rule=Between(0, 2**32 - 1)
    )
    run_dir: str | None = _opt(None, "where the run writes (default: runs/<time>)", rule=PATH)
    init_from: str | None = _opt(
        None, "start from the weights of this checkpoint or run directory", rule=PATH
    )
    tracker: list[str] = field(
        default_factory=list,
        metadata={
            "help": "log the run to tensorboard (RUN_DIR/tensorboard) or mlflow ($MLFLOW_TRACKING_URI, else a SQLite store "
            "beside the run directory); repeat for both",
            "rule": Matches(r"tensorboard|mlflow", "tensorboard or mlflow"),
        },
    )
    threads: int | None = _opt(None, "CPU threads for torch (default: torch's choice)", rule=at_least(1))

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrainConfig)
        for name, spec in FIELDS.items():  # each value alone: its type and its rule
            value = getattr(self, name)
            if name in ("chunk_clients", "chunk_windows") and type(value) in (int, str):
                value = str(value).strip().lower()  # a preset's `chunk_clients: 32`, as the flag spells it
            setattr(self, name, checked_value(name, value, hints[name], spec.metadata["rule"]))
        for section in SECTIONS:  # then how values combine, in the sections where some do
            check = getattr(self, f"_check_{section}", None)
            if check is not None:
                check()

    def _check_data(self) -> None:
        if self.format is not None and self.data_dir is None:
            raise InputError("format needs data_dir: the built-in synthetic dataset has no format to choose")

    def _check_model(self) -> None:
        if self.hidden_dim % self.num_heads:
            raise InputError(
                f"hidden_dim={self.hidden_dim} must be a multiple of num_heads={self.num_heads} "
                f"(each head reads hidden_dim / num_heads dimensions)"
            )

    def _check_engine(self) -> None:
        if self.centralized and self.engine != "vectorized":
            raise InputError(
                f"--centralized trains one model on the pooled users in this process; engine={self.engine} "
                f"runs federated rounds: drop one of them"
            )
        if self.centralized and self.aggregator != "fedavg":
            raise InputError(
                f"--centralized has no client updates to aggregate; drop aggregator={self.aggregator}"
            )
        if self.flower_secure_aggregation and self.aggregator != "fedavg":
            raise InputError(
                f"aggregator={self.aggregator} needs each node's update, but with flower_secure_aggregation "
                f"the server sees only their sum (SecAgg+); use one or the other"
            )
        if self.flower_secure_aggregation and self.engine != "flower":
            raise InputError(
                f"flower_secure_aggregation is for engine=flower (the SuperNodes mask their updates), "
                f"got engine={self.engine!r}"
            )
        if self.engine == "flower" and not self.centralized:
            for name, value, why in (
                ("cold_items", self.cold_items, "the SuperNodes split their own data"),
                (
                    "item_tower",
                    self.item_tower != "id",
                    "the SuperNodes do not receive which items were trained",
                ),
            ):
                if value:
                    raise InputError(
                        f"{name} is not supported with engine=flower yet ({why}); use engine "
                        f"vectorized or sequential"
                    )
            require_extra("flwr", "engine=flower", "flower")

    def _check_attack(self) -> None:
        if self.attack is None:
            return
        if self.model != "fedsasrec" or self.centralized:
            raise InputError(
                f"attack={self.attack} is simulated for federated FedSASRec (model=fedsasrec, not "
                f"--centralized)"
            )

    def _check_runtime(self) -> None:
        for tracker in dict.fromkeys(self.tracker):  # the module and the extra share the tracker's name
            require_extra(tracker, f"tracker={tracker}", tracker)

    def _check_privacy(self) -> None:
        if self.update_noise and (self.centralized or self.dp_clip_norm is not None):
            raise InputError(
                "update_noise is noise on each client's update, scaled to the update itself: "
                + (
                    "--centralized has no client updates"
                    if self.centralized
                    else "DP's sensitivity bound does not hold for it; use dp_clip_norm or update_noise"
                )
            )
        if self.dp_clip_norm is None:
            if self.dp_noise_multiplier:
                raise InputError(
                    "dp_noise_multiplier needs dp_clip_norm: noise is calibrated to the clipping norm"
                )
            return
        if self.centralized:
            raise InputError(
                "dp_clip_norm is user-level DP for federated rounds; --centralized pools the users"
            )
        if self.aggregator != "fedavg":
            raise InputError(
                f"dp_clip_norm aggregates with DP-FedAvg (clipped updates plus noise); it cannot be "
                f"combined with aggregator={self.aggregator!r}"
            )
        require_extra("opacus", "dp_clip_norm (its privacy accountant)", "dp")

    def _check_feddmmr(self) -> None:
        from feddmmr.features.store import parse_modality_spec

        names = [parse_modality_spec(spec)[0] for spec in self.modality]
        if len(set(names)) != len(names):
            raise InputError(f"modality names must differ, got {', '.join(names)}")
        if self.model == "feddmmr" and not self.modality:
            raise InputError(
                "model=feddmmr needs at least one modality: --modality NAME=FILE (e.g. text=features/ml-1m-text.npz)"
            )
        if self.model != "feddmmr" and self.modality and self.item_tower != "content":
            raise InputError(
                f"modality is for model=feddmmr or item_tower=content; model={self.model!r} with "
                f"item_tower={self.item_tower} is ID-only"
            )
        if self.stage == 2 and self.model != "feddmmr":
            raise InputError("stage=2 trains the modality parts of model=feddmmr; fedsasrec has none")
        if self.model == "feddmmr" and self.centralized:
            raise InputError(
                "model=feddmmr trains with client memories: it runs federated, not --centralized"
            )
        if self.content_history > self.max_seq_len:
            raise InputError(
                f"content_history must be in [0, max_seq_len={self.max_seq_len}] (items matched; 0: off), "
                f"got {self.content_history}"
            )
        if self.item_tower != "id" and not self.modality:
            raise InputError(
                f"item_tower={self.item_tower} builds item vectors from modality features: give them "
                f"with --modality NAME=FILE (e.g. text=features/ml-1m-text.npz)"
            )
        if self.content_history and self.model != "feddmmr":
            raise InputError(
                "content_history matches a candidate's modality features with the user's items: it needs model=feddmmr"
            )
        if self.modality_objective != "joint" and self.model != "feddmmr":
            raise InputError(
                f"modality_objective={self.modality_objective} splits the targets between the backbone and "
                f"the modality side of model=feddmmr; fedsasrec has no modality side"
            )
        if self.contrastive_weight and len(self.modality) < 2:
            raise InputError("contrastive_weight > 0 contrasts two experts: give at least two modalities")
        if self.contrastive_weight and self.modality_objective != "joint":
            raise InputError(
                f"contrastive_weight > 0 contrasts the targets of one window, but with modality_objective="
                f"{self.modality_objective} the modality side trains on each window's last target only: use "
                f"one or the other"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# The sections of a config, in the order they are checked; every field is in exactly one. Flags and
# files stay flat (`--learning-rate`, `learning_rate:`).
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("data_dir", "format", "top_users", "min_length", "cold_items", "cold_items_by"),
    "model": ("model", "max_seq_len", "hidden_dim", "num_blocks", "num_heads", "dropout"),
    "client": (
        "local_epochs",
        "batch_size",
        "train_windows",
        "learning_rate",
        "weight_decay",
        "local_optimizer",
        "num_negatives",
        "negatives",
        "loss",
        "gbce_t",
    ),
    "server": (
        "num_rounds",
        "client_fraction",
        "aggregator",
        "robust_fraction",
        "server_optimizer",
        "server_learning_rate",
        "server_epsilon",
        "server_momentum",
    ),
    "engine": (
        "engine",
        "centralized",
        "chunk_clients",
        "chunk_windows",
        "flower_supernodes",
        "flower_round_timeout",
        "flower_secure_aggregation",
        "flower_secagg_clipping_range",
    ),
    "privacy": ("dp_clip_norm", "dp_noise_multiplier", "dp_delta", "update_noise"),
    "feddmmr": (
        "modality",
        "stage",
        "memory_long_capacity",
        "memory_novelty",
        "router",
        "load_balance_weight",
        "alignment_weight",
        "contrastive_weight",
        "item_tower",
        "content_history",
        "modality_objective",
    ),
    "attack": ("attack", "attack_fraction", "attack_targets"),
    "evaluation": ("eval", "num_negatives_eval", "validate_every", "select_metric", "patience"),
    "runtime": ("device", "amp", "seed", "run_dir", "init_from", "tracker", "threads"),
}


def require_extra(module: str, needed_by: str, extra: str) -> None:
    """Fail before a run starts (and leaves a half-made run directory) when an optional
    dependency the settings need is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        from feddmmr.errors import MissingExtra

        raise MissingExtra(
            f"{needed_by} needs the {module} package, which is not installed: pip install 'feddmmr[{extra}]'"
        )
