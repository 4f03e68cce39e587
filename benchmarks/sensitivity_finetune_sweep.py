"""How long a short-term fine-tuning makes the one-layer sensitivity predict the final accuracy?

For LeNet-300-100 on the MNIST split and each seed, every one-layer-pruned copy of the
cached baseline (the 15 allocation levels x 3 layers, and the unpruned model) is fine-tuned
with :meth:`slimkit.train.Trainer.short_finetune` (NetAdapt's short-term fine-tuning, at the
prune stage's rate) and measured on the validation split after each of STEPS optimizer
steps, by accuracy and by cross-entropy, in one pass. Each (steps, measure) gives a
sensitivity.json (for the loss, "accuracy" holds minus the loss, so that the drop the
knapsack minimises is the rise in loss); then `prune` at the target runs with each file
(`--set sensitivity=FILE`, same schedule and epochs as the uniform arm) and the table
compares the test accuracies of the saved artifacts. Cells and runs already finished in
OUT are read back.

    python benchmarks/sensitivity_finetune_sweep.py --data mnist:../shared/data/mnist --seeds 0,1,2
"""
import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from allocation_oracle import common_args, compress
from slimkit.allocation import ALLOCATION_LEVELS, allocate
from slimkit.pipeline import Run, RunConfig


@torch.no_grad()
def measure(model, data) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the validation split."""
    was = model.training
    model.eval()
    correct = loss = n = 0.0
    for x, y in data.batches("val", 512, shuffle=False, augment=False):
        logits = model(x)
        correct += float((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        n += y.numel()
    model.train(was)
    return correct / n, loss / n


def cells_for_seed(args, seed: int, milestones: list[int]) -> dict:
    """{(layer, level): {steps: (acc, loss)}} with ("", 0.0) the unpruned model; resumable."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"cells-s{seed}-lr{args.lr:g}.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            c = json.loads(line)
            done[(c["layer"], c["level"])] = {int(k): tuple(v) for k, v in c["m"].items()}
    run = Run(RunConfig(model="lenet300", data=args.data, methods=["prune"], seed=seed, quiet=True, latency=False,
                        baseline_epochs=args.baseline_epochs, out=str(out / f"base-s{seed}")))
    (out / f"base-s{seed}" / ".work").mkdir(parents=True, exist_ok=True)
    base, _ = run.baseline(out / f"base-s{seed}" / ".work" / "metrics.jsonl")
    base.eval()
    method = run.registry.method("prune")
    opts = method.parse_options({})
    trainer = run.trainer(False)
    layers = method.sensitivity_layers(base, opts)
    todo = [("", 0.0)] + [(n, lv) for n in layers for lv in ALLOCATION_LEVELS]
    with open(path, "a") as log:
        for name, level in todo:
            if all(m in done.get((name, level), {}) for m in [0, *milestones]):
                continue  # measured earlier at every length asked for
            work = copy.deepcopy(base) if not name else method.compress_layer(copy.deepcopy(base), name, level, opts)
            got = {0: measure(work, run.bundle)}

            def after(step, work=work, got=got):
                if step in milestones:
                    got[step] = measure(work, run.bundle)

            trainer.short_finetune(work, run.bundle, max(milestones), args.lr, after_step=after)
            done[(name, level)] = got
            log.write(json.dumps({"layer": name, "level": level, "m": got}) + "\n")
            log.flush()
    return {"cells": done, "layers": layers}


def sensitivity_file(args, seed: int, table: dict, steps: int, measure_name: str) -> Path:
    """A sensitivity.json from the cells at ``steps`` by ``measure_name`` (acc, or loss as minus the loss)."""
    pick = (lambda m: m[0]) if measure_name == "acc" else (lambda m: -m[1])
    cells, layers = table["cells"], table["layers"]
    sens = {"method": "prune", "levels": list(ALLOCATION_LEVELS), "layers": list(layers),
            "weights": [layers[n] for n in layers], "baseline_accuracy": pick(cells[("", 0.0)][steps]),
            "accuracy": [[pick(cells[(n, lv)][steps]) for lv in ALLOCATION_LEVELS] for n in layers],
            "finetune_steps": steps, "note": f"{measure_name} after {steps} fine-tuning steps at lr {args.lr:g}"}
    path = Path(args.out) / f"sens-s{seed}-k{steps}-{measure_name}-lr{args.lr:g}.json"
    path.write_text(json.dumps(sens))
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap, "runs/sens-finetune-sweep")
    ap.add_argument("--lr", type=float, default=0.05, help="short fine-tuning rate (prune's stage rate)")
    ap.add_argument("--steps", default="50,100,200,400")
    ap.add_argument("--measures", default="acc,loss")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    milestones = [int(s) for s in args.steps.split(",")]
    tables = {s: cells_for_seed(args, s, milestones) for s in seeds}
    uniform = [compress(args, "uniform", s, {})["final"]["accuracy"] for s in seeds]
    print(f"| short fine-tuning | measure | test accuracy (mean ± sd) | per seed | minus uniform | "
          f"levels fc1 / fc2 / fc3 per seed |")
    print("|---|---|---:|---|---|---|")
    print(f"| (uniform) | – | {100 * statistics.mean(uniform):.2f} ± {100 * statistics.stdev(uniform):.2f} % | "
          f"{', '.join(f'{100 * a:.2f}' for a in uniform)} | – | 0.95 each |", flush=True)
    for steps in sorted({0, *milestones}):
        for m in args.measures.split(","):
            accs, shown = [], []
            for s in seeds:
                f = sensitivity_file(args, s, tables[s], steps, m)
                levels = allocate(json.loads(f.read_text()), args.sparsity, tables[s]["layers"])["levels"]
                shown.append(" / ".join(f"{v:g}" for v in levels.values()))
                r = compress(args, f"k{steps}-{m}-lr{args.lr:g}", s,
                             {"allocation": "sensitivity", "sensitivity": str(f.resolve())})
                accs.append(r["final"]["accuracy"])
            diff = ", ".join(f"{100 * (a - b):+.2f}" for a, b in zip(accs, uniform))
            print(f"| {steps} steps | {m} | {100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f} % | "
                  f"{', '.join(f'{100 * a:.2f}' for a in accs)} | {diff} | {'; '.join(shown)} |", flush=True)


if __name__ == "__main__":
    main()
