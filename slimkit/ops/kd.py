"""Fused knowledge-distillation loss (Hinton, Vinyals & Dean 2015).

:func:`kd_loss` runs the native kernel (``slimkit::kd_loss_forward`` /
``slimkit::kd_loss_backward``, csrc/cpu/kd_loss.cpp, csrc/cuda/kd_loss.cu) when
:mod:`slimkit.ops.backend` has it for the tensors' device and
:func:`kd_loss_reference` otherwise. Both take the same arguments and raise the same
errors for bad ones.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from slimkit.ops import backend

__all__ = ["kd_loss", "kd_loss_reference"]

_LOGIT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _validate(student_logits, teacher_logits, labels, temperature, alpha, ignore_index) -> None:
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"kd_loss: {name} must be a torch.Tensor of shape [N, C], got {type(x).__name__}")
        if x.dtype not in _LOGIT_DTYPES:
            raise TypeError(f"kd_loss: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    s, t = student_logits, teacher_logits
    if s.dim() != 2:
        raise ValueError(f"kd_loss: student_logits must be 2-D [N, C], got shape {tuple(s.shape)}")
    if t.shape != s.shape:
        raise ValueError(f"kd_loss: teacher_logits shape {tuple(t.shape)} must equal student_logits shape "
                         f"{tuple(s.shape)}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"kd_loss: logits must be non-empty, got shape {tuple(s.shape)}")
    if t.dtype != s.dtype:
        raise TypeError(f"kd_loss: teacher_logits dtype {t.dtype} must equal student_logits dtype {s.dtype}")
    if t.device != s.device:
        raise ValueError(f"kd_loss: teacher_logits are on {t.device} but student_logits on {s.device}; "
                         f"put both on one device")
    if not (s.is_contiguous() and t.is_contiguous()):
        raise ValueError("kd_loss: logits must be contiguous; pass student_logits.contiguous() and "
                         "teacher_logits.contiguous()")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"kd_loss: temperature must be a real number > 0, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd_loss: temperature must be finite and > 0, got {temperature}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"kd_loss: alpha must be a real number in [0, 1], got {type(alpha).__name__}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"kd_loss: ignore_index must be an int, got {type(ignore_index).__name__}")
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"kd_loss: labels must be None or an int64 tensor of shape [N], got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"kd_loss: labels must be int64 (torch.long), got {labels.dtype}; use labels.long()")
    if labels.shape != (s.shape[0],):
        raise ValueError(f"kd_loss: labels must have shape ({s.shape[0]},) to match the logits, got "
                         f"{tuple(labels.shape)}")
    if labels.device != s.device:
        raise ValueError(f"kd_loss: labels are on {labels.device} but the logits on {s.device}")
    if not labels.is_contiguous():
        raise ValueError("kd_loss: labels must be contiguous; pass labels.contiguous()")


def kd_loss_reference(student_logits, teacher_logits, labels=None, temperature=4.0, alpha=0.9, ignore_index=-100):
    """Pure-PyTorch :func:`kd_loss` (same formula, arguments and result dtype).

    Computes in float64 for float64 logits and in float32 otherwise; materialises
    several N x C temporaries (it is the reference, not the fast path).
    """
    acc = _acc_dtype(student_logits.dtype)
    T = float(temperature)
    s = student_logits.to(acc)
    t = teacher_logits.detach().to(acc)
    log_p_s = F.log_softmax(s / T, dim=1)
    log_p_t = F.log_softmax(t / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean() * (T * T)
    if labels is None:
        return kl
    ce_sum = F.cross_entropy(s, labels, ignore_index=ignore_index, reduction="sum")
    n_valid = (labels != ignore_index).sum().clamp(min=1)
    return alpha * kl + (1.0 - alpha) * (ce_sum / n_valid)


def kd_loss(student_logits, teacher_logits, labels=None, temperature=4.0, alpha=0.9, ignore_index=-100):
    r"""Hinton knowledge-distillation loss, fused (Hinton, Vinyals & Dean 2015, "Distilling the
    Knowledge in a Neural Network", arXiv:1503.02531).

    .. math::

        \mathcal{L} = \alpha\,T^2\,\frac{1}{N}\sum_i \mathrm{KL}\big(\mathrm{softmax}(t_i/T)\,\|\,
        \mathrm{softmax}(s_i/T)\big) + (1-\alpha)\,\frac{1}{|V|}\sum_{i\in V} -\log \mathrm{softmax}(s_i)_{y_i}

    with :math:`V = \{i : y_i \ne \text{ignore\_index}\}`. With ``labels=None`` only the
    first term is computed and ``alpha`` is ignored (weight 1); when every label is
    ignored the cross-entropy term is 0, not NaN. The :math:`T^2` keeps the soft
    term's gradient scale independent of the temperature.

    Args:
        student_logits: ``[N, C]`` float32, float64, float16 or bfloat16, contiguous.
        teacher_logits: ``[N, C]``, same dtype and device. Treated as a constant: no
            gradient flows to it (as if ``.detach()``-ed).
        labels: ``None`` or int64 ``[N]`` class indices in ``[0, C)`` or ``ignore_index``.
        temperature: ``T > 0``.
        alpha: weight of the soft term, in ``[0, 1]``.
        ignore_index: label value that is left out of the cross-entropy term.

    Returns:
        A 0-dim tensor, float64 for float64 logits and float32 otherwise (half
        inputs are accumulated in float32). Differentiable w.r.t. ``student_logits``.

    The native kernel reads each row once per direction (online softmax with running
    maxima and sums) and keeps only 5 numbers per row for the backward: no N x C
    temporary besides the gradient itself.

    Raises:
        TypeError, ValueError: for bad arguments, saying what was expected.
    """
    _validate(student_logits, teacher_logits, labels, temperature, alpha, ignore_index)
    if backend.use_native(student_logits, "slimkit::kd_loss_forward"):
        loss, _stats = torch.ops.slimkit.kd_loss_forward(student_logits, teacher_logits, labels, float(temperature),
                                                         float(alpha), int(ignore_index))
        return loss
    return kd_loss_reference(student_logits, teacher_logits, labels, temperature, alpha, ignore_index)


@backend.on_load
def _register() -> None:
    """Fake kernels and autograd of the native ops (run once the library is loaded)."""

    @torch.library.register_fake("slimkit::kd_loss_forward")
    def _forward_fake(student, teacher, labels, temperature, alpha, ignore_index):
        acc = _acc_dtype(student.dtype)
        return student.new_empty((), dtype=acc), student.new_empty((student.shape[0], 5), dtype=acc)

    @torch.library.register_fake("slimkit::kd_loss_backward")
    def _backward_fake(grad_loss, student, teacher, labels, stats, temperature, alpha, ignore_index):
        return torch.empty_like(student)

    def setup_context(ctx, inputs, output):
        student, teacher, labels, temperature, alpha, ignore_index = inputs
        _loss, stats = output
        ctx.save_for_backward(student, teacher, labels, stats)
        ctx.hparams = (temperature, alpha, ignore_index)
        ctx.mark_non_differentiable(stats)
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, _grad_stats):
        student, teacher, labels, stats = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and grad_loss is not None:
            grad = torch.ops.slimkit.kd_loss_backward(grad_loss, student, teacher, labels, stats, *ctx.hparams)
        return grad, None, None, None, None, None

    torch.library.register_autograd("slimkit::kd_loss_forward", backward, setup_context=setup_context)
