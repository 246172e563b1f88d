"""The catalog: every name, alias, label, display order and default of the harness, in one torch-free place.

The registries (methods/, bench/attacks, bench/data, bench/models) hold the code; they read their labels and
defaults from here, and tests/test_catalog.py checks that the two agree. The report, `bench status` and
`bench run --dry-run` read only this module, so they never import torch. Sources of the method defaults are
cited in docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.config.names import UsageError


@dataclass(frozen=True)
class DatasetEntry:
    label: str
    num_classes: int
    in_channels: int
    image_size: int
    augment: bool  # random crop (pad 4) + horizontal flip, as in the CIFAR recipes
    summary: str
    n_train: int  # sizes of the source splits, for plans made without the files (`bench run --dry-run`)
    n_test: int
    eps_linf: float  # the usual budgets of the literature for this data
    eps_l2: float

    @property
    def default_model(self) -> str:
        return DEFAULT_MODEL_BY_IMAGE_SIZE.get(self.image_size, "resnet18")

    def split_sizes(self, val_size: int, train_subset: int | None, test_subset: int | None) -> tuple[int, int]:
        """(training points, test points) that loading the data gives for these settings."""
        n_train = self.n_train - val_size
        return (min(train_subset, n_train) if train_subset else n_train,
                min(test_subset, self.n_test) if test_subset else self.n_test)


_SMALL = {"eps_linf": 0.1, "eps_l2": 1.5}  # (Fashion-)MNIST: 0.1 (TRADES/MART MNIST), L2 1.5
_CIFAR = {"eps_linf": 8 / 255, "eps_l2": 0.5}  # CIFAR/SVHN: RobustBench's 8/255 and 0.5

DATASETS: dict[str, DatasetEntry] = {
    "fashion-mnist": DatasetEntry("Fashion-MNIST", 10, 1, 28, False,
                                  "Fashion-MNIST (embedded default; Debian package or torchvision)", 60000, 10000,
                                  **_SMALL),
    "mnist": DatasetEntry("MNIST", 10, 1, 28, False, "MNIST through torchvision", 60000, 10000, **_SMALL),
    "cifar10": DatasetEntry("CIFAR-10", 10, 3, 32, True, "CIFAR-10 through torchvision (RobustBench test order)",
                            50000, 10000, **_CIFAR),
    "cifar100": DatasetEntry("CIFAR-100", 100, 3, 32, True,
                             "CIFAR-100 through torchvision (RobustBench test order)", 50000, 10000, **_CIFAR),
    "svhn": DatasetEntry("SVHN", 10, 3, 32, True, "SVHN through torchvision", 73257, 26032, **_CIFAR),
    "synthetic": DatasetEntry("synthetic", 10, 1, 28, False, "tiny generated 28x28 data for tests (no files)",
                              1536, 512, **_SMALL),
}
DEFAULT_DATASET = "fashion-mnist"


@dataclass(frozen=True)
class ModelEntry:
    label: str  # the architecture's name, as RobustBench's model_info writes it
    summary: str
    # [choice] default SGD learning rate at batch 128: 0.1 as in the LRAT/GAIRAT ResNet recipes; 0.05 for the
    # small CNN, which barely leaves chance level in short runs at 0.1 (Fashion-MNIST, 3 epochs on 4,096
    # images: validation PGD accuracy 0.32 at lr 0.1, 0.49 at lr 0.05)
    lr: float


MODELS: dict[str, ModelEntry] = {
    "cnn-bn": ModelEntry("CNN-BN", "BatchNorm CNN for 28x28 inputs, pools early, 16/32 channels (~0.21M parameters; "
                                   "the 28x28 default)", 0.05),
    "cnn-bn-wide": ModelEntry("CNN-BN-wide", "cnn-bn with 32/64 channels (~0.42M parameters)", 0.05),
    "small-cnn": ModelEntry("SmallCNN", "TRADES SmallCNN for 28x28 inputs (~0.3M parameters)", 0.05),
    "resnet18": ModelEntry("ResNet-18", "ResNet-18, CIFAR form (11M)", 0.1),
    "preact-resnet18": ModelEntry("PreActResNet-18", "PreAct ResNet-18, CIFAR form (11M)", 0.1),
    "wrn-34-10": ModelEntry("WideResNet-34-10", "WideResNet-34-10 (46M), as in TRADES/GAIRAT/MAIL", 0.1),
}
DEFAULT_MODEL_BY_IMAGE_SIZE = {28: "cnn-bn", 32: "resnet18"}


@dataclass(frozen=True)
class TrainAttackEntry:
    label: str
    summary: str
    has_kappa: bool  # GAIRAT's kappa comes out of the attack loop


TRAIN_ATTACKS: dict[str, TrainAttackEntry] = {
    "pgd": TrainAttackEntry("PGD", "PGD on CE, K steps (default 10 of eps/4), uniform random start (Madry et al. "
                                   "2018)", True),
    "cw": TrainAttackEntry("CW", "PGD on the CW margin loss, kappa_c = 50 as in the CAT/GAIRAT code", True),
    "saa": TrainAttackEntry("SAA", "LRAT's simplified AutoAttack: APGD targeted DLR, 3 targets x 20 steps, "
                                   "lowest-margin merge", False),
    "fgsm": TrainAttackEntry("FGSM", "FGSM with random start, one step of 1.25 eps (Wong et al. 2020); cheap runs "
                                     "and tests", False),
    "kl": TrainAttackEntry("KL", "TRADES' attack: PGD on KL(p(x) || p(x_adv)) from x + 0.001 N(0, I), K steps of the "
                                 "run's step size (Zhang et al. 2019, trades.py)", True),
}


@dataclass(frozen=True)
class EvalAttackEntry:
    label: str
    summary: str
    strength: int  # monotonicity guard: accuracy must not rise with strength (natural 0 < fgsm < pgd < aa)
    autoattack: bool = False  # run through pyautoattack


EVAL_ATTACKS: dict[str, EvalAttackEntry] = {
    "natural": EvalAttackEntry("Natural", "clean accuracy", 0),
    "fgsm": EvalAttackEntry("FGSM", "FGSM, one step of eps, no random start", 1),
    "pgd20": EvalAttackEntry("PGD-20", "PGD-20 on CE, step eps/4, uniform random start", 2),
    "cw20": EvalAttackEntry("CW-20", "PGD-20 on the CW margin loss, kappa_c = 0 [choice], step eps/4", 2),
    "apgd-ce": EvalAttackEntry("APGD-CE", "AutoAttack's APGD-CE alone (standard settings)", 2, True),
    "apgd-t": EvalAttackEntry("APGD-T", "AutoAttack's APGD-T alone (9 targets, standard settings)", 2, True),
    "fab-t": EvalAttackEntry("FAB-T", "AutoAttack's FAB-T alone (standard settings)", 2, True),
    "square": EvalAttackEntry("Square", "AutoAttack's Square alone (5000 queries)", 2, True),
    "aa": EvalAttackEntry("AA", "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), pyautoattack", 3, True),
}
WORST = "worst"  # the derived row: per-example AND of every stored attack of a checkpoint
# The `train_attack` (and `model`) a run folder of a model evaluated from outside records (bench.api.evaluate,
# `bench eval --model-file`): it trained with nothing the harness knows, so every eval attack is unseen to it.
EXTERNAL = "external"
WORST_LABEL = "Worst"
DEFAULT_EVAL_ATTACKS = ("natural", "pgd20", "cw20", "aa")
THREAT_MODELS = ("linf", "l2")


@dataclass(frozen=True)
class Param:
    """A method parameter: its default, where the default comes from, and what values are valid."""

    default: bool | int | float | str
    source: str  # the paper equation or official code file and flag (docs/methods.md has the details)
    choices: tuple[str, ...] = ()  # strings: the valid values
    low: float | None = None  # numbers: inclusive bounds
    high: float | None = None
    allow_inf: bool = False  # numbers: +-inf accepted (GAIRAT's lambda = +inf is plain AT)
    # A training attack's name that acts only on runs training with that attack; on other runs the parameter
    # resets to its default, so such a run is the same run (same id) as without it (`params_for_attack`).
    names_train_attack: bool = False


@dataclass(frozen=True)
class MethodEntry:
    label: str
    summary: str = ""  # one line for `bench ls`; the method classes take theirs from here (methods/base.py)
    aliases: tuple[str, ...] = ()
    params: dict[str, Param] = field(default_factory=dict)
    max_attacks: int = 1  # training attacks one run may combine ('saa+cw': 2)
    needs_kappa: bool = False  # needs GAIRAT's kappa from the training attack (pgd, cw)
    min_attack_steps: int = 1  # K of the pgd/cw training attacks
    min_attack_steps_why: str = ""
    train_attacks: tuple[str, ...] = ()  # the training attacks it accepts; empty: any


_BURN_IN = {"low": 0.0, "high": 1.0}
_LRAT_PARAMS = {
    "alpha": Param(2.0, "LRAT paper, Eq. 12 and sec. 5.1", low=0.0),
    "beta": Param(0.5, "LRAT paper, Eq. 12 and sec. 5.1", low=0.0),
    "C": Param(0.1, "LRAT paper, Eq. 7 and sec. 5.1", low=0.0),
    "anchor": Param("natural", "[choice] the paper allows natural, PGD or SAA data for x*", ("natural", "pgd", "saa")),
    "weighting": Param("lrat", "lrat: Eq. 12; none: all weights 1 (LSAT)", ("lrat", "none")),
    "anchor_bn": Param("eval", "[choice] BN mode of the anchor pass: eval (running statistics, the needing "
                               "instances only) or batch (the whole batch in train mode)", ("eval", "batch")),
    "gd_attack": Param("none", "LRAT paper, Table 2 (GD): this variant takes GAIRAT's geometry weight from its "
                               "kappa instead of Eq. 12 [choice: GAIRAT's batch-normalised weight, lam -1]",
                       ("none", "pgd", "cw"), names_train_attack=True),
}

_BETA_KL = {"low": 0.0}
_SUMMARIES = {  # one line per method for `bench ls`; the classes' `summary` (methods/base.py)
    "at": "standard adversarial training, CE on the attack's output (Madry et al. 2018)",
    "gairat": "geometry-aware instance reweighting from kappa (Zhang et al. ICLR 2021), lam=-1, plain AT for 59/120",
    "lrat": "local reweighting inside each (instance, variants) pair (Gao et al. ICLR 2022), alpha=2 beta=0.5 C=0.1",
    "lsat": "LRAT's locally simulated AT: the LRAT objective with all weights 1 (equals AT for one attack)",
    "mail": "probabilistic-margin instance reweighting, MAIL-AT (Wang et al. NeurIPS 2021), plain AT for 76/120",
    "mart": "misclassification-aware AT: boosted CE + beta (1 - p_y(x)) KL (Wang et al. ICLR 2020), beta=6",
    "trades": "natural CE + beta KL(p(x) || p(x_adv)) on its KL attack (Zhang et al. ICML 2019), beta=6",
}
# Display order = the order of this dict (the LRAT paper's Table 1: AT, the instance-reweighted, then local;
# the two defences every robustness paper reports beside AT come after AT).
METHODS: dict[str, MethodEntry] = {
    "at": MethodEntry("AT", _SUMMARIES["at"]),
    "trades": MethodEntry("TRADES", _SUMMARIES["trades"], train_attacks=("kl",), params={
        "beta": Param(6.0, "TRADES train_trades_cifar10.py --beta 6.0 (train_trades_mnist.py and trades.py's "
                           "keyword default: 1.0)", **_BETA_KL)}),
    "mart": MethodEntry("MART", _SUMMARIES["mart"], params={
        "beta": Param(6.0, "MART train_wideresnet.py --beta 6.0 and mart.py's keyword default", **_BETA_KL)}),
    "gairat": MethodEntry("GAIRAT", _SUMMARIES["gairat"], aliases=("irat",),  # "IRAT": the LRAT paper
                          needs_kappa=True, min_attack_steps=2,
                          min_attack_steps_why="GAIRAT's weights divide by floor(K/2), which is 0 below 2 steps "
                                               "(NaN weights).",
                          params={"lam": Param(-1.0, "GAIRAT.py --Lambda (fixed schedule)", allow_inf=True),
                                  "burn_in": Param(59 / 120, "GAIRAT.py: reweights when (epoch + 1) >= begin_epoch "
                                                             "= 60, i.e. plain AT for 59 of 120 epochs", **_BURN_IN)}),
    "mail": MethodEntry("MAIL", _SUMMARIES["mail"], params={
        "slope": Param(1.0, "MAIL train.py --slope"),
        "bias": Param(-1.5, "MAIL train.py --bias"),
        "burn_in": Param(76 / 120, "MAIL train.py: plain AT while epoch <= 75 (0-based) of 120", **_BURN_IN)}),
    "lsat": MethodEntry("LSAT", _SUMMARIES["lsat"], max_attacks=8, params={**_LRAT_PARAMS, "weighting": Param(
        "none", "LSAT: the LRAT objective with all weights 1", ("lrat", "none"))}),
    "lrat": MethodEntry("LRAT", _SUMMARIES["lrat"], max_attacks=8, params=dict(_LRAT_PARAMS)),
}
METHOD_ALIASES = {alias: name for name, entry in METHODS.items() for alias in entry.aliases}


@dataclass(frozen=True)
class Defaults:
    """Run settings that several commands default the same way."""

    val_size: int = 512  # class-balanced validation split carved from the training set
    epochs: int = 10
    batch_size: int = 128
    weight_decay: float = 2e-4
    attack_steps: int = 10
    saa_steps: int = 20  # APGD steps per target of the SAA training attack (LRAT paper sec. 5.1: 3 targets x 20)
    eval_batch_size: int = 256
    lock_wait_s: float = 2.0  # a `bench status` probe of a cell's lock must not make a runner skip the cell
    baseline: str = "at"
    checkpoints: tuple[str, ...] = field(default=("best", "last"))


DEFAULTS = Defaults()


# ---- lookups shared by every reader ------------------------------------------------------------------------

def default_eps(dataset: str, threat_model: str = "linf") -> float:
    """The usual budget of `dataset` under `threat_model`: L-inf 8/255 (CIFAR, SVHN) and 0.1 ((Fashion-)MNIST);
    L2 0.5 and 1.5."""
    if threat_model not in THREAT_MODELS:
        raise UsageError(f"Unknown threat model '{threat_model}' (choices: {', '.join(sorted(THREAT_MODELS))}).")
    entry = DATASETS[dataset]
    return entry.eps_linf if threat_model == "linf" else entry.eps_l2


def default_model(dataset: str) -> str:
    return DATASETS[dataset].default_model


def default_lr(model: str) -> float:
    return MODELS[model].lr if model in MODELS else 0.1


def method_defaults(name: str) -> dict[str, bool | int | float | str]:
    """{parameter: default} of a catalogued method (its Params dataclass reads these)."""
    return {k: p.default for k, p in METHODS[name].params.items()}


def method_label(name: str) -> str:
    return METHODS[name].label if name in METHODS else name.upper()


def train_attack_label(name: str, gd_attack: str | None = None) -> str:
    """'saa+cw' -> 'SAA+CW'; the part named by LRAT's `gd_attack` reads 'GD' (the LRAT paper's Table 2 rows:
    'saa+cw+pgd' with gd_attack=pgd -> 'SAA+CW+GD')."""
    return "+".join("GD" if p == gd_attack else TRAIN_ATTACKS[p].label if p in TRAIN_ATTACKS else p.upper()
                    for p in name.split("+"))


def eval_attack_label(name: str) -> str:
    if name == WORST:
        return WORST_LABEL
    return EVAL_ATTACKS[name].label if name in EVAL_ATTACKS else name


def is_external(train: dict) -> bool:
    """A stored training config (config.json's "train") of a model evaluated from outside, not trained here."""
    return train.get("train_attack") == EXTERNAL


def row_label(method: str, train_attack: str, params: dict | None = None) -> str:
    """'GAIRAT (PGD)': a table row; 'LRAT (GD+CW)' for LRAT with gd_attack=pgd on pgd+cw; 'my-net (external)'
    for a model evaluated from outside, under the name it was given."""
    if train_attack == EXTERNAL:
        return f"{method} ({EXTERNAL})"
    return f"{method_label(method)} ({train_attack_label(train_attack, (params or {}).get('gd_attack'))})"


def method_order() -> list[str]:
    return list(METHODS)


def train_attack_order() -> list[str]:
    return list(TRAIN_ATTACKS)


def eval_attack_order() -> list[str]:
    """Table columns: natural first, the attacks by strength as listed, `worst` last."""
    return [*EVAL_ATTACKS, WORST]
