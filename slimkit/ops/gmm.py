"""Gaussian-mixture prior of soft weight-sharing (Ullrich, Meeds & Welling 2017).

:func:`gmm_prior` runs the native kernel (``slimkit::gmm_prior_forward`` /
``slimkit::gmm_prior_backward``, csrc/cpu/gmm_prior.cpp, csrc/cuda/gmm_prior.cu) when
:mod:`slimkit.ops.backend` has it for the weights' device and
:func:`gmm_prior_reference` otherwise; both validate their arguments the same way.
"""
from __future__ import annotations

import math

import torch

from slimkit.ops import backend

__all__ = ["gmm_prior", "gmm_prior_reference", "MAX_COMPONENTS"]

#: Largest number of mixture components the kernels accept.
MAX_COMPONENTS = 64


def _validate(weights, means, log_vars, mix_logits) -> None:
    args = (("weights", weights), ("means", means), ("log_vars", log_vars), ("mix_logits", mix_logits))
    for name, x in args:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"gmm_prior: {name} must be a torch.Tensor, got {type(x).__name__}")
    if weights.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"gmm_prior: weights must be float32 or float64, got {weights.dtype}")
    if not weights.is_contiguous():
        raise ValueError("gmm_prior: weights must be contiguous; pass weights.contiguous() (or torch.cat of "
                         "p.reshape(-1) over the parameters)")
    for name, x in args[1:]:
        if x.dtype != weights.dtype:
            raise TypeError(f"gmm_prior: {name} must have the weights' dtype {weights.dtype}, got {x.dtype}")
        if x.device != weights.device:
            raise ValueError(f"gmm_prior: {name} is on {x.device} but the weights on {weights.device}")
        if x.dim() != 1:
            raise ValueError(f"gmm_prior: {name} must be 1-D [K], got shape {tuple(x.shape)}")
    K = means.shape[0]
    for name, x in args[2:]:
        if x.shape[0] != K:
            raise ValueError(f"gmm_prior: {name} has {x.shape[0]} components but means has {K}; all three must "
                             f"have length K")
    if not 1 <= K <= MAX_COMPONENTS:
        raise ValueError(f"gmm_prior: the number of components K must be in [1, {MAX_COMPONENTS}], got {K}")


def gmm_prior_reference(weights, means, log_vars, mix_logits):
    """Pure-PyTorch :func:`gmm_prior` (same formula, arguments and dtype; works in float64).

    Materialises the N x K log-densities: it is the reference, not the fast path.
    """
    w = weights.reshape(-1, 1)
    log_pi = torch.log_softmax(mix_logits, 0)
    log_n = -0.5 * (math.log(2 * math.pi) + log_vars + (w - means) ** 2 / log_vars.exp())
    return -torch.logsumexp(log_pi + log_n, dim=1).sum()


def gmm_prior(weights, means, log_vars, mix_logits):
    r"""Negative log-likelihood of the weights under a Gaussian mixture: the prior term of
    soft weight-sharing (Ullrich, Meeds & Welling 2017, "Soft Weight-Sharing for Neural
    Network Compression", ICLR, arXiv:1702.04008).

    .. math::

        \mathcal{L} = -\sum_{n=1}^{N} \log \sum_{k=1}^{K} \pi_k\,
        \mathcal{N}\big(w_n \mid \mu_k, e^{\lambda_k}\big),\qquad \pi = \mathrm{softmax}(\text{mix\_logits})

    with :math:`\lambda` = ``log_vars``. Evaluated with log-sum-exp, so it stays finite
    when a weight is far from every mean (every density underflows).

    Args:
        weights: float32 or float64 tensor of any shape, contiguous, read as a flat
            vector of N weights (``torch.cat([p.reshape(-1) for p in params])``).
        means, log_vars, mix_logits: ``[K]``, same dtype and device, ``1 <= K <= 64``.

    Returns:
        A 0-dim tensor of the weights' dtype, differentiable w.r.t. all four inputs.

    The native kernel never materialises N x K: each weight's K log-densities stay in
    registers / a stack array, each thread accumulates the 3K parameter-gradient sums,
    and the per-chunk partial sums are reduced in a fixed order (deterministic). When a
    gradient is needed, the loss and all four gradients come from one pass over the
    weights (``slimkit::gmm_prior_value_and_grad``) and the backward scales them by the
    incoming gradient; the weight gradient (N values) is held from forward to backward.

    Raises:
        TypeError, ValueError: for bad arguments, saying what was expected.
    """
    _validate(weights, means, log_vars, mix_logits)
    args = (weights, means, log_vars, mix_logits)
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        if backend.use_native(weights, "slimkit::gmm_prior_value_and_grad"):
            # training: loss and gradients in one pass; the backward only scales them
            return torch.ops.slimkit.gmm_prior_value_and_grad(*args)[0]
    elif backend.use_native(weights, "slimkit::gmm_prior_forward"):
        return torch.ops.slimkit.gmm_prior_forward(*args)
    return gmm_prior_reference(*args)


@backend.on_load
def _register() -> None:
    """Fake kernels and autograd of the native ops (run once the library is loaded)."""

    @torch.library.register_fake("slimkit::gmm_prior_forward")
    def _forward_fake(weights, means, log_vars, mix_logits):
        return weights.new_empty(())

    @torch.library.register_fake("slimkit::gmm_prior_backward")
    def _backward_fake(grad, weights, means, log_vars, mix_logits):
        return (torch.empty_like(weights), torch.empty_like(means), torch.empty_like(log_vars),
                torch.empty_like(mix_logits))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        if not any(ctx.needs_input_grad):
            return None, None, None, None
        grads = torch.ops.slimkit.gmm_prior_backward(grad, *ctx.saved_tensors)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))

    torch.library.register_autograd("slimkit::gmm_prior_forward", backward, setup_context=setup_context)

    @torch.library.register_fake("slimkit::gmm_prior_value_and_grad")
    def _value_and_grad_fake(weights, means, log_vars, mix_logits):
        return (weights.new_empty(()), torch.empty_like(weights), torch.empty_like(means),
                torch.empty_like(log_vars), torch.empty_like(mix_logits))

    def vg_setup_context(ctx, inputs, output):
        _loss, *grads = output
        ctx.mark_non_differentiable(*grads)
        ctx.set_materialize_grads(False)  # no zero-filled "gradients" for the gradient outputs
        ctx.save_for_backward(*grads)

    def vg_backward(ctx, grad, *_unused):
        if grad is None:
            return None, None, None, None
        return tuple(grad * g if need else None for g, need in zip(ctx.saved_tensors, ctx.needs_input_grad))

    torch.library.register_autograd("slimkit::gmm_prior_value_and_grad", vg_backward, setup_context=vg_setup_context)
