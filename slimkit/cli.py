"""The ``slimkit`` command line (Typer + rich).

User mistakes end in one line on stderr and exit code 2; Ctrl-C during training
ends with exit code 130 after the checkpoint for ``--resume`` is on disk.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slimkit.config import DEFAULT_STAGE_EPOCHS, read_toml, run_defaults
from slimkit.errors import UserError

try:  # typer >= 0.16 vendors its own click; older typer uses click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Make trained PyTorch models smaller and faster.")
bench_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmarks.")
app.add_typer(bench_app, name="bench")
# Tables stay readable when stdout is a pipe or a file (rich would assume 80 columns).
out = Console() if sys.stdout.isatty() else Console(width=160)
# Run defaults come from RunConfig (slimkit.config), for flags, recipes and sweeps alike.
DEFAULTS = run_defaults()


def _pairs(items: List[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} is invalid: expected KEY=VALUE (or METHOD.KEY=VALUE)")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _model_options(items: List[str]) -> dict:
    opts = {}
    for key, value in _pairs(items, "--model-opt"):
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def _read_recipe(path: Path) -> dict:
    recipe = read_toml(path, "recipe")
    allowed = {"model", "data", "epochs", "baseline_epochs", "lr", "batch_size", "optimizer", "seed", "out",
               "teacher", "stage", "model_options"}
    unknown = sorted(set(recipe) - allowed)
    if unknown:
        raise UserError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    if not isinstance(recipe.get("model_options", {}), dict):
        raise UserError(f"recipe {path}: model_options must be a table (model_options = {{ width = 0.5 }})")
    stages = recipe.get("stage", [])
    if "stage" in recipe and not stages:
        raise UserError(f"recipe {path}: `stage = []` lists no method; give [[stage]] tables with a 'method' each, "
                        "or leave 'stage' out to use --method")
    if not isinstance(stages, list) or not all(isinstance(s, dict) and "method" in s for s in stages):
        raise UserError(f"recipe {path}: [[stage]] tables must each have a 'method'")
    return recipe


@app.command()
def compress(
    model: Optional[str] = typer.Option(None, help="Zoo name, .slim or TorchScript file, or python:module:factory."),
    data: Optional[str] = typer.Option(None, help="digits, mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR, synthetic."),
    method: Optional[List[str]] = typer.Option(None, "--method", "-m", help="Method to apply; repeat to chain."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Method option KEY=VALUE or METHOD.KEY=VALUE."),
    recipe: Optional[Path] = typer.Option(None, help="TOML file with the run's settings and [[stage]] tables."),
    epochs: Optional[int] = typer.Option(None, help=f"Epochs per method stage (default {DEFAULT_STAGE_EPOCHS}; prune and sws raise "
                                         "it on small data sets to their minimum optimizer steps)."),
    baseline_epochs: Optional[int] = typer.Option(None, help=f"Epochs to train a zoo baseline (default {DEFAULTS['baseline_epochs']})."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: 0.1 SGD / 1e-3 Adam; method stages start at 1/5 of it, prune at 1/2)."),
    batch_size: Optional[int] = typer.Option(None, help=f"Global batch size (default {DEFAULTS['batch_size']})."),
    optimizer: Optional[str] = typer.Option(None, help=f"sgd or adam (default {DEFAULTS['optimizer']})."),
    seed: Optional[int] = typer.Option(None, help=f"Seed for data split, init, shuffling (default {DEFAULTS['seed']})."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/<model>-<methods>)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher model (.slim) when a chain changed the model."),
    weights: Optional[str] = typer.Option(None, help="State dict for a python:module:factory model."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model-opt", help="Zoo model option KEY=VALUE, e.g. width=0.5."),
    trust_checkpoint: bool = typer.Option(DEFAULTS["trust_checkpoint"], help="Allow unpickling arbitrary objects from --weights."),
    resume: bool = typer.Option(DEFAULTS["resume"], help="Continue an interrupted run in the same --out."),
    sparse_inference: bool = typer.Option(DEFAULTS["sparse_inference"], help="Convert pruned convs to the sparse inference kernel."),
    latency: bool = typer.Option(DEFAULTS["latency"], help="Measure latency of baseline and result."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(DEFAULTS["quiet"], help="No progress output."),
    collapse_threshold: float = typer.Option(DEFAULTS["collapse_threshold"], help="Flag a stage that loses more "
                                             "than this many points of accuracy as a collapse (red in the summary, "
                                             "a warning in report.json)."),
):
    """Compress a model: train or load a baseline, apply methods in order, write OUT/model.slim and OUT/report.json."""
    from slimkit.pipeline import Run, RunConfig

    rec = _read_recipe(recipe) if recipe else {}
    preset = {}
    methods = list(method or [])
    if rec.get("stage"):
        if methods:
            raise UserError("give methods either with --method or in the recipe's [[stage]] tables, not both")
        methods = [s["method"] for s in rec["stage"]]
        preset = {s["method"]: {k: v for k, v in s.items() if k != "method"} for s in rec["stage"]}
    methods = methods or list(DEFAULTS["methods"])

    def pick(flag_value, key, default=None):
        """The flag, else the recipe's value, else RunConfig's default."""
        if flag_value is not None:
            return flag_value
        return rec.get(key, DEFAULTS[key] if default is None else default)

    mdl = pick(model, "model")
    cfg = RunConfig(
        model=mdl, data=pick(data, "data"), methods=methods, options=preset,
        model_options={**rec.get("model_options", {}), **_model_options(model_opt)},
        epochs=pick(epochs, "epochs"), baseline_epochs=pick(baseline_epochs, "baseline_epochs"),
        lr=pick(lr, "lr"), batch_size=pick(batch_size, "batch_size"),
        optimizer=pick(optimizer, "optimizer"), seed=pick(seed, "seed"),
        out=pick(out_dir, "out", f"runs/{Path(mdl).stem}-{'-'.join(methods)}"), teacher=pick(teacher, "teacher"),
        weights=weights, trust_checkpoint=trust_checkpoint, resume=resume, sparse_inference=sparse_inference,
        latency=latency, quiet=quiet or as_json, collapse_threshold=collapse_threshold,
    )
    run = Run(cfg, option_pairs=_pairs(set_, "--set"))
    report = run.execute()
    if report is None:  # ranks other than 0
        return
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    elif not quiet:
        print_summary(report, Path(cfg.out))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024


def print_summary(report: dict, out_path: Path) -> None:
    b, f = report["baseline"], report["final"]
    table = Table(title=f"{report['model']} on {report['dataset']['description']}")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    table.add_column("change", justify="right")
    table.add_row("test accuracy", f"{100 * b['accuracy']:.2f} %", f"{100 * f['accuracy']:.2f} %",
                  f"{100 * (f['accuracy'] - b['accuracy']):+.2f} pt")
    for s in report["stages"]:  # a stage's own control run (distill baseline=true): the student on labels alone
        if isinstance(s.get("labels_only_accuracy"), (int, float)):
            table.add_row(f"test accuracy, labels-only control ({s['method']})", f"{100 * b['accuracy']:.2f} %",
                          f"{100 * s['labels_only_accuracy']:.2f} %",
                          f"{100 * (s['labels_only_accuracy'] - b['accuracy']):+.2f} pt")
    table.add_row("parameters", f"{b['params']:,}", f"{f['params']:,}", f"{f['params'] / b['params']:.2f}x")
    table.add_row("non-zero parameters", f"{b['nonzero_params']:,}", f"{f['nonzero_params']:,}",
                  f"{b['nonzero_params'] / max(f['nonzero_params'], 1):.1f}x fewer")
    table.add_row("sparsity (conv/linear weights)", f"{100 * b['sparsity']:.1f} %", f"{100 * f['sparsity']:.1f} %", "")
    table.add_row("file size", _fmt_bytes(b["size_bytes"]), _fmt_bytes(f["size_bytes"]),
                  f"{report['compression_ratio']:.2f}x smaller")
    table.add_row("MACs (dense)", f"{b['macs']:,}", f"{f['macs']:,}", f"{b['macs'] / max(f['macs'], 1):.2f}x")
    table.add_row("MACs (non-zero weights)", f"{b['nonzero_macs']:,}", f"{f['nonzero_macs']:,}",
                  f"{b['nonzero_macs'] / max(f['nonzero_macs'], 1):.2f}x")
    if "latency_ms" in f:
        table.add_row("latency, batch 1 (median)", f"{b['latency_ms']:.3f} ms", f"{f['latency_ms']:.3f} ms",
                      f"{b['latency_ms'] / f['latency_ms']:.2f}x")
    out.print(table)
    for s in report["stages"]:
        uplift = (f", {100 * s['kd_uplift']:+.2f} pt over its labels-only control"
                  if isinstance(s.get("kd_uplift"), (int, float)) else "")
        line = f"  stage {s['method']}: accuracy {100 * s['accuracy']:.2f} %{uplift}, {s['seconds']:.1f} s"
        out.print(f"[bold red]{line}: COLLAPSE[/bold red]" if s.get("collapse") else line, highlight=False)
    for warning in report.get("warnings", []):
        out.print(f"[bold red]WARNING: {escape(warning['message'])}[/bold red]", highlight=False)
    out.print(f"wrote {out_path / 'model.slim'}, {out_path / 'report.json'}, {out_path / 'report.html'}")


@app.command()
def sweep(
    grid: Path = typer.Argument(..., help="TOML grid: models, data, seeds, a method chain, [options] lists (docs/sweep.md)."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output directory (default: the grid's `out`)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the grid and list its cells; train nothing."),
    verbose: bool = typer.Option(False, help="Show every cell's progress output (each line prefixed with its cell)."),
    executor: str = typer.Option("local", help="Where cells run: local (in order, in this process), local:N "
                                               "(N worker processes), ray[:ADDRESS] (slimkit[ray]); docs/sweep.md."),
):
    """Run every combination of a grid as compress runs (resumable); write OUT/results.csv, results.md, plots."""
    from slimkit.progress import console as progress_console
    from slimkit.sweep import run_sweep

    # the grid's live bar on stderr when it is a terminal, status lines on stdout otherwise
    result = run_sweep(grid, out=out_dir, dry_run=dry_run, verbose=verbose, log=out.print, executor=executor,
                       console=progress_console)
    if result["failed"]:
        raise UserError(f"{len(result['failed'])} cell(s) failed: {', '.join(result['failed'])} (the other cells "
                        f"finished; see {result['out']}/results.csv; rerun to retry only the failed ones)")


@app.command()
def train(
    model: str = typer.Option(DEFAULTS["model"], help="Zoo model name."),
    data: str = typer.Option(DEFAULTS["data"], help="Data set."),
    epochs: int = typer.Option(DEFAULTS["baseline_epochs"], help="Epochs."),
    lr: Optional[float] = typer.Option(DEFAULTS["lr"], help="Learning rate."),
    batch_size: int = typer.Option(DEFAULTS["batch_size"]),
    optimizer: str = typer.Option(DEFAULTS["optimizer"]),
    seed: int = typer.Option(DEFAULTS["seed"]),
    model_opt: Optional[List[str]] = typer.Option(None, "--model-opt", help="Model option KEY=VALUE."),
    out_file: Path = typer.Option(Path("baseline.slim"), "--out", help="Where to write the trained model."),
    quiet: bool = typer.Option(DEFAULTS["quiet"]),
):
    """Train a zoo model from scratch and save it as a .slim file."""
    from slimkit import distributed, storage
    from slimkit.pipeline import Run, RunConfig
    from slimkit.train import seed_everything

    cfg = RunConfig(model=model, data=data, methods=[], baseline_epochs=epochs, lr=lr, batch_size=batch_size,
                    optimizer=optimizer, seed=seed, quiet=quiet, model_options=_model_options(model_opt),
                    out=str(out_file.parent))
    run = Run(cfg)
    registry = run.registry
    if run.source.kind != "zoo":
        raise UserError(f"train builds a zoo model; {model!r} is not one ({', '.join(sorted(registry.models))})")
    seed_everything(seed)
    net = registry.build_model(model, run.bundle.input_shape, run.bundle.num_classes, **cfg.model_options)
    trainer = run.trainer(False)
    trainer.fit(net, run.context("baseline", trainer, None), epochs=epochs, lr=lr, label="baseline",
                optimizer=optimizer)
    acc = trainer.evaluate(net, run.bundle, "test")
    if run.dist.is_main:
        size = run.save(out_file, net)
        loaded = storage.load_model(out_file, registry)  # loads on the CPU; the trainer's batches may be on a GPU
        acc = trainer.evaluate(loaded.model.to(run.device), run.bundle, "test")
        out.print(f"wrote {out_file} ({size:,} bytes); test accuracy {100 * acc:.2f} % on {run.bundle.description}")
    distributed.teardown(run.dist)


@app.command()
def evaluate(
    model_file: Path = typer.Argument(..., help="A .slim file."),
    data: Optional[str] = typer.Option(None, help="Data set (default: the one recorded in the file)."),
    seed: int = typer.Option(0, help="Seed of the split (must match the run's)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Test accuracy of a .slim model on its data set."""
    from slimkit import storage
    from slimkit.data import load_data
    from slimkit.plugins import get_registry
    from slimkit.progress import Reporter
    from slimkit.api import DistInfo
    from slimkit.train import Trainer

    registry = get_registry()
    loaded = storage.load_model(model_file, registry)
    spec = data or loaded.header.get("data", {}).get("name")
    if not spec:
        raise UserError(f"{model_file} records no data set; pass --data")
    bundle = load_data(spec, registry.datasets, seed=seed)
    trainer = Trainer(device="cpu", dist=DistInfo(), seed=seed, batch_size=512, reporter=Reporter(False))
    acc = trainer.evaluate(loaded.model, bundle, "test")
    result = {"model": str(model_file), "data": spec, "split": "test", "examples": bundle.size("test"), "accuracy": acc}
    if as_json:
        print(json.dumps(result))
    else:
        out.print(f"{model_file}: test accuracy {100 * acc:.2f} % ({bundle.size('test')} examples of {bundle.description})")


@app.command()
def info(
    model_file: Path = typer.Argument(..., help="A .slim file."),
    latency: bool = typer.Option(False, "--latency", help="Measure inference latency (median of warm runs)."),
    batch_size: int = typer.Option(1, min=1, help="Batch size for --latency (also added to the kernel table)."),
    runs: int = typer.Option(50, min=1, help="Timed forward passes per model for --latency."),
    warmup: int = typer.Option(10, min=0, help="Untimed forward passes per model before timing."),
    against: Optional[Path] = typer.Option(None, "--against", help="With --latency: a baseline .slim file, timed "
                                           "interleaved with the model (e.g. OUT/baseline.slim)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Per-layer shapes, parameters, non-zeros, MACs and bytes of a .slim model, and which kernel
    each sparse-capable layer runs at batch 1 and 64 (and --batch-size), and why."""
    from slimkit.summary import describe_model, print_description

    if against is not None and not latency:
        raise UserError("--against needs --latency (it times the two models interleaved)")
    desc = describe_model(model_file, latency=latency, batch_size=batch_size, repeats=runs, warmup=warmup,
                          against=against)
    if as_json:
        print(json.dumps(desc, indent=2))
    else:
        print_description(desc, out)


@app.command()
def export(
    model_file: Path = typer.Argument(..., help="A .slim file."),
    fmt: str = typer.Option(..., "--format", help="onnx or torchscript."),
    out_file: Path = typer.Option(..., "--out", help="File to write (atomically, after checking it)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Write the decoded dense model as TorchScript or ONNX, checked against the model before it is kept."""
    from slimkit.export import export_file

    result = export_file(model_file, fmt, out_file, opset=opset).as_dict()
    if as_json:
        print(json.dumps(result))
        return
    check = (f"max |diff| {result['max_abs_diff']:.2e} via {result['verified_with']}"
             if result["max_abs_diff"] is not None else f"checked with {result['verified_with']}")
    out.print(f"wrote {out_file} ({result['bytes']:,} bytes, {fmt}, input [B, "
              f"{', '.join(map(str, result['input_shape']))}]); {check}", markup=False)
    for note in result["notes"]:
        out.print(f"note: {note}", markup=False)


@app.command()
def sensitivity(
    model: str = typer.Option("lenet300", help="Zoo name (baseline trained and cached as by compress) or .slim file."),
    data: str = typer.Option("digits", help="Data set; accuracies are on its validation split."),
    method: str = typer.Option("prune", "--method", "-m", help="prune or lowrank (any method with per-layer levels)."),
    levels: Optional[str] = typer.Option(None, help="Comma-separated levels in (0, 1) (default 0.1,...,0.9,0.95)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="Method option KEY=VALUE (e.g. keep_last=true)."),
    model_opt: Optional[List[str]] = typer.Option(None, "--model-opt", help="Zoo model option KEY=VALUE."),
    baseline_epochs: int = typer.Option(20, help="Epochs to train a zoo baseline."),
    seed: int = typer.Option(0, help="Seed of the split and the baseline."),
    batch_size: int = typer.Option(64, help="Batch size of the baseline's training."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output directory (default runs/sensitivity-<model>-<method>)."),
    finetune_steps: int = typer.Option(0, "--finetune-steps", min=0, help="Fine-tune each compressed copy (and the "
                                       "reference) for this many steps before measuring it (NetAdapt); 0: none."),
    finetune_lr: Optional[float] = typer.Option(None, "--finetune-lr", min=0.0, help="Rate of that fine-tuning "
                                                "(default a fifth of the base rate)."),
    quiet: bool = typer.Option(False, help="No progress output."),
):
    """Compress each layer alone at each level, measure validation accuracy (optionally after a short fine-tuning); resumable."""
    from slimkit.sensitivity import parse_levels
    from slimkit.sensitivity_run import run_command

    result = run_command(model=model, data=data, method=method, levels=parse_levels(levels), out=out_dir,
                         set_pairs=_pairs(set_, "--set"), model_options=_model_options(model_opt),
                         baseline_epochs=baseline_epochs, seed=seed, batch_size=batch_size, quiet=quiet,
                         finetune_steps=finetune_steps, finetune_lr=finetune_lr,
                         log=out.print if not quiet else (lambda _m: None))
    if not quiet:
        sens = result["sensitivity"]
        out.print(f"wrote {result['out']}/sensitivity.csv, sensitivity.json, sensitivity.svg "
                  f"({len(sens['layers'])} layers x {len(sens['levels'])} levels, {sens['cells_computed']} computed "
                  f"now, {sens['seconds']:.1f} s)", markup=False)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="The --out directory of a finished compress run."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Where to write (default RUN_DIR/report.html)."),
):
    """Write RUN_DIR/report.html again from the run's files (report.json, metrics.jsonl, model.slim...)."""
    from slimkit.reports import write_report

    out.print(f"wrote {write_report(run_dir, out_file)}", markup=False)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json")):
    """List compression methods and their options."""
    from slimkit.plugins import get_registry

    registry = get_registry()
    rows = [{**r.obj.describe(), "plugin": r.plugin} for r in sorted(registry.methods.values(), key=lambda r: r.name)]
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    for r in rows:
        out.print(f"[bold cyan]{r['name']}[/bold cyan]  {r['summary']}  [dim]({r['plugin']})[/dim]")
        if r["paper"]:
            out.print(f"  [dim]{r['paper']}[/dim]")
        table = Table(box=None, show_header=True, header_style="dim", padding=(0, 2), pad_edge=True)
        for col in ("option", "default", "allowed", "help"):
            table.add_column(col, overflow="fold", ratio=3 if col == "help" else None)
        for o in r["options"]:  # the engine's common options (epochs, lr) last, dimmed
            table.add_row(o["name"], str(o["default"]), o["allowed"], o["help"], style="dim" if o["common"] else None)
        out.print(table)
        out.print()


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json")):
    """List plugins, the distributions they come from, what they provide, and any that failed or are disabled."""
    from slimkit.plugins import get_registry

    registry = get_registry()
    contributed = {}
    for kind, table in (("method", registry.methods), ("model", registry.models), ("dataset", registry.datasets)):
        for r in table.values():
            contributed.setdefault(r.plugin, []).append(f"{kind}:{r.name}")
    rows = [{"plugin": p.name, "distribution": p.distribution, "version": p.version, "status": p.status,
             "error": p.error, "conflicts": p.conflicts, "provides": sorted(contributed.get(p.name, []))}
            for p in registry.plugins]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("plugin", "distribution", "version", "provides")
    for r in rows:
        if r["status"] == "disabled":
            provides = "[yellow]disabled (SLIMKIT_DISABLE_PLUGINS)[/yellow]"
        elif r["error"]:
            provides = f"[red]failed: {escape(r['error'])}[/red]"
        else:
            provides = ", ".join(r["provides"]) + "".join(f"\n[yellow]{escape(c)}[/yellow]" for c in r["conflicts"])
        table.add_row(r["plugin"], r["distribution"], r["version"], provides)
    out.print(table)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")):
    """Torch version, threads, device, the kernel backend in use, and plugins that failed or are disabled."""
    import platform

    import torch

    from slimkit.ops import backend
    from slimkit.plugins import get_registry

    registry = get_registry()
    rows = {
        "slimkit": __import__("slimkit").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "kernels": backend.backend_name(),
        "plugins": f"{sum(p.status == 'loaded' for p in registry.plugins)} loaded, "
                   f"{sum(p.status == 'failed' for p in registry.plugins)} failed, "
                   f"{sum(p.status == 'disabled' for p in registry.plugins)} disabled",
    }
    disabled = [f"{p.name} ({p.distribution})" for p in registry.plugins if p.disabled]
    if as_json:
        print(json.dumps({**rows, "plugin_problems": registry.problems(), "disabled_plugins": disabled}, indent=2))
        return
    for k, v in rows.items():
        out.print(f"{k:<10} {v}", markup=False)
    for line in registry.problems():
        out.print(f"problem    {line}", markup=False)
    for name in disabled:
        out.print(f"disabled   {name} (SLIMKIT_DISABLE_PLUGINS)", markup=False)


@app.command()
def run(
    model_file: Path = typer.Argument(..., help="A .slim file."),
    batch: int = typer.Option(1, "--batch", help="Examples per call."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads."),
    runs: int = typer.Option(50, "--runs", help="Timed calls (benchmark)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed calls first (benchmark)."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="Predict this .npy array instead of timing."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Save the predictions (.npy)."),
    backend: str = typer.Option("auto", "--backend", help="auto (measured), jit, freeze, compile, onnxruntime or eager."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Run a .slim model through slimkit's runtime: benchmark it against eager, or predict --input."""
    from slimkit.runtime.run import print_result, run_command

    result = run_command(model_file, batch=batch, threads=threads, runs=runs, warmup=warmup, input_file=input_file,
                         out_file=out_file, backend=backend)
    if as_json:
        print(json.dumps(result))
    else:
        print_result(result, out)


@bench_app.command("kernels")
def bench_kernels(
    op: Optional[List[str]] = typer.Option(None, "--op", help="Only these ops (kd_loss, gmm_prior, conv)."),
    as_json: bool = typer.Option(False, "--json"),
    quick: bool = typer.Option(False, help="Small shapes: a smoke test, not a measurement."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda: the CUDA kernels against cuDNN, cuBLAS, "
                               "cuSPARSE and compiled standard formulations."),
):
    """Time the native kernels against eager PyTorch and torch.compile, side by side."""
    from slimkit.bench import kernels_command

    kernels_command(ops=op, as_json=as_json, quick=quick, device=device)


@bench_app.command("models")
def bench_models(
    model: List[str] = typer.Option(..., "--model", help="NAME=FILE.slim (repeat); or a .slim file."),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="NAME=BASELINE.slim: also time ONNX Runtime "
                                                 "on the uncompressed model NAME was made from (repeat)."),
    threads: List[int] = typer.Option([1, 2], "--threads", help="Intra-op threads (repeat)."),
    batch: List[int] = typer.Option([1, 64], "--batch", help="Batch sizes (repeat)."),
    rounds: int = typer.Option(15, help="Interleaved timed rounds per cell."),
    candidates: str = typer.Option("jit,freeze,onnxruntime,eager",
                                   help="Runtime backends to choose among (comma-separated)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Whole .slim models: eager / torch.compile / ONNX Runtime dense against slimkit's runtime, interleaved."""
    from slimkit.bench.models import models_command, print_models
    from slimkit.runtime import BACKENDS

    pairs = []
    for item in model:
        name, sep, path = item.partition("=")
        pairs.append((name, path) if sep else (Path(item).stem, item))
    baselines = {}
    for item in baseline or []:
        name, sep, path = item.partition("=")
        if not sep or name not in dict(pairs):
            raise UserError(f"--baseline {item!r} is invalid: expected NAME=BASELINE.slim with NAME one of the "
                            f"--model names ({', '.join(n for n, _ in pairs)})")
        baselines[name] = path
    chosen = [c.strip() for c in candidates.split(",") if c.strip()]
    bad = [c for c in chosen if c not in BACKENDS]
    if bad or not chosen:
        raise UserError(f"--candidates {candidates!r} is invalid: expected some of {', '.join(BACKENDS)}")
    for flag, values in (("--threads", threads), ("--batch", batch), ("--rounds", [rounds])):
        if any(v < 1 for v in values):
            raise UserError(f"{flag} must be >= 1")
    result = models_command(pairs, threads=threads, batches=batch, rounds=rounds, candidates=chosen,
                            baselines=baselines)
    if as_json:
        print(json.dumps(result, default=str))
    else:
        print_models(result, out)


def _version() -> str:
    from slimkit import __version__

    return __version__


def main(argv: list[str] | None = None) -> None:
    from slimkit.train import Interrupted

    err = Console(stderr=True, highlight=False)
    from slimkit.reports.provenance import set_command

    set_command(sys.argv[1:] if argv is None else argv)  # recorded in report.json as the run's command
    try:
        code = app(args=argv, standalone_mode=False, prog_name="slimkit")
    except UserError as exc:
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as exc:
        err.print(f"{exc}", markup=False, soft_wrap=True)
        sys.exit(130)
    except click_exceptions.UsageError as exc:
        if type(exc).__name__.startswith("NoArgsIsHelp"):  # bare `slimkit`: show help
            print(exc.format_message())
            sys.exit(0)
        hint = f" (see `slimkit {exc.ctx.command.name} --help`)" if exc.ctx and exc.ctx.command.name != "slimkit" else ""
        err.print(f"error: {exc.format_message()}{hint}", markup=False, soft_wrap=True)
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        err.print(f"error: {exc.format_message()}", markup=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted; finished outputs are complete and nothing half-written was left", markup=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # the environment, not slimkit: a full disk, a read-only or missing path
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        err.print(f"error: {exc.strerror or exc}{where}; check the path, its permissions and the free space",
                  markup=False, soft_wrap=True)
        sys.exit(2)
    except MemoryError:
        err.print("error: out of memory; try a smaller --batch-size or model", markup=False)
        sys.exit(2)
    except Exception:  # a bug in slimkit: the one case that shows a traceback
        import traceback

        traceback.print_exc()
        err.print(f"slimkit {_version()} hit an internal error (a bug, not your input); please report it with the "
                  "traceback above and the command you ran", markup=False, soft_wrap=True)
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C inside a command into a silent Exit(130)
        err.print("interrupted; finished outputs are complete and nothing half-written was left", markup=False)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
