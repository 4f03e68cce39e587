"""A compress run: baseline -> method stages in order -> artifact -> honest report.

Everything a user can get wrong (names, options, files, methods that do not apply
to the model) is checked before any training. Work in progress lives in
``OUT/.work/`` (checkpoints for ``--resume``, stage artifacts); the final files are
written under temporary names and renamed into ``OUT`` only when the run succeeds.
Accuracies in the report come from evaluating the artifacts loaded back from disk.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch
from rich.markup import escape

from slimkit import __version__, atomic, distributed, faults, storage
from slimkit.allocation import budgets_for_stage
from slimkit.api import StageContext
from slimkit.config import DEFAULT_STAGE_EPOCHS, RunConfig, validate_config  # RunConfig: imported from here too
from slimkit.data import load_data
from slimkit.errors import TrainingDiverged, UserError
from slimkit.measure import (LATENCY_REPEATS, LATENCY_WARMUP, latency_note, measure_latency, model_stats,
                             write_dense_fp32)
from slimkit.modelio import classify, load_python_model, load_torchscript
from slimkit.nn import to_sparse_inference
from slimkit.nn.graphspec import describe as describe_architecture
from slimkit.plugins import get_registry
from slimkit.progress import Reporter
from slimkit.reports import run_provenance, write_report_html
from slimkit.rundir import OutLock, check_resume_settings
from slimkit.train import Trainer, seed_everything



#: What a collapse hint says when the method has none of its own.
GENERIC_COLLAPSE_HINT = ("likely cause: too short a retraining or too high a learning rate for this stage; "
                         "try more --epochs or a lower --lr, or a milder setting of the method's options")


def assign_options(methods: list[str], registry, pairs: list[tuple[str, str]], preset: dict | None = None) -> dict:
    """Route ``KEY=VALUE`` pairs to methods: ``METHOD.KEY`` names one; a bare ``KEY`` must
    belong to exactly one method of the chain."""
    raw = {m: dict((preset or {}).get(m, {})) for m in methods}
    for key, value in pairs:
        if "." in key:
            method, _, opt = key.partition(".")
            if method not in raw:
                raise UserError(f"--set {key}={value}: method {method!r} is not in this run's chain "
                                f"({', '.join(methods)})")
            raw[method][opt] = value
            continue
        owners = [m for m in methods if any(o.name == key for o in registry.method(m).all_options())]
        if not owners:
            allowed = sorted({f"{m}.{o.name}" for m in methods for o in registry.method(m).all_options()})
            raise UserError(f"--set {key}={value}: no method in the chain has option {key!r}; options: "
                            f"{', '.join(allowed) or '(none)'}")
        if len(owners) > 1:
            raise UserError(f"--set {key}={value} is ambiguous: {', '.join(owners)} all have {key!r}; "
                            f"write {owners[0]}.{key}={value}")
        raw[owners[0]][key] = value
    return raw


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLIMKIT_CACHE", Path.home() / ".cache" / "slimkit"))


def baseline_key(cfg: RunConfig, bundle) -> str:
    data_id = cfg.data
    if ":" in cfg.data:
        name, _, arg = cfg.data.partition(":")
        data_id = f"{name}:{Path(arg).resolve() if Path(arg.split('@')[0]).exists() else arg}"
    blob = json.dumps({"model": cfg.model, "model_options": cfg.model_options, "data": data_id,
                       "data_description": bundle.description, "seed": cfg.seed, "epochs": cfg.baseline_epochs,
                       "lr": cfg.lr, "optimizer": cfg.optimizer, "batch_size": cfg.batch_size,
                       "val_fraction": cfg.val_fraction, "version": __version__,
                       "schedule": "warmup-cosine"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def baseline_curve_path(cached: Path) -> Path:
    """Where the training curve (the metrics rows) of a cached baseline is kept, beside its weights."""
    return cached.with_name(f"{cached.stem}.curve.json")


def _read_curve(path: Path) -> list[dict]:
    """A cached baseline's curve; [] for caches written before curves were kept (or unreadable)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return rows if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) else []


class Run:
    def __init__(self, cfg: RunConfig, *, option_pairs: list[tuple[str, str]] = ()):
        self.cfg = cfg
        self.dist = distributed.setup()
        self.device = distributed.device_for(self.dist)
        self.reporter = Reporter(enabled=self.dist.is_main and not cfg.quiet)
        self.registry = get_registry()
        self.out = Path(cfg.out)
        self.work = self.out / ".work"
        # ---- validate everything before any training
        self.methods = [self.registry.method(m) for m in cfg.methods]
        raw = assign_options(cfg.methods, self.registry, list(option_pairs), cfg.options)
        self.options = [m.parse_options(raw[m.name]) for m in self.methods]
        if len(set(cfg.methods)) != len(cfg.methods):
            raise UserError(f"a method appears twice in the chain {cfg.methods}; give each once")
        validate_config(cfg)
        self.bundle = load_data(cfg.data, self.registry.datasets, seed=cfg.seed, val_fraction=cfg.val_fraction)
        if cfg.batch_size > self.bundle.size("train"):
            raise UserError(f"--batch-size {cfg.batch_size} is larger than the training split of {self.bundle.name} "
                            f"({self.bundle.size('train')} examples); use at most {self.bundle.size('train')}")
        self.source = classify(cfg.model, self.registry)
        if cfg.weights and self.source.kind != "python":
            raise UserError(f"--weights {cfg.weights} applies only to a python:module:factory model; "
                            f"{cfg.model} is a {self.source.kind} model that carries its own weights")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} exists and is not a directory")
        # A given model file is loaded now, and every method checks that it applies to the
        # model (a zoo model is checked on an untrained instance), all before any file is
        # written or any training starts.
        self.given_model = None if self.source.kind == "zoo" else self._load_given_model()
        self.teacher_model = self._load_teacher(cfg.teacher) if cfg.teacher else None
        probe = self.given_model if self.given_model is not None else self.registry.build_model(
            cfg.model, self.bundle.input_shape, self.bundle.num_classes, **cfg.model_options)
        for method, opts in zip(self.methods, self.options):
            method.check(probe, opts)

    # ------------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        self.reporter.log(message)

    def trainer(self, resume: bool, checkpoint_dir=None, metrics_path=None) -> Trainer:
        return Trainer(device=self.device, dist=self.dist, seed=self.cfg.seed, batch_size=self.cfg.batch_size,
                       reporter=self.reporter, registry=self.registry, checkpoint_dir=checkpoint_dir,
                       metrics_path=metrics_path, resume=resume, base_lr=self.cfg.lr)

    def context(self, stage: str, trainer: Trainer, teacher) -> StageContext:
        return StageContext(stage=stage, data=self.bundle, device=self.device, dist=self.dist, out_dir=self.work,
                            seed=self.cfg.seed, lr=self.cfg.lr, epochs_set=self.cfg.epochs is not None,
                            epochs=DEFAULT_STAGE_EPOCHS if self.cfg.epochs is None else self.cfg.epochs,
                            batch_size=self.cfg.batch_size, optimizer=self.cfg.optimizer, teacher=teacher,
                            model_name=self.cfg.model, log=self.log, _trainer=trainer, _registry=self.registry,
                            _budgets=budgets_for_stage)

    def header_info(self, model_name: str) -> dict:
        return {"model": model_name, "input_shape": list(self.bundle.input_shape),
                "num_classes": self.bundle.num_classes,
                "data": {"name": self.bundle.name, "description": self.bundle.description,
                         "mean": _tolist(self.bundle.mean), "std": _tolist(self.bundle.std)}}

    def save(self, path: Path, model, **extra) -> int:
        if not self.dist.is_main:
            return 0
        return storage.save_model(path, model, self.registry, info={**self.header_info(self.cfg.model), **extra})

    # ------------------------------------------------------------------ baseline
    def _load_given_model(self):
        cfg, src = self.cfg, self.source
        if src.kind == "slim":
            loaded = storage.load_model(src.name, self.registry)
            self._check_shapes(loaded.header, src.name)
            return loaded.model
        if src.kind == "torchscript":
            return load_torchscript(src.name)
        model = load_python_model(src.name, cfg.weights, self.bundle.input_shape, self.bundle.num_classes,
                                  cfg.trust_checkpoint)
        # a model of the user's own classes is saved as its fx graph: refuse one that cannot be
        # (a function off the allowlist, say) now, before any training or any file
        describe_architecture(model, self.registry.modules)
        return model

    def baseline(self, trainer_metrics: Path):
        cfg, src = self.cfg, self.source
        if self.given_model is not None:
            return self.given_model.to(self.device), {"source": f"{src.kind}:{src.name}"}
        # a zoo model: trained here, cached by model, data, seed and epochs
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        cached = cache / "baselines" / f"{cfg.model}-{baseline_key(cfg, self.bundle)}.slim"
        curve_file = baseline_curve_path(cached)
        if cached.exists():
            try:
                loaded = storage.load_model(cached, self.registry)
                self.log(f"baseline: reusing cached {cfg.model} ({cached})")
                return loaded.model.to(self.device), {"source": "cache", "cache_file": str(cached),
                                                      "epochs": cfg.baseline_epochs,
                                                      "history": _read_curve(curve_file)}
            except UserError as exc:
                self.log(f"[yellow]baseline cache {cached} unreadable ({exc}); training again[/yellow]")
        seed_everything(cfg.seed)
        model = self.registry.build_model(cfg.model, self.bundle.input_shape, self.bundle.num_classes,
                                          **cfg.model_options).to(self.device)
        trainer = self.trainer(cfg.resume, self.work / "checkpoints", trainer_metrics)
        ctx = self.context("baseline", trainer, None)
        self.log(f"baseline: training {cfg.model} on {self.bundle.description} for {cfg.baseline_epochs} epochs")
        t0 = time.perf_counter()
        history = trainer.fit(model, ctx, epochs=cfg.baseline_epochs, lr=cfg.lr, label="baseline",
                              optimizer=cfg.optimizer)
        if self.dist.is_main:
            # the training curve first, then the weights: a cached .slim always has its curve beside it
            curve_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(curve_file, json.dumps(history, default=_json_default))
            storage.save_model(cached, model, self.registry, info=self.header_info(cfg.model))
        distributed.barrier(self.dist)
        return model, {"source": "trained", "epochs": cfg.baseline_epochs, "seconds": time.perf_counter() - t0,
                       "history": history}

    def _check_shapes(self, header: dict, path: str) -> None:
        if tuple(header.get("input_shape", ())) != tuple(self.bundle.input_shape) or \
                header.get("num_classes") != self.bundle.num_classes:
            raise UserError(f"{path} was made for input {tuple(header.get('input_shape', ()))} with "
                            f"{header.get('num_classes')} classes, but {self.bundle.name} has input "
                            f"{tuple(self.bundle.input_shape)} with {self.bundle.num_classes} classes")

    # ------------------------------------------------------------------ the run
    def execute(self, *, teardown: bool = True) -> dict:
        """Run the chain; returns the report (None on ranks other than 0). ``teardown=False`` keeps
        the torch.distributed process group for further runs in this process (``slimkit sweep``:
        re-initialising it under torchrun after a teardown hangs)."""
        lock = OutLock(self.out, "compress") if self.dist.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._execute(teardown)
        except UserError as exc:
            # A fresh run that failed (a full disk, say) leaves --out as it found it; an
            # interrupted run keeps .work for --resume, and so do a failed resume and a
            # diverged run (its last good checkpoint is named in the message).
            if self.dist.is_main and not self.cfg.resume and not isinstance(exc, TrainingDiverged):
                shutil.rmtree(self.work, ignore_errors=True)
            raise
        finally:
            if lock is not None:
                lock.release()

    def settings(self) -> dict:
        """Everything that changes what this run computes: recorded for ``--resume``."""
        cfg = self.cfg
        return {"model": cfg.model, "model_options": cfg.model_options, "data": cfg.data,
                "data_description": self.bundle.description, "methods": cfg.methods,
                "options": {m.name: o for m, o in zip(self.methods, self.options)}, "seed": cfg.seed,
                "epochs": cfg.epochs, "baseline_epochs": cfg.baseline_epochs, "lr": cfg.lr,
                "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "teacher": cfg.teacher,
                "weights": cfg.weights, "sparse_inference": cfg.sparse_inference, "val_fraction": cfg.val_fraction,
                "world_size": self.dist.world_size}

    def _execute(self, teardown: bool) -> dict:
        cfg = self.cfg
        if self.dist.is_main:
            if not cfg.resume and self.work.exists():
                shutil.rmtree(self.work)
            check_resume_settings(self.work, self.settings(), cfg.resume)
        distributed.barrier(self.dist)
        metrics_path = self.work / "metrics.jsonl"
        if self.dist.is_main and not cfg.resume and metrics_path.exists():
            metrics_path.unlink()
        started = time.perf_counter()
        model, baseline_info = self.baseline(metrics_path)

        # The baseline as a dense fp32 artifact (a pre-pruned .slim too): its file size is the
        # reference size, the same bytes measure.dense_fp32_bytes gives `slimkit info`.
        baseline_path = self.work / "baseline.slim"
        if self.dist.is_main:
            write_dense_fp32(baseline_path, model, self.registry, info=self.header_info(cfg.model))
        distributed.barrier(self.dist)
        baseline_loaded = storage.load_model(baseline_path, self.registry)
        baseline_model = baseline_loaded.model.to(self.device)
        teacher = self.teacher_model if self.teacher_model is not None else copy.deepcopy(baseline_model)
        teacher.to(self.device)
        teacher.eval().requires_grad_(False)

        trainer = self.trainer(cfg.resume, self.work / "checkpoints", metrics_path)
        stages = []
        previous = self._evaluate(trainer, baseline_model)  # the accuracy the first stage starts from
        for index, (method, opts) in enumerate(zip(self.methods, self.options)):
            stage_file = self.work / f"stage-{index}-{method.name}.slim"
            stage_json = stage_file.with_suffix(".json")
            if cfg.resume and stage_file.exists() and stage_json.exists():
                model = storage.load_model(stage_file, self.registry).model.to(self.device)
                stages.append(json.loads(stage_json.read_text()))
                self.log(f"{method.name}: finished earlier, restored from {stage_file.name}")
                previous = stages[-1]["accuracy"]
                continue
            seed_everything(cfg.seed + index + 1)
            ctx = self.context(method.name, trainer, teacher)
            if self.dist.is_main:
                self.registry.emit("stage_started", stage=method.name, options=opts, context=ctx)
            self.log(f"[bold]{method.name}[/bold]: {method.summary}")
            t0 = time.perf_counter()
            model = method.apply(model, ctx, opts)
            if model is None:
                raise RuntimeError(f"method {method.name} returned no model")
            model.to(self.device)
            result = {"method": method.name, "options": opts, "accuracy": self._evaluate(trainer, model),
                      "seconds": time.perf_counter() - t0, **ctx.results}
            collapse = self._collapse(index, method, opts, ctx, previous, result["accuracy"])
            if collapse is not None:
                result["collapse"] = collapse
                self.log(f"[bold red]{method.name}: COLLAPSE {escape(collapse['message'])}[/bold red]")
            previous = result["accuracy"]
            stages.append(result)
            if self.dist.is_main:
                self.registry.emit("stage_finished", stage=method.name, result=result)
                self.save(stage_file, model)
                _atomic_write(stage_json, json.dumps(result, default=_json_default))
            distributed.barrier(self.dist)

        sparse_layers = None
        if cfg.sparse_inference:
            sparse_layers = [{"layer": r.name, "sparse": bool(r.uses_sparse), "sparsity": float(r.sparsity),
                              "reason": r.reason} for r in to_sparse_inference(model)]
        final_path = self.work / "model.slim"
        # recorded so that `slimkit info` can give compression_ratio even when a stage changed the
        # architecture (its own reference is this model written dense fp32)
        self.save(final_path, model, baseline_dense_fp32_bytes=baseline_loaded.size_bytes)
        distributed.barrier(self.dist)
        report = None
        if self.dist.is_main:
            report = self._report(baseline_loaded, baseline_info, final_path, stages, trainer, metrics_path,
                                  sparse_layers, time.perf_counter() - started)
            self._publish()
        distributed.barrier(self.dist)
        if teardown:
            distributed.teardown(self.dist)
        return report

    def _collapse(self, index: int, method, opts: dict, ctx, before: float, after: float) -> dict | None:
        """A warning entry when stage ``index`` lost more than the threshold (points), else None."""
        drop = 100.0 * (before - after)
        if not drop > self.cfg.collapse_threshold:
            return None
        hint = method.collapse_hint(opts, ctx) or GENERIC_COLLAPSE_HINT
        message = (f"stage {index} ({method.name}) fell from {100 * before:.2f} % to {100 * after:.2f} % "
                   f"(-{drop:.2f} points, threshold {self.cfg.collapse_threshold:g}): {hint}")
        return {"kind": "collapse", "stage": index, "method": method.name, "accuracy_before": before,
                "accuracy_after": after, "drop_points": drop, "threshold_points": self.cfg.collapse_threshold,
                "hint": hint, "message": message}

    def _evaluate(self, trainer, model) -> float:
        return trainer.evaluate(model, self.bundle, "test")

    def _load_teacher(self, spec: str):
        src = classify(spec, self.registry)
        if src.kind == "slim":
            loaded = storage.load_model(src.name, self.registry)
            self._check_shapes(loaded.header, src.name)
            return loaded.model.to(self.device)
        if src.kind == "torchscript":
            return load_torchscript(src.name).to(self.device)
        raise UserError(f"--teacher {spec}: expected a .slim or TorchScript file (a zoo teacher is the --model itself)")

    def _report(self, baseline_loaded, baseline_info, final_path, stages, trainer, metrics_path, sparse_layers,
                seconds) -> dict:
        from slimkit.plots import training_curves

        cfg = self.cfg
        final_loaded = storage.load_model(final_path, self.registry)
        base_model = baseline_loaded.model.to(self.device)
        final_model = final_loaded.model.to(self.device)
        shape = self.bundle.input_shape
        baseline = {"accuracy": self._evaluate(trainer, base_model), **model_stats(base_model, shape),
                    "size_bytes": baseline_loaded.size_bytes}
        final = {"accuracy": self._evaluate(trainer, final_model), **model_stats(final_model, shape),
                 "size_bytes": final_loaded.size_bytes}
        if cfg.latency:
            timing = {"batch_size": 1, "repeats": LATENCY_REPEATS, "warmup": LATENCY_WARMUP, "device": self.device}
            lat = measure_latency({"baseline": base_model, "final": final_model}, shape, **timing)
            baseline["latency_ms"], final["latency_ms"] = lat["baseline"], lat["final"]
            baseline["latency_note"] = final["latency_note"] = latency_note(**timing, models=2)
        history = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
        if not any(h.get("stage") == "baseline" for h in history):  # a cached baseline: its curve from the cache
            history = [*baseline_info.get("history", []), *history]
        report = {
            "slimkit_version": __version__,
            "model": cfg.model,
            "dataset": {"name": self.bundle.name, "description": self.bundle.description,
                        "train": self.bundle.size("train"), "val": self.bundle.size("val"),
                        "test": self.bundle.size("test")},
            "seed": cfg.seed,
            "world_size": self.dist.world_size,
            "methods": [{"name": m.name, "options": o} for m, o in zip(self.methods, self.options)],
            "baseline": {**baseline, **{k: v for k, v in baseline_info.items() if k != "history"}},
            "final": final,
            "compression_ratio": baseline["size_bytes"] / final["size_bytes"],
            "stages": stages,
            "sparse_inference": sparse_layers,
            "warnings": [*(h["recovered"] for h in history if h.get("recovered")),
                         *(s["collapse"] for s in stages if s.get("collapse"))],
            "seconds": seconds,
            "accuracy_note": "accuracy on the test split, from the artifact loaded back from disk",
            **run_provenance(cfg, self.device),
        }
        _atomic_write(self.work / "report.json", json.dumps(report, indent=2, default=_json_default))
        training_curves(history, self.work / "training_curves.png", f"{cfg.model} on {self.bundle.name}")
        write_report_html(self.work, log=self.log)  # report.html from the files just written
        self.report = report
        return report

    def _publish(self) -> None:
        """Move the finished files from the work dir into OUT, each by an atomic rename."""
        faults.point("final-write")
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("model.slim", "baseline.slim", "metrics.jsonl", "training_curves.png", "report.html"):
            src = self.work / name
            if src.exists():
                os.replace(src, self.out / name)
        for extra in self.work.glob("*.png"):
            os.replace(extra, self.out / extra.name)
        os.replace(self.work / "report.json", self.out / "report.json")  # last: its presence means done
        shutil.rmtree(self.work, ignore_errors=True)


def _tolist(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return list(x) if isinstance(x, (list, tuple)) else x


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _atomic_write(path: Path, text: str) -> None:
    atomic.write_text(path, text)
