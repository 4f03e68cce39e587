"""Knowledge-distillation training pieces any method can use: the teacher's logits computed
once, Hinton's loss with those cached logits or with the teacher run on every batch, and a
learning-rate warm-up that keeps a confident teacher's first steps from wrecking a student.

The loss itself is :func:`slimkit.ops.kd_loss` (fused, with a pure-PyTorch reference);
``distill`` and any plugin that distils (``layer-removal``, a user's method) train with
these through ``ctx.train(model, loss=..., callbacks=[...])``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from slimkit.api import TrainCallback
from slimkit.ops import kd_loss

#: Examples per teacher forward pass when its logits are cached.
CACHE_BATCH = 512

__all__ = ["CACHE_BATCH", "CachedKDLoss", "KDWarmup", "OnlineKDLoss", "teacher_logits"]


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, device, batch_size: int = CACHE_BATCH) -> torch.Tensor:
    """``teacher(x)`` for all of ``x`` (eval mode, ``no_grad``), in batches, as one ``[N, C]`` tensor on ``device``."""
    was = teacher.training
    teacher.eval()
    try:
        parts = [teacher(x[i:i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    finally:
        teacher.train(was)
    return torch.cat(parts).contiguous()


class CachedKDLoss(TrainCallback):
    """Hinton KD with the teacher's logits looked up by example index (see "Cached teacher logits").

    Used as both ``loss`` and a callback of ``ctx.train``: as a callback it learns each
    batch's example indices (:meth:`on_batch`), as the loss it takes the batch's labels
    as targets, like any loss, and returns the student's logits.
    """

    def __init__(self, logits: torch.Tensor, temperature: float, alpha: float):
        self.logits = logits
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.index: torch.Tensor | None = None

    def on_batch(self, model, step: int, indices) -> None:
        self.index = indices.to(self.logits.device)

    def __call__(self, model, inputs, labels):
        if self.index is None or self.index.numel() != labels.shape[0]:
            raise RuntimeError("CachedKDLoss: no example indices for this batch; pass the loss as a callback too")
        s = model(inputs)
        t = self.logits[self.index].to(s.dtype)
        return kd_loss(s.contiguous(), t.contiguous(), labels.contiguous(), self.temperature, self.alpha), s


class OnlineKDLoss:
    """Hinton KD with the teacher run on every (augmented) batch under ``no_grad``; targets are labels."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher = teacher
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, model, inputs, labels):
        s = model(inputs)
        with torch.no_grad():
            t = self.teacher(inputs).to(s.dtype)
        return kd_loss(s.contiguous(), t.contiguous(), labels.contiguous(), self.temperature, self.alpha), s


class ClipGradNorm(TrainCallback):
    """Clip the gradient's global L2 norm to ``max_norm`` after the backward pass (0: off).

    It caps the failure a confident teacher causes in a small student: on the MNIST split
    the first KD steps had gradient norms of 5-8 that momentum carried to 34 and 74, and the
    step after switched off most of a LeNet-5 x0.25's units. Steps of ordinary size are
    untouched. Under DDP it runs after the all-reduce, so every rank clips alike.
    """

    def __init__(self, max_norm: float):
        self.max_norm = float(max_norm)

    @torch.no_grad()
    def after_backward(self, model, step: int) -> None:
        if self.max_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], self.max_norm)


class KDWarmup(TrainCallback):
    """Linear learning-rate warm-up over the first ``steps`` optimizer steps, as a gradient scale.

    At step ``t < steps`` every gradient is multiplied by ``(t + 1) / steps`` after the
    backward pass (after DDP's all-reduce, so every rank scales alike); for SGD this is
    the rate ``lr * (t + 1) / steps`` (weight decay, added inside the optimizer step, is
    not scaled). It depends only on ``t``, so ``--resume`` continues it exactly. Adam
    normalises gradient scale away and needs no warm-up; there it has next to no effect.
    """

    def __init__(self, steps: int):
        self.steps = max(int(steps), 0)

    def factor(self, step: int) -> float:
        return 1.0 if step >= self.steps else (step + 1) / self.steps

    @torch.no_grad()
    def after_backward(self, model, step: int) -> None:
        f = self.factor(step)
        if f < 1.0:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(f)
