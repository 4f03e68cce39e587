"""Uniform layer-wise pruning against allocation=sensitivity, same target, same fine-tuning.

For every seed and every number of fine-tuning epochs, two `slimkit compress` runs from
the same cached baseline: `prune` one-shot to SPARSITY with every layer at SPARSITY
(uniform), and with per-layer sparsities chosen from the one-layer sensitivity of the
baseline (allocation=sensitivity; slimkit/allocation.py). Runs already finished in OUT
are read, not repeated. Prints a markdown table (mean and spread over seeds) for
docs/BENCHMARKS.md.

    python benchmarks/allocation_table.py --data mnist:../shared/data/mnist --epochs 5,1,0 --seeds 0,1,2
"""
import argparse
import json
import statistics
from pathlib import Path

from slimkit.pipeline import Run, RunConfig


def run(args, mode: str, seed: int, epochs: int) -> dict:
    out = Path(args.out) / (f"{mode}-{seed}" if epochs == args.main_epochs else f"e{epochs}-{mode}-{seed}")
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    cfg = RunConfig(model=args.model, data=args.data, methods=["prune"], seed=seed, epochs=epochs,
                    options={"prune": {"sparsity": args.sparsity, "schedule": "oneshot", "allocation": mode}},
                    baseline_epochs=args.baseline_epochs, quiet=True, latency=False, out=str(out))
    return Run(cfg).execute()


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * sd:.2f} %"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet300")
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--epochs", default="5,1,0", help="fine-tuning epochs to compare (comma-separated)")
    ap.add_argument("--main-epochs", type=int, default=5, help="runs with these epochs are named MODE-SEED")
    ap.add_argument("--baseline-epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="runs/allocation-table")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print("| fine-tuning epochs | allocation | test accuracy (mean ± sd) | per seed | val. acc. before "
          "fine-tuning | achieved sparsity | levels fc1 / fc2 / fc3 (seed 0) |")
    print("|---:|---|---:|---|---:|---:|---|")
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for mode in ("uniform", "sensitivity"):
            reports = [run(args, mode, s, epochs) for s in seeds]
            accs = [r["final"]["accuracy"] for r in reports]
            before = [r["stages"][0].get("val_accuracy_before_finetune") for r in reports]
            levels = reports[0]["stages"][0].get("allocation", {}).get("levels")
            shown = " / ".join(f"{v:g}" for v in levels.values()) if levels else f"{args.sparsity:g} each"
            print(f"| {epochs} | {mode} | {spread(accs)} | {', '.join(f'{100 * a:.2f}' for a in accs)} | "
                  f"{spread(before) if None not in before else '–'} | "
                  f"{statistics.mean(r['final']['sparsity'] for r in reports):.4f} | {shown} |")
    b = [r["baseline"]["accuracy"] for r in (run(args, "uniform", s, args.main_epochs) for s in seeds)]
    print(f"\nbaselines: {spread(b)} ({', '.join(f'{100 * a:.2f}' for a in b)})")


if __name__ == "__main__":
    main()
