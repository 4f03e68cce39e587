"""Which inference engine makes a model faster: the sentence ``slimkit info`` prints.

Unstructured sparsity (weights zeroed one by one, the shapes unchanged) is faster only
where a kernel skips the zeros: slimkit's runtime (``slimkit run``, ``slimkit.load``)
runs the CSR layers of a ``--sparse-inference`` model on slimkit's sparse kernels.
``slimkit export`` writes the decoded dense weights, so ONNX Runtime and TorchScript run
such a model at the dense model's speed (and size in memory). Structured compression
(filters removed, low rank) changes the shapes themselves: every engine gains from it.
"""
from __future__ import annotations

__all__ = ["engine_advice"]

#: Sparsity from which the zeros are worth a sentence (a dense model has a few exact zeros).
NOTABLE_SPARSITY = 0.05


def engine_advice(desc: dict) -> str:
    """The advice for a model described by :func:`slimkit.summary.describe_model` (its ``layers`` and ``sparsity``)."""
    sparsity = float(desc.get("sparsity") or 0.0)
    csr = [r for r in desc.get("layers", []) if "runs_sparse" in r]
    on_kernel = sum(bool(r["runs_sparse"]) for r in csr)
    if sparsity < NOTABLE_SPARSITY:
        return ("dense weights: every engine runs this model at its own speed; `slimkit run` (slimkit's runtime) "
                "or `slimkit export --format onnx` for ONNX Runtime.")
    if on_kernel:
        return (f"unstructured sparsity {100 * sparsity:.1f} %: faster only in slimkit's runtime (`slimkit run`, "
                f"slimkit.load), which runs its CSR layers on slimkit's sparse kernels ({on_kernel} of {len(csr)} sparse "
                "enough for them; tiny output planes and calls still run dense). "
                "ONNX Runtime (`slimkit export`) runs this model dense, zeros included: no speed-up from the "
                "sparsity there; docs/BENCHMARKS.md has the measured comparison.")
    if csr:
        return (f"unstructured sparsity {100 * sparsity:.1f} %, but below the sparsity where slimkit's sparse "
                "kernels pay, so every layer runs dense, in slimkit's runtime and in ONNX Runtime alike.")
    return (f"unstructured sparsity {100 * sparsity:.1f} %, stored masked: every engine runs it dense. Compress "
            "with --sparse-inference to run it on slimkit's sparse kernels in slimkit's runtime (`slimkit run`); "
            "ONNX Runtime (`slimkit export`) runs it dense either way.")
