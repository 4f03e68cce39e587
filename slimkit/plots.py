"""Figures written next to a run's report (rank 0 only)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from slimkit import atomic  # noqa: E402


def training_curves(history: list[dict], path: Path, title: str) -> Path | None:
    """Loss and accuracy per epoch for every stage; the sparsity schedule beside the
    loss when a stage records one (as in the SlimNets paper's Figure 2)."""
    if not history:
        return None
    stages = list(dict.fromkeys(h["stage"] for h in history))
    has_sparsity = any("sparsity" in h for h in history)
    fig, axes = plt.subplots(1, 3 if has_sparsity else 2, figsize=(15 if has_sparsity else 10, 4))
    offset = 0
    for stage in stages:
        rows = [h for h in history if h["stage"] == stage]
        xs = [offset + h["epoch"] for h in rows]
        axes[0].plot(xs, [h["train_loss"] for h in rows], marker=".", label=stage)
        if any(h.get("val_accuracy") is not None for h in rows):
            axes[1].plot(xs, [100 * h["val_accuracy"] for h in rows], marker=".", label=stage)
        if has_sparsity and any("sparsity" in h for h in rows):
            axes[2].plot(xs, [100 * h.get("sparsity", 0.0) for h in rows], marker=".", label=f"{stage} (achieved)")
            if any("target_sparsity" in h for h in rows):
                axes[2].plot(xs, [100 * h.get("target_sparsity", 0.0) for h in rows], ls="--", label=f"{stage} (schedule)")
        offset = xs[-1] if xs else offset
    axes[0].set(xlabel="epoch", ylabel="train loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy (%)", title="accuracy")
    if has_sparsity:
        axes[2].set(xlabel="epoch", ylabel="sparsity (%)", title="sparsity")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)
    return path


def save_png(fig, path) -> None:
    """Write a matplotlib figure as PNG atomically (rendered in memory, then one write), and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
