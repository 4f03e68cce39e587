"""Trained weight sharing (Deep Compression) and int8 post-training quantisation.

S. Han, H. Mao, W. J. Dally. "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016. ``--method prune
--method quantize`` is its pipeline: prune, share weights, Huffman-code the file.

Weight sharing (``mode=kmeans``, the default)
---------------------------------------------
Per layer the remaining (unpruned) weights ``W`` are clustered into ``k = 2**n``
clusters (``n = fc_bits`` = 5 for fully connected layers, ``conv_bits`` = 8 for
convolutions, the paper's choice) by minimising the within-cluster sum of squares ::

    argmin_C  sum_i sum_{w in c_i} |w - c_i|^2

with Lloyd's k-means (``kmeans_iters`` iterations; 1-D, so each step is a sort and a
bucketisation). Centroids are initialised linearly (§3.2: evenly spaced between the
smallest and largest remaining weight, which keeps the few large weights that matter
most represented); ``init=density`` (quantiles) and ``init=random`` (Forgy) are there
for comparison. Pruned weights take no part: they stay exactly 0 and 0 is not a
centroid (unless k-means puts one there).

Fine-tuning the centroids (§3.3): every weight of cluster ``k`` equals ``C_k``, so ::

    dL/dC_k = sum_{i,j} dL/dW_ij * 1(I_ij = k)

:class:`SharedWeightGradients` implements it as a training callback: after every
backward pass it replaces each weight's gradient by its cluster's *summed* gradient
(``grad=sum``, the paper; ``grad=mean`` divides by the cluster size, a gentler
step), so the optimizer moves every member of a cluster alike, exactly as it would
move the centroid (momentum and weight decay included). After every step it reads
the new centroids back and rewrites the weights as ``codebook[index]``, so the
weights are exactly codebook values at every step (whatever rounding the optimizer
did), pruned weights stay exactly 0 and the assignment never changes.

The layers become :class:`slimkit.nn.QuantizedLinear` / :class:`slimkit.nn.QuantizedConv2d`
(engine types from :mod:`slimkit.nn.quantized`, shared with ``sws``): masked layers with a
``weight_codebook`` buffer, which the ``.slim`` writer (slimkit.storage) stores as
codebook indices, ``csr`` with relative positions when the layer is pruned, and Huffman
coded when ``huffman`` is on (the paper's last stage). The constructor arguments carry
the storage hints (``index_bits`` = n, ``pos_bits``, ``huffman``), so they survive
saving and loading.

int8 (``mode=int8``)
--------------------
Post-training, no training: per output channel ``c`` a symmetric scale
``s_c = max|W_c| / 127`` and ``q = round(W / s_c)`` in [-127, 127]; the weight becomes
``q * s_c`` (error at most ``s_c / 2`` per weight) and is stored as int8 plus one
float32 scale per channel (:class:`slimkit.nn.Int8Linear` / :class:`slimkit.nn.Int8Conv2d`,
with a ``weight_scale`` buffer). Pruned weights stay 0. A baseline to compare weight
sharing against.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from slimkit import hookimpl, storage
from slimkit.api import Method, Option, TrainCallback
from slimkit.errors import UserError
from slimkit.nn import (MaskedMixin, effective_weight, prunable_layers, quantizable_layers, quantized_twin,
                        replace_layer, to_masked)
from slimkit.storage import stored_bytes
# The layer types and helpers moved to the engine (slimkit.nn.quantized); these names stay importable from
# here for code written before the move. New code imports them from slimkit.nn.
from slimkit.nn import Int8Conv2d, Int8Linear, QuantizedConv2d, QuantizedLinear, codebook_layers  # noqa: F401

__all__ = ["Quantize", "SharedWeightGradients", "init_centroids", "kmeans_1d", "share_weights", "int8_quantize"]


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d)


# --------------------------------------------------------------------------- k-means

def init_centroids(values: torch.Tensor, k: int, method: str = "linear", seed: int = 0) -> torch.Tensor:
    """Initial centroids (float64, sorted) for 1-D ``values``.

    ``linear``: ``min + j (max - min) / (k - 1)``, j = 0..k-1 (Han et al. §3.2);
    ``density``: the ``j / (k - 1)`` quantiles (evenly spaced on the CDF);
    ``random``: ``k`` weights drawn without replacement (Forgy), seeded.
    """
    v = values.detach().reshape(-1).double().cpu()
    if v.numel() == 0:
        return torch.zeros(k, dtype=torch.float64)
    if method == "linear":
        if k == 1:
            return v.mean().reshape(1)
        return torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    if method == "density":
        import numpy as np

        q = np.quantile(v.numpy(), np.linspace(0.0, 1.0, k))
        return torch.from_numpy(np.asarray(q, dtype=np.float64))
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(v.numel(), generator=g)[:k]
        c = v[pick]
        if c.numel() < k:  # fewer weights than clusters: repeat the last
            c = torch.cat([c, c[-1:].expand(k - c.numel())])
        return torch.sort(c).values
    raise ValueError(f"unknown centroid initialisation {method!r}")


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of each value (centroids sorted ascending)."""
    if centroids.numel() == 1:
        return torch.zeros(values.numel(), dtype=torch.long)
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, mids)


def kmeans_1d(values: torch.Tensor, centroids: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means in one dimension: ``(centroids sorted, assignment)``, float64.

    Empty clusters keep their centroid. Stops early once no centroid moves.
    """
    v = values.detach().reshape(-1).double().cpu()
    c = torch.sort(centroids.double().cpu()).values
    k = c.numel()
    for _ in range(iters):
        a = _assign(v, c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, a, v)
        counts = torch.bincount(a, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        new = torch.sort(new).values
        if torch.equal(new, c):
            break
        c = new
    return c, _assign(v, c)


@torch.no_grad()
def share_weights(layer: nn.Module, bits: int, *, init: str = "linear", iters: int = 10, seed: int = 0):
    """Cluster the kept weights of a masked ``layer`` into ``2**bits`` shared values.

    Returns ``(codebook float32 [2**bits], index [weight.numel()] long, keep bool [weight.numel()])``;
    ``codebook[index]`` at kept positions is the shared weight.
    """
    keep = (layer.weight_mask != 0).reshape(-1).cpu() if isinstance(layer, MaskedMixin) else \
        torch.ones(layer.weight.numel(), dtype=torch.bool)
    w = layer.weight.detach().reshape(-1).cpu()
    kept = w[keep]
    k = 1 << bits
    centroids, assignment = kmeans_1d(kept, init_centroids(kept, k, init, seed), iters)
    codebook = centroids.float()
    # ties: two float64 centroids may round to one float32 value; the index stays valid either way
    index = torch.zeros(w.numel(), dtype=torch.long)
    index[keep] = assignment
    return codebook, index, keep


class SharedWeightGradients(TrainCallback):
    """Trains the centroids of weight-shared layers (Han et al. §3.3), keeping weights = codebook[index].

    ``after_backward``: the gradient of every kept weight becomes the sum (``reduce="sum"``,
    the paper) or mean of the gradients of its cluster; pruned weights get 0.
    ``after_step``: the new centroid of each non-empty cluster is read from one of its
    members, written to ``weight_codebook``, and the weights are rewritten from it.
    The index is recomputed from the weights at the start of every ``ctx.train`` call
    (so a resumed run, which starts from restored weights, gets the same clusters).
    """

    def __init__(self, layers, reduce: str = "sum"):
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', not {reduce!r}")
        self.layers = list(layers)
        self.reduce = reduce
        self.state: list[dict] = []

    @torch.no_grad()
    def on_train_begin(self, model, total_steps: int) -> None:
        self.state = []
        for m in self.layers:
            keep = (m.weight_mask != 0).reshape(-1)
            pos = torch.nonzero(keep).reshape(-1)
            idx = torch.from_numpy(storage.codebook_indices(m.weight.detach().reshape(-1)[pos].cpu(),
                                                            m.weight_codebook.cpu())).to(m.weight.device)
            k = m.weight_codebook.numel()
            counts = torch.bincount(idx, minlength=k)
            # the first member of each cluster (its entry number among the kept weights)
            first = torch.full((k,), idx.numel(), dtype=torch.long, device=idx.device)
            first.scatter_reduce_(0, idx, torch.arange(idx.numel(), device=idx.device), reduce="amin")
            self.state.append({"pos": pos, "idx": idx, "counts": counts, "first": first, "has": counts > 0})

    @torch.no_grad()
    def after_backward(self, model, step: int) -> None:
        for m, s in zip(self.layers, self.state):
            g = m.weight.grad
            if g is None:
                continue
            flat = g.reshape(-1)
            sums = torch.zeros(m.weight_codebook.numel(), dtype=g.dtype, device=g.device)
            sums.index_add_(0, s["idx"], flat[s["pos"]])
            if self.reduce == "mean":
                sums /= s["counts"].clamp(min=1).to(sums.dtype)
            grouped = torch.zeros_like(flat)
            grouped[s["pos"]] = sums[s["idx"]]
            m.weight.grad = grouped.view_as(g)

    @torch.no_grad()
    def after_step(self, model, step: int) -> None:
        for m, s in zip(self.layers, self.state):
            flat = m.weight.reshape(-1)
            codebook = m.weight_codebook.clone()
            has = s["has"]
            codebook[has] = flat[s["pos"][s["first"][has]]].to(codebook.dtype)
            m.weight_codebook.copy_(codebook)
            new = torch.zeros_like(flat)
            new[s["pos"]] = codebook[s["idx"]].to(new.dtype)
            flat.copy_(new)


# --------------------------------------------------------------------------- int8

@torch.no_grad()
def int8_quantize(weight: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q int8, scale float32 [out])`` with
    ``scale = max|W_c| / 127`` (1 for an all-zero channel) and ``q = round(W / scale)``."""
    w = weight.detach().float()
    if mask is not None:
        w = torch.where(mask != 0, w, torch.zeros_like(w))
    amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale.reshape(-1, *([1] * (w.dim() - 1)))).clamp_(-127, 127).to(torch.int8)
    return q, scale


# --------------------------------------------------------------------------- method

class Quantize(Method):
    name = "quantize"
    summary = ("Trained weight sharing: per-layer k-means codebooks, centroid fine-tuning, Huffman-coded "
               "storage (Deep Compression); or int8 per-channel post-training quantisation.")
    paper = ("S. Han, H. Mao, W. J. Dally. Deep Compression: Compressing Deep Neural Networks with Pruning, "
             "Trained Quantization and Huffman Coding. ICLR 2016.")
    options = [
        Option("mode", str, "kmeans", "kmeans: trained weight sharing (Han et al.); int8: symmetric per-channel "
               "post-training quantisation, no training", choices=("kmeans", "int8")),
        Option("fc_bits", int, 5, "kmeans: index bits of fully connected layers (2**bits shared weights)",
               min=1, max=8),
        Option("conv_bits", int, 8, "kmeans: index bits of convolutions", min=1, max=8),
        Option("init", str, "linear", "kmeans: centroid initialisation (linear: evenly between min and max, "
               "the paper's best)", choices=("linear", "density", "random")),
        Option("kmeans_iters", int, 20, "kmeans: Lloyd iterations (0 = keep the initial centroids)", min=0),
        Option("grad", str, "sum", "kmeans: centroid gradient = sum (the paper) or mean of its cluster's "
               "weight gradients", choices=("sum", "mean")),
        Option("huffman", bool, True, "Huffman-code the stored indices and relative positions"),
        Option("pos_bits", int, 0, "bits of a relative position in sparse storage (0 = whichever of 1..8 "
               "stores the layer smallest)", min=0, max=8),
    ]

    def check(self, model, opts: dict) -> None:
        if not quantizable_layers(model):
            raise UserError("quantize: the model has no nn.Conv2d or nn.Linear layers; there is nothing to quantise")

    def apply(self, model, ctx, opts: dict):
        self.check(model, opts)
        skipped = [n for n, m in prunable_layers(model) if (n, m) not in quantizable_layers(model)]
        if skipped:
            ctx.log(f"quantize: {len(skipped)} layer(s) of unsupported subclasses stay as they are: "
                    f"{', '.join(skipped)}")
        model = to_masked(model)
        if opts["mode"] == "int8":
            return self._int8(model, ctx, opts)
        return self._kmeans(model, ctx, opts)

    # ------------------------------------------------------------------ kmeans
    def _kmeans(self, model, ctx, opts):
        rows, layers = [], []
        for name, layer in quantizable_layers(model):
            bits = opts["conv_bits"] if _is_conv(layer) else opts["fc_bits"]
            codebook, index, keep = share_weights(layer, bits, init=opts["init"], iters=opts["kmeans_iters"],
                                                  seed=ctx.seed)
            new = quantized_twin(layer, "codebook", num_codes=1 << bits, index_bits=bits,
                                 pos_bits=opts["pos_bits"], huffman=opts["huffman"])
            device = new.weight.device
            new.set_codes(codebook.to(device), index.to(device), keep.to(device))
            replace_layer(model, name, new)
            layers.append((name, new))
            rows.append({"name": name, "kind": "conv" if _is_conv(layer) else "fc", "bits": bits,
                         "clusters": 1 << bits, "params": layer.weight.numel(), "kept": int(keep.sum())})
        if ctx.dist.enabled:
            _broadcast_codes([m for _, m in layers])
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        extra = {"val_accuracy_after_clustering": ctx.evaluate(model, "val")}
        described = ", ".join(f"{r['name']} {r['bits']} bits" for r in rows)
        ctx.log(f"quantize: {len(layers)} layer(s) weight-shared ({described}); fine-tuning the centroids "
                f"{epochs} epoch(s), grad={opts['grad']}")
        if epochs > 0:
            ctx.train(model, epochs=epochs, lr=opts["lr"],
                      callbacks=[SharedWeightGradients([m for _, m in layers], opts["grad"])])
        for row, (name, m) in zip(rows, layers):
            keep = m.weight_mask != 0
            used = torch.unique(m.weight[keep]).numel() if bool(keep.any()) else 0
            row.update(used_clusters=used, sparsity=1.0 - row["kept"] / max(row["params"], 1),
                       stored_bytes=stored_bytes(model, f"{name}.weight"), dense_bytes=4 * row["params"])
        ctx.record(mode="kmeans", init=opts["init"], grad=opts["grad"], huffman=opts["huffman"], layers=rows,
                   weight_bytes=sum(r["stored_bytes"] for r in rows),
                   dense_weight_bytes=sum(r["dense_bytes"] for r in rows), **extra)
        return model

    # ------------------------------------------------------------------ int8
    def _int8(self, model, ctx, opts):
        rows = []
        for name, layer in quantizable_layers(model):
            q, scale = int8_quantize(layer.weight, layer.weight_mask)
            new = quantized_twin(layer, "int8")
            with torch.no_grad():
                new.weight_scale.copy_(scale)
                new.weight.copy_(storage.int8_dequantize(q.cpu(), scale.cpu()).to(new.weight))
            with torch.no_grad():
                error = (new.weight - effective_weight(layer)).abs().reshape(new.weight.shape[0], -1).amax(1)
            replace_layer(model, name, new)
            rows.append({"name": name, "params": layer.weight.numel(),
                         "max_abs_error": float(error.max()) if error.numel() else 0.0,
                         "max_error_over_half_scale": float((error / (scale / 2)).max()) if error.numel() else 0.0,
                         "stored_bytes": stored_bytes(model, f"{name}.weight")})
        ctx.log(f"quantize: {len(rows)} layer(s) to int8 per output channel (post-training, no fine-tuning)")
        ctx.record(mode="int8", layers=rows, weight_bytes=sum(r["stored_bytes"] for r in rows),
                   dense_weight_bytes=sum(4 * r["params"] for r in rows))
        return model


def _broadcast_codes(layers) -> None:
    """Make every rank's codebooks, weights and masks rank 0's (one broadcast)."""
    import torch.distributed as dist

    tensors = [t for m in layers for t in (m.weight.data, m.weight_codebook, m.weight_mask)]
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.broadcast(flat, src=0)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


@hookimpl
def register_methods(register):
    register(Quantize())

