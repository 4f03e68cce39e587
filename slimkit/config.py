"""A run's settings: :class:`RunConfig` holds every default of a compress run, read by the CLI,
recipes and sweeps alike (:func:`run_defaults`); :func:`read_toml` reads recipe and grid files.

Kept free of torch so that the CLI can show these defaults in ``--help`` without loading it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.errors import UserError


#: The base learning rate of each optimizer when the run gives no --lr.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}

#: Epochs of a method stage when the run gives none. Methods that need a number of optimizer
#: steps rather than of epochs (prune, sws: their ``min_steps``) raise it on small data sets;
#: epochs the user gives (``--epochs``, a recipe, a grid, a method's ``epochs``) are kept.
DEFAULT_STAGE_EPOCHS = 10


@dataclass
class RunConfig:
    model: str = "lenet300"
    data: str = "digits"
    methods: list = field(default_factory=lambda: ["prune"])
    options: dict = field(default_factory=dict)  # method -> {key: raw value}
    model_options: dict = field(default_factory=dict)
    epochs: int | None = None  # method stages; None = DEFAULT_STAGE_EPOCHS, which a method may raise
    baseline_epochs: int = 20
    lr: float | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    seed: int = 0
    out: str = "runs/default"
    teacher: str | None = None
    weights: str | None = None
    trust_checkpoint: bool = False
    resume: bool = False
    sparse_inference: bool = False
    latency: bool = True
    quiet: bool = False
    cache_dir: str | None = None
    val_fraction: float = 0.1
    #: A stage that loses more than this many points of test accuracy is flagged as a collapse
    #: (red in the summary, a ``warnings`` entry in report.json, with the method's hint).
    collapse_threshold: float = 5.0


# (setting, type, lowest allowed value) for the RunConfig fields a user sets; None: no bound
_SETTING_RULES = {
    "model": (str, None), "data": (str, None), "epochs": (int, 0), "baseline_epochs": (int, 0),
    "lr": (float, None), "batch_size": (int, 1), "optimizer": (str, None), "seed": (int, 0),
    "out": (str, None), "teacher": (str, None), "weights": (str, None), "val_fraction": (float, None),
    "collapse_threshold": (float, 0),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate_config(cfg: RunConfig) -> None:
    """Check the run's settings (from flags, a recipe or a sweep) before anything runs:
    types, NaN and infinity, ranges. Each failure is one :class:`UserError` line."""
    for name, (kind, low) in _SETTING_RULES.items():
        value = getattr(cfg, name)
        if value is None and name in ("epochs", "lr", "teacher", "weights"):
            continue
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            expected = {int: "an integer", float: "a number", str: "a string"}[kind]
            raise UserError(f"{_flag(name)} {value!r} is invalid: expected {expected}")
        if kind is float and not math.isfinite(value):
            raise UserError(f"{_flag(name)} {value} is invalid: expected a finite number")
        if low is not None and value < low:
            raise UserError(f"{_flag(name)} {value} is invalid: expected an integer >= {low}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise UserError(f"--lr {cfg.lr} is invalid: expected a positive number")
    if not cfg.collapse_threshold <= 100:
        raise UserError(f"--collapse-threshold {cfg.collapse_threshold} is invalid: expected points of accuracy "
                        "in [0, 100]")
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"val_fraction {cfg.val_fraction} is invalid: expected a number in (0, 1)")
    if cfg.optimizer not in ("sgd", "adam"):
        raise UserError(f"--optimizer {cfg.optimizer!r} is invalid: expected sgd or adam")
    if not isinstance(cfg.model_options, dict):
        raise UserError(f"model_options {cfg.model_options!r} is invalid: expected a table of KEY = VALUE")


def run_defaults() -> dict:
    """Every :class:`RunConfig` field's default value, by name (factories called: fresh lists and dicts)."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RunConfig)}


def read_json(path: Path, what: str):
    """The value in a JSON file; a missing file or bad JSON is a :class:`UserError` naming ``what``."""
    return _read_user_file(path, what, json.loads, json.JSONDecodeError, "JSON")


def read_toml(path: Path, what: str) -> dict:
    """The table in a TOML file; a missing file or bad TOML is a :class:`UserError` naming ``what``."""
    return _read_user_file(path, what, tomllib.loads, tomllib.TOMLDecodeError, "TOML")


def _read_user_file(path, what: str, parse, error, language: str):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return parse(path.read_text())
    except error as exc:
        raise UserError(f"{what} {path} is not valid {language}: {exc}") from None
