"""A sweep's figures (matplotlib, Agg): accuracy per cell, convergence, and accuracy against
non-zero parameters and against bytes on disk."""
from __future__ import annotations

import json
import math

from slimkit.plots import save_png
from slimkit.sweep.grid import Grid

#: file name -> (results column on the x axis, axis label)
SIZE_FIGURES = {"accuracy_vs_nonzero_params.png": ("nonzero_params", "non-zero parameters"),
                "accuracy_vs_file_size.png": ("size_bytes", "bytes on disk (.slim file)")}
#: figures earlier versions wrote that misled; removed from OUT when the figures are written again
RETIRED_FIGURES = ("accuracy_vs_params.png",)


def _label(grid: Grid, row: dict, keys=None) -> str:
    keys = grid.swept if keys is None else keys
    if row["kind"] == "baseline":
        return "baseline"
    return " ".join(f"{k.split('.', 1)[-1]}={row[k]}" for k in keys) or "+".join(grid.methods)


def plots(grid: Grid, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in RETIRED_FIGURES:
        (grid.out / name).unlink(missing_ok=True)
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return
    many_variants = len({(r["model"], r["model_options"], r["data"], r["seed"]) for r in rows}) > 1

    def name(r):
        label = _label(grid, r)
        return f"{r['cell'].split('-' + grid.methods[0])[0] if grid.methods else r['cell']} {label}" \
            if many_variants else label

    # accuracy per configuration
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(done) + 2), 4.5))
    colors = ["tab:gray" if r["kind"] == "baseline" else "tab:blue" for r in done]
    ax.bar(range(len(done)), [100 * r["accuracy"] for r in done], color=colors)
    ax.set_xticks(range(len(done)), [name(r) for r in done], rotation=75, ha="right", fontsize=7)
    accs = [100 * r["accuracy"] for r in done]
    ax.set_ylim(max(0, min(accs) - 10), min(100, max(accs) + 3))
    for r in done:
        if r["kind"] == "baseline":
            ax.axhline(100 * r["accuracy"], color="tab:gray", ls="--", lw=0.8)
    ax.set(ylabel="test accuracy (%)", title=f"accuracy per configuration ({grid.path.name})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, grid.out / "accuracy.png")

    # convergence: panels = combinations of the swept keys after the first; lines = the first
    method_rows = [r for r in done if r["kind"] == "method" and json.loads(r["val_accuracy_curve"] or "[]")]
    if method_rows:
        swept = grid.swept
        first, rest = (swept[0], swept[1:]) if swept else (None, [])
        panel_keys = list(dict.fromkeys((r["model"], r["model_options"], r["data"], r["seed"],
                                         *(r[k] for k in rest)) for r in method_rows))
        n = len(panel_keys)
        cols = min(n, 3)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.4 * nrows), squeeze=False)
        for ax, pk in zip(axes.flat, panel_keys):
            for r in method_rows:
                if (r["model"], r["model_options"], r["data"], r["seed"], *(r[k] for k in rest)) != pk:
                    continue
                curve = json.loads(r["val_accuracy_curve"])
                ax.plot(range(1, len(curve) + 1), [100 * a if a is not None else float("nan") for a in curve],
                        marker=".", label=f"{first.split('.', 1)[-1]}={r[first]}" if first else r["cell"])
            title = " ".join(f"{k.split('.', 1)[-1]}={v}" for k, v in zip(rest, pk[4:]))
            if many_variants:
                title = f"{pk[0]} {pk[2]} s{pk[3]} " + title
            ax.set(title=title or "+".join(grid.methods), xlabel="epoch", ylabel="val accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle("convergence (validation accuracy of the last stage per epoch)")
        fig.tight_layout()
        save_png(fig, grid.out / "convergence.png")

    # accuracy against size: non-zero parameters and bytes on disk, the two measures pruning changes
    # (the dense parameter count does not move under unstructured pruning)
    for filename, (x_key, x_label) in SIZE_FIGURES.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        series = size_series(grid, done, x_key)
        for key, points in series.items():
            ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], marker="*" if key == "baseline" else "o",
                       s=120 if key == "baseline" else 30, label=key)
            for x, y, text in points:
                if text:
                    ax.annotate(text, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        xs = [x for points in series.values() for x, _, _ in points if x > 0]
        if xs and max(xs) > 20 * min(xs):
            ax.set_xscale("log")
        ax.set(xlabel=x_label, ylabel="test accuracy (%)", title=f"accuracy against {x_label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=f"points labelled with {grid.swept[0].split('.', 1)[-1]}" if grid.swept else None,
                  title_fontsize=7)
        fig.tight_layout()
        save_png(fig, grid.out / filename)


def size_series(grid: Grid, done: list[dict], x_key: str) -> dict[str, list[tuple]]:
    """Points (x = row[x_key], test accuracy in %, label) per series: baselines, then one series per
    combination of the swept options after the first; points labelled with the first swept option."""
    groups: dict[str, list[tuple]] = {}
    for r in done:
        key = "baseline" if r["kind"] == "baseline" else (
            " ".join(f"{k.split('.', 1)[-1]}={r[k]}" for k in grid.swept[1:]) or "+".join(grid.methods))
        text = str(r[grid.swept[0]]) if grid.swept and key != "baseline" else ""
        groups.setdefault(key, []).append((r[x_key], 100 * r["accuracy"], text))
    return groups
