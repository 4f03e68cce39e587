"""Does any per-layer allocation beat uniform pruning after the same fine-tuning? An oracle grid.

For LeNet-300-100 at a global target (default 0.95), fc2 and fc3 take every pair of
levels of a small grid and fc1 takes the least level that, with them, removes at least
``ceil(target x weights)`` of all the weights (fc1 holds 88 % of them, so it is pinned
to 0.945-0.99 at 0.95). Each point is one `slimkit compress` run of `prune` (same
schedule, epochs and learning rate as the uniform arm, same cached baseline per seed)
with the engine's per-layer budgets replaced by the fixed levels; the accuracy is that
of the saved artifact on the test split. Runs already finished in OUT are read back.

    python benchmarks/allocation_oracle.py --data mnist:../shared/data/mnist --seeds 0,1,2 \
        --fc2 0.8,0.9,0.95,0.99 --fc3 0.5,0.8,0.95
"""
import argparse
import json
import math
import statistics
from pathlib import Path

import slimkit.pipeline as pipeline
from slimkit.allocation import removed_count
from slimkit.pipeline import Run, RunConfig

LENET300 = {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}


def levels_for(target: float, fc2: float, fc3: float) -> dict:
    """fc1 at the least multiple of 1e-4 that meets ``target`` with fc2, fc3 as given."""
    need = removed_count(sum(LENET300.values()), target)
    rest = need - removed_count(LENET300["fc2"], fc2) - removed_count(LENET300["fc3"], fc3)
    fc1 = math.ceil(1e4 * rest / LENET300["fc1"]) / 1e4
    while removed_count(LENET300["fc1"], fc1) < rest:  # float rounding of the division
        fc1 = round(fc1 + 1e-4, 4)
    return {"fc1": fc1, "fc2": fc2, "fc3": fc3}


def compress(args, name: str, seed: int, extra: dict, levels: dict | None = None) -> dict:
    """The report of `prune` at ``args.sparsity`` with the options ``extra`` (and, with ``levels``
    ``{fc1, fc2, fc3}``, the engine's per-layer budgets replaced by them); read back when done."""
    out = Path(args.out) / f"{name}-s{seed}"
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    opts = {"sparsity": args.sparsity, "schedule": args.schedule, **extra}
    if levels is not None:
        opts["allocation"] = "sensitivity"

        def fixed(ctx, model, method, o, target, sensitivity_file, reached=None, **_):
            named = {n: levels[n.rsplit(".", 1)[-1]] for n in method.sensitivity_layers(model, o)}
            ctx.record(allocation={"levels": named, "strategy": "fixed (oracle grid)"})
            return named

        pipeline.budgets_for_stage = fixed
    cfg = RunConfig(model="lenet300", data=args.data, methods=["prune"], seed=seed, epochs=args.epochs,
                    options={"prune": opts}, baseline_epochs=args.baseline_epochs, quiet=True, latency=False,
                    out=str(out))
    try:
        return Run(cfg).execute()
    finally:
        pipeline.budgets_for_stage = ORIGINAL


ORIGINAL = pipeline.budgets_for_stage


def common_args(ap: argparse.ArgumentParser, out: str) -> None:
    ap.add_argument("--data", default="mnist:../shared/data/mnist")
    ap.add_argument("--sparsity", type=float, default=0.95)
    ap.add_argument("--schedule", default="gradual")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--baseline-epochs", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap, "runs/allocation-oracle")
    ap.add_argument("--fc2", default="0.8,0.9,0.95,0.99")
    ap.add_argument("--fc3", default="0.5,0.8,0.95")
    ap.add_argument("--set", action="append", default=[], help="extra prune option KEY=VALUE (as JSON)")
    ap.add_argument("--arms", default="uniform,grid", help="uniform, grid, sensitivity (comma-separated)")
    args = ap.parse_args()
    args.extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = args.arms.split(",")
    rows = []
    if "uniform" in arms:
        rows.append(("uniform", None, "uniform"))
    if "sensitivity" in arms:
        rows.append(("sensitivity", None, "sensitivity"))
    if "grid" in arms:
        for fc2 in (float(v) for v in args.fc2.split(",")):
            for fc3 in (float(v) for v in args.fc3.split(",")):
                lv = levels_for(args.sparsity, fc2, fc3)
                rows.append((f"g{fc2:g}-{fc3:g}", lv, "sensitivity"))
    base = None
    print("| levels fc1 / fc2 / fc3 | test accuracy (mean ± sd) | per seed | minus uniform per seed | sparsity |",
          flush=True)
    print("|---|---:|---|---|---:|", flush=True)
    for name, lv, alloc in rows:
        reports = [compress(args, name, s, {**args.extra, "allocation": alloc}, lv) for s in seeds]
        accs = [r["final"]["accuracy"] for r in reports]
        if name == "uniform":
            base = accs
        shown = " / ".join(f"{v:g}" for v in lv.values()) if lv else name
        if alloc == "sensitivity" and lv is None:
            got = reports[0]["stages"][0].get("allocation", {}).get("levels", {})
            shown += " (" + "; ".join(" / ".join(f"{v:g}" for v in r["stages"][0]["allocation"]["levels"].values())
                                      for r in reports) + ")" if got else ""
        diff = ", ".join(f"{100 * (a - b):+.2f}" for a, b in zip(accs, base)) if base else "–"
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {shown} | {100 * statistics.mean(accs):.2f} ± {100 * sd:.2f} % | "
              f"{', '.join(f'{100 * a:.2f}' for a in accs)} | {diff} | "
              f"{statistics.mean(r['final']['sparsity'] for r in reports):.4f} |", flush=True)


if __name__ == "__main__":
    main()
