"""The ``slimkit sensitivity`` command: a resumable run of :func:`slimkit.sensitivity.analyse`
over every layer x level, on a trained baseline, with its outputs written at the end.

Every finished layer x level cell is appended (and fsynced) to ``OUT/.cells.jsonl``
together with the settings it depends on; a rerun with the same settings computes only
the missing cells.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from slimkit.sensitivity import CELLS_FILE, analyse, candidate_layers, write_outputs


def _load_cells(path: Path, settings: dict) -> dict:
    """Finished cells of an earlier run with the same settings (else none: the file is dropped)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        head = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        head = None
    if head != {"settings": settings}:
        path.unlink()
        return {}
    done = {}
    for line in lines[1:]:
        try:  # a line cut short by an interruption is simply measured again
            c = json.loads(line)
            done[(c["layer"], float(c["level"]))] = float(c["accuracy"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return done


class _CellLog:
    """Appends one JSON line per finished cell and fsyncs it, so an interruption loses at most one cell."""

    def __init__(self, path: Path, settings: dict, fresh: bool):
        self.f = open(path, "a", encoding="utf-8")
        if fresh:
            self._write({"settings": settings})

    def _write(self, obj) -> None:
        self.f.write(json.dumps(obj) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def __call__(self, layer: str, level: float, accuracy: float) -> None:
        self._write({"layer": layer, "level": level, "accuracy": accuracy})

    def close(self) -> None:
        self.f.close()


def _baseline_id(run, cfg) -> str:
    """What identifies the model analysed: the baseline cache key of a zoo model (model, data,
    seed, epochs, optimizer...), or a given file's path, size and modification time."""
    from slimkit.pipeline import baseline_key

    if run.source.kind == "zoo":
        return f"zoo:{baseline_key(cfg, run.bundle)}"
    path = Path(run.source.name)
    if path.is_file():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{run.source.kind}:{run.source.name}"


def run_command(*, model: str, data: str, method: str, levels: Sequence[float], out: str | None, set_pairs,
                model_options: dict, baseline_epochs: int, seed: int, batch_size: int, quiet: bool,
                log: Callable[[str], None], finetune_steps: int = 0, finetune_lr: float | None = None) -> dict:
    """``slimkit sensitivity``: baseline (trained and cached like compress, or the given file),
    then every layer x level cell not yet finished, each copy first fine-tuned for
    ``finetune_steps`` steps at ``finetune_lr`` when > 0; writes the outputs into ``out``."""
    from slimkit import distributed
    from slimkit.pipeline import Run, RunConfig, assign_options

    out_dir = Path(out or f"runs/sensitivity-{Path(model).stem}-{method}")
    cfg = RunConfig(model=model, data=data, methods=[], model_options=model_options, baseline_epochs=baseline_epochs,
                    seed=seed, batch_size=batch_size, out=str(out_dir), quiet=quiet, latency=False)
    run = Run(cfg)
    m = run.registry.method(method)
    opts = m.parse_options(assign_options([method], run.registry, list(set_pairs))[method])
    probe = run.given_model if run.given_model is not None else run.registry.build_model(
        model, run.bundle.input_shape, run.bundle.num_classes, **model_options)
    layers = candidate_layers(m, probe, opts)
    main = run.dist.is_main
    if main:
        (out_dir / ".work").mkdir(parents=True, exist_ok=True)
    distributed.barrier(run.dist)
    base_model, info = run.baseline(out_dir / ".work" / "metrics.jsonl")
    settings = {"model": model, "model_options": model_options, "data": data, "seed": seed, "method": method,
                "options": dict(opts), "baseline": _baseline_id(run, cfg)}
    if finetune_steps > 0:  # cells measured after another fine-tuning are not the same cells
        settings.update(finetune_steps=finetune_steps, finetune_lr=finetune_lr, batch_size=batch_size)
    cells_path = out_dir / CELLS_FILE
    done = _load_cells(cells_path, json.loads(json.dumps(settings, default=str))) if main else {}
    done = distributed.broadcast_object(run.dist, done)
    finished = sum(1 for k in done if k[0])
    total = len(layers) * len(levels)
    log(f"sensitivity: {method} on {len(layers)} layer(s) x {len(levels)} level(s) = {total} cells"
        + (f"; {finished} finished earlier" if finished else ""))
    trainer = run.trainer(False)
    base_model.eval()
    cell_log = _CellLog(cells_path, json.loads(json.dumps(settings, default=str)), not cells_path.exists()) \
        if main else None
    t0 = time.perf_counter()
    try:
        with run.reporter.bar("sensitivity", total) as bar:
            finetune = (lambda net: trainer.short_finetune(net, run.bundle, finetune_steps, finetune_lr,
                                                           cfg.optimizer)) if finetune_steps > 0 else None
            sens = analyse(base_model, m, opts, levels, lambda net: trainer.evaluate(net, run.bundle, "val"),
                           done=done, on_cell=cell_log, progress=bar, dist=run.dist, finetune=finetune)
    finally:
        if cell_log:
            cell_log.close()
    sens.update(model=model, data=run.bundle.description, seconds=time.perf_counter() - t0,
                cells_computed=total - finished, options=settings["options"], finetune_steps=finetune_steps)
    if main:
        write_outputs(out_dir, sens)
        import shutil

        shutil.rmtree(out_dir / ".work", ignore_errors=True)
    distributed.barrier(run.dist)
    distributed.teardown(run.dist)
    return {"out": out_dir, "sensitivity": sens}
