"""A run's settings: :class:`RunConfig` holds every default of a compress run, read by the CLI,
recipes and sweeps alike (:func:`run_defaults`); :func:`read_toml` reads recipe and grid files.

Kept free of torch so that the CLI can show these defaults in ``--help`` without loading it.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.errors import UserError


@dataclass
class RunConfig:
    model: str = "lenet300"
    data: str = "digits"
    methods: list = field(default_factory=lambda: ["prune"])
    options: dict = field(default_factory=dict)  # method -> {key: raw value}
    model_options: dict = field(default_factory=dict)
    epochs: int = 10
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


def run_defaults() -> dict:
    """Every :class:`RunConfig` field's default value, by name (factories called: fresh lists and dicts)."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RunConfig)}


def read_toml(path: Path, what: str) -> dict:
    """The table in a TOML file; a missing file or bad TOML is a :class:`UserError` naming ``what``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {path} is not valid TOML: {exc}") from None
