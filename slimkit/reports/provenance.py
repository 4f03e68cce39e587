"""Where a run came from: its command line, its settings as a recipe, and the machine.

These go into report.json (``command``, ``config``, ``machine``) so that report.html can
be written again from the run's files alone (``slimkit report RUN_DIR``).
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import asdict, is_dataclass

import torch


_COMMAND: list[str] | None = None


def set_command(args) -> None:
    """Record the arguments the ``slimkit`` command line was given (called by ``slimkit.cli.main``)."""
    global _COMMAND
    _COMMAND = ["slimkit", *map(str, args)]


def command_line() -> str:
    """The command as typed (``slimkit ...``); the process's own command line when slimkit
    runs as a library."""
    return shlex.join(_COMMAND if _COMMAND is not None else sys.argv)


def machine_info(device) -> dict:
    """Host, OS, CPU count, Python/torch versions, threads and the accelerator (if any)."""
    info = {"host": platform.node(), "os": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "device": str(device)}
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    try:
        from slimkit.ops import backend

        info["kernels"] = backend.backend_name()
    except Exception:  # noqa: BLE001 - the report must not fail over a diagnostic
        pass
    return info


def run_provenance(cfg, device) -> dict:
    """``command``, ``config`` (every setting of the run, defaults filled in) and ``machine``."""
    config = asdict(cfg) if is_dataclass(cfg) else dict(cfg)
    return {"command": command_line(), "config": config, "machine": machine_info(device)}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def as_recipe(config: dict, methods: list[dict]) -> str:
    """The run written as a ``slimkit compress --recipe`` TOML file (options that are
    unset, i.e. None, are left out: TOML has no null)."""
    keys = ("model", "data", "epochs", "baseline_epochs", "lr", "batch_size", "optimizer", "seed", "teacher")
    lines = [f"{k} = {_toml_value(config[k])}" for k in keys if config.get(k) is not None]
    if config.get("model_options"):
        lines.append(f"model_options = {_toml_value(config['model_options'])}")
    for m in methods:
        lines += ["", "[[stage]]", f'method = "{m["name"]}"']
        lines += [f"{k} = {_toml_value(v)}" for k, v in (m.get("options") or {}).items() if v is not None]
    return "\n".join(lines) + "\n"
