"""Gradual (Zhu & Gupta 2017) against one-shot magnitude pruning of LeNet-300-100.

Every cell is a full `slimkit compress` run from the same cached baseline (same seed,
same fine-tuning epochs); accuracies are test-split accuracies of the saved artifacts.
Prints a markdown table for docs/BENCHMARKS.md.

    python benchmarks/prune_table.py --data mnist:../shared/data/mnist --epochs 8
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from slimkit.pipeline import Run, RunConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet300")
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--baseline-epochs", type=int, default=20)
    ap.add_argument("--levels", default="0.5,0.75,0.875,0.95")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/prune-table")
    args = ap.parse_args()
    rows = []
    for level in [float(x) for x in args.levels.split(",")]:
        for schedule in ("oneshot", "gradual"):
            t0 = time.perf_counter()
            cfg = RunConfig(model=args.model, data=args.data, methods=["prune"],
                            options={"prune": {"sparsity": level, "schedule": schedule}}, epochs=args.epochs,
                            baseline_epochs=args.baseline_epochs, seed=args.seed, quiet=True,
                            out=f"{args.out}/{schedule}-{level}")
            report = Run(cfg).execute()
            rows.append((level, schedule, report, time.perf_counter() - t0))
            print(json.dumps({"sparsity": level, "schedule": schedule, "baseline": report["baseline"]["accuracy"],
                              "final": report["final"]["accuracy"], "achieved": report["final"]["sparsity"],
                              "ratio": report["compression_ratio"]}), flush=True)
    rep = rows[0][2]
    print()
    print(f"{args.model} on {rep['dataset']['description']}; fine-tuning {args.epochs} epochs per run, "
          f"baseline {args.baseline_epochs} epochs, seed {args.seed}; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")
    print()
    print("| target sparsity | schedule | achieved sparsity | baseline acc. | final acc. | change | file size | ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for level, schedule, r, _ in rows:
        b, f = r["baseline"], r["final"]
        print(f"| {level:.3f} | {schedule} | {f['sparsity']:.4f} | {100 * b['accuracy']:.2f} % | "
              f"{100 * f['accuracy']:.2f} % | {100 * (f['accuracy'] - b['accuracy']):+.2f} pt | "
              f"{f['size_bytes']:,} B | {r['compression_ratio']:.1f}x |")


if __name__ == "__main__":
    main()
