"""Structured pruning side by side with Torch-Pruning 1.6.1 (issue 11). A benchmark, never a runtime dependency:
Torch-Pruning is installed only to run it (``pip install --no-deps torch-pruning==1.6.1``).

``corpus``: for every model of tests/depgraph_corpus.py and the zoo models of tests/test_depgraph.py (small
widths), each dependency group of each tool in turn loses one channel on a fresh copy of the model, after that
channel was given zero effect (its producers' weights, biases, normalisation scale and shift set to zero), in
float64. Removal is exact when the pruned model's outputs equal the zeroed model's (1e-9). Torch-Pruning's group
is the one ``DependencyGraph.get_pruning_group`` gives for the group's root layer (``get_all_groups``, the layers
producing the model's output ignored, as its documentation does); slimkit's is a ``ChannelGraph`` group
(``build_graph`` / ``zero_channels`` / ``remove_channels``, as tests/test_depgraph.py checks them).

``finetune``: both tools prune the same cached baseline (the pipeline's ``baseline.slim``) to MACs <= a target with
the same importance criterion and scope, then fine-tune through the same ``ctx.train`` (same epochs, optimizer,
learning-rate schedule, seed): slimkit as its ``filter-prune`` method, Torch-Pruning as a method registered by
this script in this process only (ratio found by bisection on real pruned copies, as ``filter-prune macs=``
does). Both artifacts are written and evaluated by the pipeline; params and MACs are counted on the files loaded
back, latency at batch 1 and 64 is measured interleaved with the baseline (medians, 1 thread).

    python benchmarks/torch_pruning_compare.py corpus
    python benchmarks/torch_pruning_compare.py finetune --models resnet20,mobilenetv2,vit --baseline-epochs 10 \\
        --epochs 3 [--scope global] [--optimizer adam] [--data mnist:/work/shared/data/mnist] [--seeds 0,1,2] \\
        --json out.json [--tools slimkit] [--sk-set norm_over=filters]  # one tool; more filter-prune options
    python benchmarks/torch_pruning_compare.py table out.json ...       # mean over seeds
    python benchmarks/torch_pruning_compare.py latency runs/tp-compare/resnet20-l1-per-layer-s0   # re-time files
    python benchmarks/torch_pruning_compare.py pruned runs/tp-compare/mobilenetv2-l1-per-layer-s0 --scope global
        # the pruned networks before fine-tuning, BatchNorm statistics re-estimated (each norm_over, and TP)
"""
from __future__ import annotations

import argparse
import importlib.metadata
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch_pruning as tp  # noqa: E402

from slimkit.errors import UserError  # noqa: E402
from slimkit.models import count_params, zoo  # noqa: E402
from slimkit.nn.channels import remove_channels, zero_channels  # noqa: E402
from slimkit.nn.depgraph import build_graph  # noqa: E402

TOL = 1e-9


def one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:160]}"


# --------------------------------------------------------------------------- part A: the corpus

def corpus_models() -> dict:
    """name -> (factory returning a fresh model, input shape): the corpus, then the zoo at test sizes."""
    from depgraph_corpus import CORPUS
    from test_depgraph import ZOO
    models = {name: (factory, shape) for name, (factory, shape) in CORPUS.items()}
    for name, (shape, opts) in ZOO.items():
        if name in zoo.MODELS:
            models[f"zoo:{name}"] = (lambda n=name, s=shape, o=opts: zoo.MODELS[n][0](s, 5, seed=0, **o), shape)
    return models


def fresh(factory, shape, seed=1):
    from test_depgraph import prepared
    return prepared(factory(), shape, seed=seed)


def output_layers(model: nn.Module, x: torch.Tensor) -> list:
    """The modules whose output is the model's output (Torch-Pruning's users pass them as ignored_layers)."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, o))) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return [m for m, o in seen if isinstance(o, torch.Tensor) and o.data_ptr() == y.data_ptr()]


@torch.no_grad()
def tp_zero(dg, group) -> None:
    """Give the group's channels zero effect: every out-channel (producer) entry Torch-Pruning removes."""
    for dep, idxs in group:
        if not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        target = dep.target.module
        idx = torch.as_tensor(sorted(set(int(i) for i in idxs)), dtype=torch.long)
        if isinstance(target, nn.Parameter):
            target.index_fill_(dep.target.pruning_dim, idx, 0)
            continue
        for name in ("weight", "bias"):
            t = getattr(target, name, None)
            if isinstance(t, torch.Tensor):
                t.index_fill_(0 if t.dim() < 3 or not isinstance(target, nn.ConvTranspose2d) else 1, idx, 0)


def tp_groups(model, x):
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return dg, list(dg.get_all_groups(ignored_layers=output_layers(model, x)))


def tp_one_group(factory, shape, index: int) -> tuple[str, int, str]:
    """(root layer, channel, 'ok' or how removing that channel of Torch-Pruning's group ``index`` went wrong)."""
    model, x = fresh(factory, shape)
    dg, groups = tp_groups(model, x)
    root = groups[index][0].dep
    channel = dg.get_out_channels(root.target.module) - 1
    group = dg.get_pruning_group(root.target.module, root.handler, [channel])
    layer = next(n for n, m in model.named_modules() if m is root.target.module)
    tp_zero(dg, group)
    with torch.no_grad():
        y_zero = model(x)
    before = count_params(model)
    try:
        group.prune()
    except Exception as exc:  # noqa: BLE001 -- every failure is a result here
        return layer, channel, f"crashed in prune ({one_line(exc)})"
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:  # noqa: BLE001
        return layer, channel, f"pruned model does not run ({one_line(exc)})"
    if y.shape != y_zero.shape:
        return layer, channel, f"output shape {tuple(y.shape)} != {tuple(y_zero.shape)}"
    diff = float((y - y_zero).abs().max())
    if diff > TOL:
        return layer, channel, f"mis-pruned, max |diff| {diff:.3g}"
    return layer, channel, "ok" if count_params(model) < before else "nothing removed"


def sk_remove_exact(model, x, graph, atom) -> str:
    """Zero ``atom``, remove it; 'exact', 'refused: ...' or 'NOT EXACT ...'."""
    zero_channels(graph, {atom})
    with torch.no_grad():
        y_zero = model(x)
    before = count_params(model)
    try:
        pruned = remove_channels(model, graph, {atom}, x)
    except (UserError, ValueError) as exc:
        return f"refused: {one_line(exc)}"
    with torch.no_grad():
        y = pruned(x)
    diff = float((y - y_zero).abs().max()) if y.shape == y_zero.shape else float("inf")
    if diff > TOL:
        return f"NOT EXACT, max |diff| {diff:.3g}"
    return "exact" if count_params(pruned) < before else "nothing removed"


def sk_same_channel(factory, shape, layer: str, channel: int) -> str:
    """slimkit on the channel Torch-Pruning got wrong: output channel ``channel`` of ``layer``."""
    model, x = fresh(factory, shape)
    try:
        graph = build_graph(model, x)
    except UserError as exc:
        return f"refused: {one_line(exc)}"
    rec = graph.params[id(model.get_submodule(layer).weight)]
    atom = graph.root(int(rec.labels[0][channel]))
    return sk_remove_exact(model, x, graph, atom)


def sk_one_group(factory, shape, index: int) -> str:
    """'exact', or what went wrong removing the last atom of slimkit's group ``index``."""
    model, x = fresh(factory, shape)
    graph = build_graph(model, x)
    return sk_remove_exact(model, x, graph, graph.groups[index].atoms[-1])


def summarize(results: list[str], good: str) -> str:
    bad = [(i, r) for i, r in enumerate(results) if r != good]
    if not results:
        return "no groups"
    if not bad:
        return f"{good} ({len(results)}/{len(results)})"
    first_i, first = bad[0]
    return f"{len(results) - len(bad)}/{len(results)} {good}; group {first_i}: {first}" + (
        f" (+{len(bad) - 1} more)" if len(bad) > 1 else "")


def corpus(args) -> None:
    models = corpus_models()
    names = [n for n in models if not args.models or n in args.models.split(",")]
    rows, details, wrong = [], [], []
    for name in names:
        factory, shape = models[name]
        t0 = time.perf_counter()
        try:
            model, x = fresh(factory, shape)
            _, groups = tp_groups(model, x)
            tp_full = [tp_one_group(factory, shape, i) for i in range(len(groups))]
            tp_res = [f"root {layer}: {verdict}" if verdict != "ok" else "ok" for layer, _, verdict in tp_full]
            tp_cell, tp_n = summarize(tp_res, "ok"), len(groups)
            for i, (layer, channel, verdict) in enumerate(tp_full):
                if verdict != "ok":  # the same channel through slimkit
                    wrong.append((name, i, f"{layer}[{channel}]", verdict,
                                  sk_same_channel(factory, shape, layer, channel)))
        except Exception as exc:  # noqa: BLE001
            tp_res, tp_cell, tp_n = [], f"crashed building the graph ({one_line(exc)})", "-"
        try:
            model, x = fresh(factory, shape)
            graph = build_graph(model, x)
            idx = [g.index for g in graph.groups if len(g.atoms) >= 2]  # a one-atom group cannot lose its last atom
            sk_res = [sk_one_group(factory, shape, i) for i in idx]
            sk_cell, sk_n = summarize(sk_res, "exact"), f"{len(graph.groups)} ({len(idx)} with 2+)"
        except UserError as exc:
            sk_res, sk_cell, sk_n = [], f"refused: {one_line(exc)}", "-"
        rows.append((name, tp_n, tp_cell, sk_n, sk_cell))
        details.append({"model": name, "torch_pruning": tp_res, "slimkit": sk_res})
        print(json.dumps({"model": name, "seconds": round(time.perf_counter() - t0, 1), "tp": tp_cell,
                          "slimkit": sk_cell}), flush=True)
    print()
    print("| model | TP groups | Torch-Pruning 1.6.1 (one channel per group) | slimkit groups | slimkit |")
    print("|---|---:|---|---:|---|")
    for r in rows:
        print("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    print()
    print("| model | TP group | channel (root layer's output) | Torch-Pruning 1.6.1 | slimkit on the same channel |")
    print("|---|---:|---|---|---|")
    for r in wrong:
        print("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": details, "torch_pruning_wrong": wrong}, indent=1))


# --------------------------------------------------------------------------- part B: fine-tuned comparison

TP_IMPORTANCE = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1), "bn-scale": tp.importance.BNScaleImportance}


def _vit_attention(model):
    from slimkit.models.vit import Attention
    return [m for m in model.modules() if isinstance(m, Attention)]


def tp_prune(model, example, importance, scope, ratio, round_to=1):
    """Torch-Pruning's MetaPruner at one ``ratio`` on ``model`` in place (one step), configured as its ViT example
    is: the classifier ignored; q, k, v given their head counts, whole heads pruned, head dims kept."""
    heads = {}
    for att in _vit_attention(model):
        n = att.q.out_features // att.head_dim
        heads.update({att.q: n, att.k: n, att.v: n})
    kw = dict(num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio) if heads else {}
    pruner = tp.pruner.MetaPruner(model, example, importance=TP_IMPORTANCE[importance](),
                                  global_pruning=scope == "global", pruning_ratio=ratio,
                                  ignored_layers=output_layers(model, example),
                                  round_to=round_to if round_to > 1 else None, **kw)
    pruner.step()
    return model


def tp_to_macs(model, example, importance, scope, target, macs, round_to=1):
    """Torch-Pruning on a copy of ``model`` at the least ratio with ``macs(pruned) <= target`` (the same bisection as
    filter-prune macs=); returns (pruned model, ratio)."""
    def trial(ratio):
        return tp_prune(copy.deepcopy(model).eval(), example, importance, scope, ratio, round_to)

    lo, hi = 0.0, 0.95
    if macs(trial(hi)) <= target:
        for _ in range(10):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if macs(trial(mid)) <= target else (mid, hi)
    return trial(hi), hi


def refresh_spec_args(model) -> None:
    """Torch-Pruning changes layer sizes that the zoo's ViT modules also keep as constructor arguments (slimkit's
    pruning never changes these: it locks LayerNorm dims and keeps head_dim); rewrite them from the layers so that
    the saved file rebuilds at the pruned sizes. The rebuilt children come from the file either way."""
    from slimkit.models.vit import Attention, Block, LayerNorm, ViT
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m._spec_args["dim"] = int(m.normalized_shape[0])
        elif isinstance(m, Attention):
            m._spec_args.update(dim=m.q.out_features, heads=m.q.out_features // m.head_dim)
        elif isinstance(m, Block):
            m._spec_args.update(dim=m.attn.q.out_features, heads=m.attn.q.out_features // m.attn.head_dim,
                                hidden=m.fc1.out_features)
        elif isinstance(m, ViT):
            m._spec_args.update(dim=m.patch_embed.out_channels, heads=1)  # heads: only for the placeholder blocks


def make_tp_method():
    from slimkit.api import Method, Option
    from slimkit.models import count_macs

    class TorchPruning(Method):
        name = "torch-pruning"
        summary = "Torch-Pruning 1.6.1 MetaPruner to a MACs target (benchmark only), then the same fine-tuning."
        paper = "G. Fang et al. DepGraph: Towards Any Structural Pruning. CVPR 2023."
        options = [Option("macs", float, 0.5, "prune until MACs <= macs x the baseline's", min=0.05, max=1.0),
                   Option("importance", str, "l1", "l1 (GroupMagnitudeImportance p=1) or bn-scale (BNScaleImportance)",
                          choices=tuple(TP_IMPORTANCE)),
                   Option("scope", str, "per-layer", "per-layer or global (global_pruning)",
                          choices=("per-layer", "global")),
                   Option("round_to", int, 1, "MetaPruner's round_to (1 = None)", min=1, max=256)]

        def apply(self, model, ctx, opts):
            shape = tuple(ctx.data.input_shape)
            example = torch.zeros(2, *shape)
            macs = lambda m: count_macs(m, shape)["dense"]  # noqa: E731 -- slimkit's counter for both tools
            before, params_before = macs(model), count_params(model)
            target = opts["macs"] * before
            model, hi = tp_to_macs(model, example, opts["importance"], opts["scope"], target, macs, opts["round_to"])
            refresh_spec_args(model)
            ctx.log(f"torch-pruning: ratio {hi:.4f}, MACs {macs(model) / before:.1%}, "
                    f"params {count_params(model) / params_before:.1%}")
            val_before = ctx.evaluate(model, "val")
            ctx.train(model, epochs=opts["epochs"] if opts["epochs"] is not None else ctx.epochs, lr=opts["lr"])
            ctx.record(ratio=hi, macs_before=before, macs_after=macs(model), params_before=params_before,
                       params_after=count_params(model), macs_target_reached=macs(model) <= target,
                       val_accuracy_before_finetune=val_before)
            return model

    return TorchPruning()


def run_tool(tool, model, model_options, args, seed, importance, scope):
    from slimkit.pipeline import Run, RunConfig
    from slimkit.plugins import Registered, get_registry
    registry = get_registry()
    if "torch-pruning" not in registry.methods:
        registry.methods["torch-pruning"] = Registered("torch-pruning", make_tp_method(), "", "benchmark")
    method = "filter-prune" if tool == "slimkit" else "torch-pruning"
    extra = dict(kv.split("=", 1) for kv in args.sk_set.split(",") if kv) if tool == "slimkit" else {}
    tag = "".join(f"-{k}={v}" for k, v in extra.items())
    out = Path(args.out) / f"{model}-{importance}-{scope}-s{seed}-{tool}{tag}"
    cfg = RunConfig(model=model, model_options=model_options, data=args.data, methods=[method],
                    options={method: {"macs": args.macs, "importance": importance, "scope": scope,
                                      "round_to": args.round_to, **extra}},
                    epochs=args.epochs, baseline_epochs=args.baseline_epochs, seed=seed, quiet=True, latency=False,
                    optimizer=args.optimizer, lr=args.lr,
                    out=str(out))
    t0 = time.perf_counter()
    try:
        report = Run(cfg).execute()
    except Exception as exc:  # noqa: BLE001 -- a tool that fails is a result
        return {"tool": tool, "error": one_line(exc)}
    return {"tool": tool, "out": str(out), "report": report, "seconds": time.perf_counter() - t0}


def measure(results, shape, args):
    """Params, MACs and latency of the files on disk: baseline, slimkit's and Torch-Pruning's, interleaved."""
    from slimkit import storage
    from slimkit.bench.timing import interleaved_times
    from slimkit.models import count_macs
    from slimkit.plugins import get_registry
    ok = [r for r in results if "report" in r]
    if not ok:
        return {}
    models = {"baseline": storage.load_model(Path(ok[0]["out"]) / "baseline.slim", get_registry()).model.eval()}
    for r in ok:
        models[r["tool"]] = storage.load_model(Path(r["out"]) / "model.slim", get_registry()).model.eval()
    stats = {k: {"params": count_params(m), "macs": count_macs(m, shape)["dense"]} for k, m in models.items()}
    torch.set_num_threads(1)
    for bs, repeats in ((1, args.repeats), (64, max(5, args.repeats // 4))):
        x = torch.randn(bs, *shape)
        with torch.inference_mode():
            times = interleaved_times({k: (lambda m=m: m(x)) for k, m in models.items()}, warmup=3, repeats=repeats)
        for k, v in times.items():
            stats[k][f"ms_b{bs}"] = statistics.median(v)
    return stats


def finetune(args) -> None:
    rows = []
    opts_of = {"resnet20": {}, "resnet56": {}, "mobilenetv2": {}, "vit": {}}
    for model in args.models.split(","):
        for importance in args.importance.split(","):
            if importance == "bn-scale" and model == "vit":
                print(json.dumps({"model": model, "importance": importance, "skipped": "no BatchNorm to score"}))
                continue
            for scope in args.scope.split(","):
                for seed in [int(s) for s in args.seeds.split(",")]:
                    results = [run_tool(t, model, opts_of.get(model, {}), args, seed, importance, scope)
                               for t in args.tools.split(",")]
                    ok = [r for r in results if "report" in r]
                    rep = ok[0]["report"] if ok else None
                    shape = None
                    if ok:
                        from slimkit.data import load_data
                        from slimkit.plugins import get_registry
                        shape = tuple(load_data(args.data, get_registry().datasets, seed=seed).input_shape)
                    stats = measure(results, shape, args) if ok else {}
                    row = {"model": model, "importance": importance, "scope": scope, "seed": seed,
                           "data": rep["dataset"]["description"] if rep else args.data,
                           "baseline_acc": rep["baseline"]["accuracy"] if rep else None,
                           "baseline": stats.get("baseline")}
                    if args.sk_set:
                        row["slimkit_options"] = args.sk_set
                    for r in results:
                        row[r["tool"]] = {"error": r["error"]} if "error" in r else {
                            "acc": r["report"]["final"]["accuracy"], **stats[r["tool"]],
                            "val_before_ft": r["report"]["stages"][0].get("val_accuracy_before_finetune"),
                            "ratio": r["report"]["stages"][0].get("ratios", [r["report"]["stages"][0].get("ratio")]),
                            "seconds": round(r["seconds"], 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print()
    print(f"{platform.machine()}, torch {torch.__version__}, Torch-Pruning {importlib.metadata.version('torch-pruning')}, "
          f"{args.optimizer}, baseline {args.baseline_epochs} epochs, fine-tuning {args.epochs} epochs, "
          f"MACs <= {args.macs:.0%}; "
          f"latency: medians, 1 thread, interleaved with the baseline")
    print()
    print("| model | importance | scope | seed | tool | test acc. | params | MACs | batch-1 ms | batch-64 ms |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        b = r["baseline"] or {}
        cells = [("baseline", {"acc": r["baseline_acc"], **b})] + [(t, r[t]) for t in ("slimkit", "torch-pruning")
                                                                    if t in r]
        for tool, c in cells:
            if "error" in c:
                line = [tool, c["error"], "", "", "", ""]
            else:
                line = [tool, f"{100 * c['acc']:.2f} %", f"{c.get('params', 0):,}", f"{c.get('macs', 0):,}",
                        f"{c.get('ms_b1', float('nan')):.3f}", f"{c.get('ms_b64', float('nan')):.2f}"]
            print(f"| {r['model']} | {r['importance']} | {r['scope']} | {r['seed']} | " + " | ".join(line) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))



def latency(args) -> None:
    """Re-time finished runs (``OUT/MODEL-...-slimkit`` and ``...-torch-pruning`` pairs) with more rounds."""
    from slimkit.data import load_data
    from slimkit.plugins import get_registry
    shape = tuple(load_data(args.data, get_registry().datasets, seed=0).input_shape)
    print("| run | baseline b1 | slimkit b1 | Torch-Pruning b1 | baseline b64 | slimkit b64 | Torch-Pruning b64 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for prefix in args.runs:
        st = measure([{"tool": t, "out": f"{prefix}-{t}", "report": None} for t in ("slimkit", "torch-pruning")],
                     shape, args)
        cols = [f"{st[k]['ms_b1']:.3f}" for k in ("baseline", "slimkit", "torch-pruning")] + [
            f"{st[k]['ms_b64']:.2f}" for k in ("baseline", "slimkit", "torch-pruning")]
        print(f"| {Path(prefix).name} | " + " | ".join(cols) + " |", flush=True)


@torch.no_grad()
def recalibrated_accuracy(model, data) -> float:
    """Test accuracy of a copy of ``model`` after its BatchNorm statistics are re-estimated on the train split
    (cumulative averages, no gradient step)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for x, _ in data.batches("train", 128, augment=False):
        model(x)
    model.eval()
    right = total = 0
    for x, y in data.batches("test", 256):
        right += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return right / total


def pruned(args) -> None:
    """The pruned networks without fine-tuning: each run's baseline pruned to the MACs target by filter-prune (each
    ``--norm-over``) and by Torch-Pruning, l1, BatchNorm statistics re-estimated, test accuracy."""
    import re

    from slimkit import storage
    from slimkit.data import load_data
    from slimkit.models import count_macs
    from slimkit.plugins import get_registry
    from slimkit_plugins import filter_prune as fp
    rows = []
    for prefix in args.runs:
        seed = int(re.search(r"-s(\d+)$", prefix).group(1))
        base = storage.load_model(f"{prefix}-slimkit/baseline.slim", get_registry()).model.eval()
        data = load_data(args.data, get_registry().datasets, seed=seed)
        shape = tuple(data.input_shape)
        macs = lambda m: count_macs(m, shape)["dense"]  # noqa: E731
        target = args.macs * macs(base)
        row = {"run": prefix, "seed": seed, "scope": args.scope, "baseline": recalibrated_accuracy(base, data)}
        for over in args.norm_over.split(","):
            model, ratio = fp.prune_to_macs(base, shape, target, importance="l1", scope=args.scope, norm_over=over)
            row[over] = {"acc": recalibrated_accuracy(model, data), "ratio": ratio, "params": count_params(model)}
        model, ratio = tp_to_macs(base, torch.zeros(2, *shape), "l1", args.scope, target, macs)
        row["torch-pruning"] = {"acc": recalibrated_accuracy(model, data), "ratio": ratio,
                                "params": count_params(model)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def table(args) -> None:
    """Mean over seeds of the rows in one or more ``finetune --json`` files (test accuracy with its spread)."""
    rows = [r for f in args.files for r in json.loads(Path(f).read_text())]
    cells: dict = {}
    for r in rows:
        for tool in ("baseline", "slimkit", "torch-pruning"):
            c = {"acc": r["baseline_acc"], **(r["baseline"] or {})} if tool == "baseline" else r.get(tool)
            if c is not None and "error" not in c:
                label = f"{tool} ({r['slimkit_options']})" if tool == "slimkit" and r.get("slimkit_options") else tool
                cells.setdefault((r["model"], r["importance"], r["scope"], label), []).append(c)
    print("| model | importance | scope | tool | seeds | test acc. (mean +- sd) | params | MACs | batch-1 ms | "
          "batch-64 ms |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for (model, imp, scope, tool), cs in cells.items():
        accs = [100 * c["acc"] for c in cs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        med = lambda k: statistics.median(c[k] for c in cs)  # noqa: E731
        print(f"| {model} | {imp} | {scope} | {tool} | {len(cs)} | {statistics.mean(accs):.2f} +- {sd:.2f} % | "
              f"{med('params'):,.0f} | {med('macs'):,.0f} | {med('ms_b1'):.3f} | {med('ms_b64'):.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("corpus", help="one channel per dependency group, exactness of both tools")
    a.add_argument("--models", default="", help="comma-separated names (default: all)")
    a.add_argument("--json", default="", help="write every group's result here")
    b = sub.add_parser("finetune", help="equal MACs, importance and fine-tuning; accuracy, size, latency")
    b.add_argument("--models", default="resnet20,mobilenetv2,vit")
    b.add_argument("--data", default="digits", help="digits (sklearn 8x8) or mnist:/work/shared/data/mnist")
    b.add_argument("--baseline-epochs", type=int, default=10)
    b.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (both tools)")
    b.add_argument("--macs", type=float, default=0.5, help="MACs target, a fraction of the baseline's")
    b.add_argument("--importance", default="l1,bn-scale")
    b.add_argument("--scope", default="per-layer")
    b.add_argument("--seeds", default="0")
    b.add_argument("--optimizer", default="sgd", help="baseline and fine-tuning optimizer (sgd, adam)")
    b.add_argument("--lr", type=float, default=None, help="base learning rate (default: the optimizer's)")
    b.add_argument("--repeats", type=int, default=40, help="timed batch-1 rounds (batch 64: a quarter)")
    b.add_argument("--out", default="runs/tp-compare")
    b.add_argument("--tools", default="slimkit,torch-pruning", help="which of the two to run")
    b.add_argument("--sk-set", default="", help="more filter-prune options, e.g. norm_over=filters")
    b.add_argument("--round-to", type=int, default=1, help="channel multiple for both tools (slimkit's round_to, "
                   "MetaPruner's round_to); 1 = exact counts, so that both reach the MACs target as closely")
    b.add_argument("--json", default="")
    d = sub.add_parser("latency", help="re-time finished finetune runs, interleaved, more rounds")
    d.add_argument("runs", nargs="+", help="OUT/MODEL-IMPORTANCE-SCOPE-sSEED (without -slimkit/-torch-pruning)")
    d.add_argument("--data", default="digits")
    d.add_argument("--repeats", type=int, default=200)
    e = sub.add_parser("pruned", help="accuracy of the pruned networks before fine-tuning (BatchNorm re-estimated)")
    e.add_argument("runs", nargs="+", help="OUT/MODEL-IMPORTANCE-SCOPE-sSEED of finetune runs (their baseline.slim)")
    e.add_argument("--scope", default="per-layer")
    e.add_argument("--norm-over", default="group,group-all,filters", help="filter-prune norm_over values")
    e.add_argument("--macs", type=float, default=0.5)
    e.add_argument("--data", default="digits")
    e.add_argument("--json", default="")
    c = sub.add_parser("table", help="mean over seeds of finetune --json files")
    c.add_argument("files", nargs="+")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # Torch-Pruning warns on every graph it builds
    torch.set_num_threads(int(os.environ.get("TP_COMPARE_THREADS", "1")))
    {"corpus": corpus, "finetune": finetune, "latency": latency, "pruned": pruned, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
