"""Structural compression of one conv block (Nowak & Corso, "Deep Net Triage", 2018).

T. Nowak and J. J. Corso, "Deep Net Triage: Analyzing the Importance of Network Layers
via Structural Compression", arXiv:1801.04651, 2018.

The method
----------
A VGG-style network is a chain of blocks, each a few 3x3 convolutions (with BatchNorm
and ReLU) between two poolings. Triage replaces the ``N`` convolutions of one block,
``f_1 : C_in -> C_mid, f_2 : C_mid -> C_mid, ..., f_N : C_mid -> C_out``, by a single
3x3 convolution ``g : C_in -> C_out`` (followed by BatchNorm and ReLU when the block had
them; the block's pool is kept), so the rest of the network is untouched. How quickly
and how well the network recovers from the compression says how important that
block's depth was. ``block`` (1-based) picks the block; the new block is built with
:func:`slimkit.models.vgg.collapse_block`.

Initialisation (``init``)
-------------------------
``random``  the new layer keeps the zoo's fresh initialisation (Kaiming-normal conv,
            BN weight 1 / bias 0, fresh running statistics).

``mean``    the paper's filter average ``f_avg = (1/N) sum_i f_i``. The replaced convs do
            not all have the new layer's shape ``[C_out, C_in, k, k]`` (in a VGG block the
            first conv is ``[C_mid, C_in]`` and the others are ``[C_mid, C_mid]`` /
            ``[C_out, C_mid]``), so every conv weight ``W_i`` is first mapped to that shape
            by :func:`fit_channels`, one channel dimension (output, then input) at a time:

            * equal size: unchanged;
            * larger (``S > T``): *folded by averaging*: target channel ``j`` is the mean
              of the source channels ``j, j + T, j + 2T, ...`` (those ``< S``); when ``T``
              divides ``S`` this is the mean of ``S/T`` channels for every ``j``;
            * smaller (``S < T``): *tiled*: target channel ``j`` is source channel ``j mod S``.

            and ``g = (1/N) sum_i fit(W_i)``. In a standard VGG block (``C_mid = C_out``)
            the first conv already has the target shape and the later convs are folded
            along their input channels only. Every weight of ``g`` is thus an average of
            weights of the block, so its scale is that of the block's filters. A masked
            (pruned) conv contributes its effective weight ``weight * mask``. A conv bias,
            when the block has biases, is averaged the same way (output dimension only).
            The new BatchNorm gets the average of the block's BatchNorms (weight, bias,
            running mean, running variance, each mapped to ``C_out`` channels the same
            way), so a block of a single conv is copied exactly (the identity). Blocks
            whose convolutions have different kernel sizes are refused for ``mean``.

``stn``     student-teacher: the new layer alone is trained for ``stn_epochs`` epochs to
            reproduce the teacher's block: the loss is the mean squared error between the
            new block's output and the output of the same block of ``ctx.teacher`` (the
            original network), both taken with forward hooks on the same input batch.
            Every other parameter is frozen and every other BatchNorm is in eval mode
            (its running statistics are not updated), so the network in front of the
            block computes exactly what the teacher's does and only the new layer
            changes. The new layer starts from the random initialisation.

Regime (``regime``)
-------------------
``frozen``  only the new block trains (conv, and its BatchNorm's weight, bias and running
            statistics); every other parameter has ``requires_grad=False`` during the
            stage and every other BatchNorm is kept in eval mode at every step (the
            training loop puts the model in train mode each epoch; a callback puts the
            frozen BatchNorms back in eval mode before each step), so their running mean,
            variance and batch counters stay exactly as they were. Dropout layers keep
            their training behaviour (they have no state).
``thawed``  the whole network fine-tunes (every BatchNorm in train mode).

After the stage every parameter's ``requires_grad`` is restored.

Report
------
``ctx.record`` gets the block (index, name, convs replaced with their shapes, the new
conv's shape), parameters and MACs before/after, the validation accuracy and train
loss per epoch (from the history ``ctx.train`` returns; for ``stn`` also those of the
student-teacher phase) and the rate of convergence ``epochs_to_95``: the first epoch
(1-based) whose validation accuracy reaches 95 % of the stage's final accuracy, where
the final accuracy is that of the model the stage returns, i.e. the best validation
accuracy of the history (the training loop restores the best epoch). See
:func:`epochs_to_fraction`.

What counts as a VGG-style block
--------------------------------
``model.features`` is an ``nn.Sequential`` whose children are ``nn.Sequential`` blocks
made only of ``Conv2d`` (3x3-style "same" convolutions: stride 1, padding
``dilation * (k - 1) / 2``, groups 1), ``BatchNorm2d``, activations, dropout and
pooling, with at least one convolution each, the convolutions chained channel to
channel (as :class:`slimkit.models.vgg.VGG` builds them). A block of a single conv may
be chosen too: the structure does not change, the layer is re-initialised (``random``,
``stn``) or copied (``mean``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.measure import epochs_to_fraction
from slimkit import hookimpl
from slimkit.api import Method, Option, TrainCallback
from slimkit.errors import UserError
from slimkit.models import count_macs, count_params
from slimkit.models.vgg import collapse_block, conv_blocks
from slimkit.nn import effective_weight

__all__ = ["Structural", "vgg_blocks", "fit_channels", "mean_init", "student_teacher", "epochs_to_fraction",
           "FreezeBatchNorm"]

_BLOCK_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
                 nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout,
                 nn.Dropout2d)


# --------------------------------------------------------------------------- blocks

def _same_conv(conv: nn.Conv2d) -> bool:
    """True when the conv keeps the spatial size (stride 1, 'same' padding) and is not grouped."""
    k, d, p = conv.kernel_size, conv.dilation, conv.padding
    if isinstance(p, str):
        return p == "same" and tuple(conv.stride) == (1, 1) and conv.groups == 1
    return (tuple(conv.stride) == (1, 1) and conv.groups == 1
            and all(kk % 2 == 1 and pp == dd * (kk - 1) // 2 for kk, dd, pp in zip(k, d, p)))


def vgg_blocks(model: nn.Module, method: str = "structural"):
    """The model's conv blocks (:class:`slimkit.models.vgg.ConvBlock`), or a UserError saying why
    the model is not VGG-style (see the module docstring)."""
    what = f"{method} works on VGG-style nets (model.features = nn.Sequential of conv blocks)"
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise UserError(f"{method}: {type(model).__name__} has no `features` nn.Sequential of conv blocks; {what}")
    blocks = conv_blocks(model)
    if not blocks:
        raise UserError(f"{method}: {type(model).__name__}.features is empty; {what}")
    for entry in blocks:
        if type(entry.block) is not nn.Sequential:
            raise UserError(f"{method}: {entry.name} is a {type(entry.block).__name__}, not an nn.Sequential of "
                            f"conv/BN/ReLU/pool layers; {what}")
        convs = entry.convs
        if not convs:
            raise UserError(f"{method}: {entry.name} has no Conv2d; {what}")
        for child_name, child in entry.block.named_children():
            if not isinstance(child, _BLOCK_LAYERS):
                raise UserError(f"{method}: {entry.name}.{child_name} is a {type(child).__name__}; a VGG-style "
                                f"block holds only convs, BatchNorm, activations, dropout and pooling; {what}")
        for (child_name, conv), (_, nxt) in zip(convs, convs[1:] + [(None, None)]):
            if not _same_conv(conv):
                raise UserError(f"{method}: {entry.name}.{child_name} changes the spatial size (stride "
                                f"{tuple(conv.stride)}, padding {conv.padding}, groups {conv.groups}); {what} "
                                "with stride-1 'same' convolutions")
            if nxt is not None and nxt.in_channels != conv.out_channels:
                raise UserError(f"{method}: the convs of {entry.name} are not chained ({child_name} gives "
                                f"{conv.out_channels} channels, the next takes {nxt.in_channels}); {what}")
    return blocks


def _block_index(model: nn.Module, block: int):
    blocks = vgg_blocks(model)
    if not 1 <= block <= len(blocks):
        raise UserError(f"option structural.block={block} is out of range: {type(model).__name__} has "
                        f"{len(blocks)} conv blocks; expected block in 1..{len(blocks)}")
    return blocks[block - 1]


# --------------------------------------------------------------------------- mean initialisation

def fit_channels(w: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Map dimension ``dim`` of ``w`` to ``size`` channels: unchanged if equal, folded by averaging
    (channel ``j`` = mean of channels ``j, j + size, j + 2 size, ...``) if larger, tiled
    (channel ``j`` = channel ``j mod S``) if smaller."""
    current = w.shape[dim]
    if current == size:
        return w
    if current > size:
        group = torch.arange(current, device=w.device) % size
        shape = list(w.shape)
        shape[dim] = size
        summed = torch.zeros(shape, dtype=w.dtype, device=w.device).index_add_(dim, group, w)
        counts = torch.bincount(group, minlength=size).to(w.dtype)
        view = [1] * w.dim()
        view[dim] = size
        return summed / counts.view(view)
    return w.index_select(dim, torch.arange(size, device=w.device) % current)


@torch.no_grad()
def mean_init(new_block: nn.Sequential, old_block: nn.Module) -> dict:
    """Set the new block's conv (and BN) to the average of the old block's (module docstring, ``mean``).

    Returns a description of what was averaged (for the report)."""
    new_conv = next(m for m in new_block.modules() if isinstance(m, nn.Conv2d))
    old_convs = [m for m in old_block.modules() if isinstance(m, nn.Conv2d)]
    c_out, c_in = new_conv.out_channels, new_conv.in_channels
    kernels = {tuple(c.kernel_size) for c in old_convs}
    if kernels != {tuple(new_conv.kernel_size)}:
        raise UserError(f"structural init=mean: the block's convs have kernel sizes {sorted(kernels)}, the new "
                        f"layer {tuple(new_conv.kernel_size)}; mean initialisation averages same-size kernels only")
    fitted = [fit_channels(fit_channels(effective_weight(c).float(), 0, c_out), 1, c_in) for c in old_convs]
    new_conv.weight.copy_(torch.stack(fitted).mean(0).to(new_conv.weight.dtype))
    if new_conv.bias is not None:
        biases = [fit_channels(c.bias.float(), 0, c_out) if c.bias is not None
                  else torch.zeros(c_out, device=new_conv.bias.device) for c in old_convs]
        new_conv.bias.copy_(torch.stack(biases).mean(0))
    new_bns = [m for m in new_block.modules() if isinstance(m, nn.BatchNorm2d)]
    old_bns = [m for m in old_block.modules() if isinstance(m, nn.BatchNorm2d)]
    if new_bns and old_bns:
        bn = new_bns[0]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            target = getattr(bn, attr)
            sources = [getattr(b, attr) for b in old_bns if getattr(b, attr) is not None]
            if target is not None and sources:
                target.copy_(torch.stack([fit_channels(s.float(), 0, c_out) for s in sources]).mean(0))
    return {"convs_averaged": len(old_convs), "batchnorms_averaged": len(old_bns) if new_bns else 0,
            "shapes_averaged": [list(c.weight.shape) for c in old_convs]}


# --------------------------------------------------------------------------- training helpers

class FreezeBatchNorm(TrainCallback):
    """Keeps the given BatchNorm layers in eval mode at every step (frozen running statistics)."""

    def __init__(self, modules):
        self.modules = list(modules)

    def on_step_begin(self, model, step):
        for m in self.modules:
            m.eval()

    def on_epoch_end(self, model, epoch, metrics):
        for m in self.modules:
            m.eval()


class _Frozen:
    """Context: only ``keep``'s parameters require grad; everything's flags are restored on exit.

    Returns the BatchNorm layers outside ``keep`` (to be kept in eval mode)."""

    def __init__(self, model: nn.Module, keep: nn.Module):
        self.model, self.keep = model, keep

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        inside = {id(p) for p in self.keep.parameters()}
        for p in self.model.parameters():
            if id(p) not in inside:
                p.requires_grad_(False)
        kept = {id(m) for m in self.keep.modules()}
        return [m for m in self.model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept]

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        return False


def student_teacher(model: nn.Module, teacher: nn.Module, block_name: str, ctx, *, epochs: int,
                    lr: float | None = None) -> list[dict]:
    """Train only ``model``'s block ``block_name`` to reproduce ``teacher``'s block of the same name (MSE).

    Everything else is frozen (``requires_grad`` off, BatchNorm in eval mode). Returns the history."""
    if teacher is None:
        raise UserError("structural init=stn needs the original network as teacher; the stage has none")
    try:
        t_block = teacher.get_submodule(block_name)
    except AttributeError:
        raise UserError(f"structural init=stn: the teacher has no {block_name} to learn from") from None
    s_block = model.get_submodule(block_name)
    captured: dict = {}
    handles = [t_block.register_forward_hook(lambda m, i, o: captured.__setitem__("teacher", o.detach())),
               s_block.register_forward_hook(lambda m, i, o: captured.__setitem__("student", o))]

    def loss(net, inputs, targets):
        with torch.no_grad():
            teacher(inputs)
        logits = net(inputs)
        student, target = captured.pop("student"), captured.pop("teacher")
        if student.shape != target.shape:
            raise UserError(f"structural init=stn: the new {block_name} gives {tuple(student.shape[1:])} but the "
                            f"teacher's gives {tuple(target.shape[1:])}; the teacher must be the original network")
        return F.mse_loss(student, target), logits

    try:
        with _Frozen(model, s_block) as frozen_bns:
            return ctx.train(model, epochs=epochs, lr=lr, loss=loss, params=list(s_block.parameters()),
                             callbacks=[FreezeBatchNorm(frozen_bns)], label=f"{ctx.stage}-stn")
    finally:
        for h in handles:
            h.remove()


def _curve(history, key="val_accuracy"):
    return [h.get(key) for h in history]


# --------------------------------------------------------------------------- method

class Structural(Method):
    name = "structural"
    summary = "Replace one VGG conv block by a single conv (Deep Net Triage): random/mean/student-teacher init."
    paper = ("T. Nowak, J. J. Corso. Deep Net Triage: Analyzing the Importance of Network Layers via Structural "
             "Compression. arXiv:1801.04651, 2018.")
    options = [
        Option("block", int, 1, "which conv block (1-based) is replaced by one conv layer", min=1),
        Option("init", str, "random", "initialisation of the new layer: random, mean (average of the block's "
               "filters, mismatched channels folded/tiled), stn (trained alone to mimic the teacher's block)",
               choices=("random", "mean", "stn")),
        Option("regime", str, "frozen", "frozen: only the new layer trains (other BN stats frozen); "
               "thawed: the whole net fine-tunes", choices=("frozen", "thawed")),
        Option("stn_epochs", int, None, "init=stn: epochs of the student-teacher phase (unset = the run's epochs)",
               min=0),
    ]

    def check(self, model, opts: dict) -> None:
        entry = _block_index(model, opts["block"])
        if opts["init"] == "mean":
            kernels = sorted({tuple(c.kernel_size) for _, c in entry.convs})
            if kernels != [(3, 3)]:
                raise UserError(f"option structural.init=mean: {entry.name} has kernel sizes {kernels}; the new "
                                "layer is 3x3 and mean initialisation averages same-size kernels only")

    def apply(self, model, ctx, opts: dict):
        entry = _block_index(model, opts["block"])
        input_shape = tuple(ctx.data.input_shape)
        params_before, macs_before = count_params(model), count_macs(model, input_shape)["dense"]
        old_block = entry.block
        old_convs = [(n, list(c.weight.shape)) for n, c in entry.convs]
        short = entry.name.split(".", 1)[1]
        new_block = collapse_block(model, short)
        new_block.train(old_block.training)
        new_conv = next(m for m in new_block.modules() if isinstance(m, nn.Conv2d))
        params_after, macs_after = count_params(model), count_macs(model, input_shape)["dense"]
        ctx.log(f"structural: {entry.name} ({len(old_convs)} conv{'s' * (len(old_convs) > 1)}) -> one conv "
                f"{tuple(new_conv.weight.shape)}; params {params_before} -> {params_after}")
        extra: dict = {}
        if opts["init"] == "mean":
            extra["mean_init"] = mean_init(new_block, old_block)
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        if opts["init"] == "stn":
            stn_epochs = ctx.epochs if opts["stn_epochs"] is None else opts["stn_epochs"]
            stn = student_teacher(model, ctx.teacher, entry.name, ctx, epochs=stn_epochs, lr=opts["lr"])
            extra["stn"] = {"epochs": stn_epochs, "train_mse": _curve(stn, "train_loss"),
                            "val_accuracy": _curve(stn)}
        extra["val_accuracy_before_training"] = ctx.evaluate(model, "val")
        if opts["regime"] == "frozen":
            with _Frozen(model, new_block) as frozen_bns:
                history = ctx.train(model, epochs=epochs, lr=opts["lr"], params=list(new_block.parameters()),
                                    callbacks=[FreezeBatchNorm(frozen_bns)])
        else:
            history = ctx.train(model, epochs=epochs, lr=opts["lr"])
        accuracies = _curve(history)
        ctx.record(block=opts["block"], block_name=entry.name, init=opts["init"], regime=opts["regime"],
                   convs_replaced=[{"name": f"{entry.name}.{n}", "shape": s} for n, s in old_convs],
                   new_conv_shape=list(new_conv.weight.shape), in_channels=new_conv.in_channels,
                   out_channels=new_conv.out_channels, params_before=params_before, params_after=params_after,
                   macs_before=macs_before, macs_after=macs_after,
                   accuracy_per_epoch=accuracies, train_loss_per_epoch=_curve(history, "train_loss"),
                   final_val_accuracy=max((a for a in accuracies if a is not None), default=None),
                   epochs_to_95=epochs_to_fraction(accuracies), **extra)
        return model


@hookimpl
def register_methods(register):
    register(Structural())
