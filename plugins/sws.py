"""Soft weight-sharing: a learned Gaussian-mixture prior prunes and quantises in one retraining.

K. Ullrich, E. Meeds, M. Welling. "Soft Weight-Sharing for Neural Network
Compression", ICLR 2017 (seed code: the authors' tutorial and okz12/NeuralNetworkCompression).

Step 1 is the incoming (trained) model.

Step 2 retrains it with an empirical-Bayes prior over all conv/linear weights ``w``
(biases are left alone, as they are stored dense anyway)::

    p(w) = prod_i  sum_{j=0}^{J-1} pi_j N(w_i | mu_j, sigma_j^2)

Component 0 is fixed at ``mu_0 = 0`` with a fixed, large mixing proportion ``pi_0``
(``pi_zero``, 0.999); the other ``J - 1`` components (``components`` J = 32 in all by
default, twice the paper's 16: with 16, LeNet-5 on digits lost 1.95 / 6.41 / 3.62 points
over seeds 0-2 once snapped, one learned component holding hundreds of weights it could
not gather; with 32, 0.56 / 0.55 / 1.11, for files 1-4 % larger; docs/BENCHMARKS.md)
learn their means (initialised evenly over the weights' range), log-variances
(every component starts with the standard deviation of the incoming weights, or
``init_std``) and mixing proportions (softmax of free logits, sharing
``1 - pi_0``). Each precision ``lambda_j = 1 / sigma_j^2`` has a Gamma hyper-prior
``Gamma(lambda | a, b)``, whose negative log density is, up to a constant,
``(a - 1) log sigma_j^2 + b / sigma_j^2``: (a, b) = (5000, 2) for the zero component and
(250, 0.1) for the others (the paper's tutorial; options ``gamma_zero_a/b``, ``gamma_a/b``),
at ``gamma_ref_weights`` = 266,200 weights (LeNet-300-100 on MNIST). In ``sigma^2`` a Gamma
hyper-prior weighs like ``2 (a - 1)`` pseudo-weights at squared distance ``b / (a - 1)``
(sigma 0.02). The zero component takes nearly all the weights, so its pseudo-weights are kept
the same share of them: for a network of W weights its ``a - 1`` and ``b`` are multiplied by
``W / gamma_ref_weights`` (:func:`scaled_gamma`; the mode stays). Unscaled, its ~10,000
pseudo-weights outweighed LeNet-5's (8x8 digits, 21,150 weights): sigma_0 stayed at 0.012,
the pruned weights stayed spread over +-0.02 around 0, and snapping cost 11 points (97.8 ->
85.8 % with the retrained net at 97.2 %); scaled, sigma_0 shrinks to 0.004 with its weights
and pruning costs nothing. The other components keep the tutorial's (250, 0.1): weakened the
same way, a component widened over the many weights between its neighbours (sigma up to
0.6 when started at quantiles) and snapping them to its mean was worse.
The objective of the paper, ``L = -log p(T | X, w) - tau log p(w, mu, sigma, pi)``, sums the
likelihood over all N training examples; divided by N it becomes, per mini-batch, ::

    loss = mean cross-entropy + (tau / N) * ( -log p(w) - log p(lambda) )

with ``tau`` = 5e-3 and N the size of the training split. ``-log p(w)`` and its
gradients (w.r.t. the weights and all mixture parameters) come from
``slimkit.ops.gmm_prior``.

Optimiser: Adam (the paper's), learning rate ``lr`` (5e-4) for the weights and
``lr_means`` (1e-4), ``lr_log_vars`` (3e-3), ``lr_mix`` (3e-3) for the mixture. The engine
trains one optimiser with one rate, so each mixture tensor is stored as
``theta = value / s`` and used as ``s * theta`` with ``s = lr_x / lr``: Adam's step does
not depend on the scale of the gradient, so ``theta`` moves by about ``lr`` and the
value by ``s * lr = lr_x``. The mixture lives in a wrapper module during training, so
checkpoints, ``--resume`` and DDP see it like any other parameter. Only the last epoch
may be restored as the result (an earlier, better-scoring epoch is less compressed).

Training length: Adam moves a log-variance by about ``lr_log_vars`` a step, so the
components need ``|log init_std^2 - log sigma_final^2| / lr_log_vars`` steps (~1700 from
the tutorial's fixed start, std 0.25, to sigma ~ 0.02) before the weights can settle
onto them; the tutorial retrains ~7000 steps (30 epochs of 60k examples at batch 256).
Starting every component at the spread of the weights themselves (the default; about
0.05 for LeNet-300-100) cuts that phase to a third. The stage logs a warning when it is
given too few steps; on 8k MNIST examples 60-80 epochs (7-9k steps) work.

So the length of the retraining is counted in optimizer steps, not epochs: when neither
``epochs`` nor the run's ``--epochs`` is given, the stage trains the default 10 epochs
raised to at least ``min_steps`` (MIN_STEPS_DEFAULT) optimizer steps on this data set --
many more epochs on a small data set (sklearn digits: 21 steps an epoch at batch 64)
than on a large one (the MNIST split: 113). Epochs given explicitly are kept, and when
the stage then collapses, its hint names the epochs that would give the prior its steps.
Measured with LeNet-300-100, seed 0 (docs/BENCHMARKS.md): on digits 10 epochs (210 steps)
ended at 6.7 % from 98.6 %, 3000 steps at 89.4 %, 7000 steps at 95.3 %; on the MNIST split
3000 steps lost 2.45 points and 7000 steps 0.85 (96.2 -> 95.35 %, 97.1 % zeros).

Step 3 (post-processing): components whose distributions overlap are merged: ``i`` and
``j`` join when ``KL(N_i || N_j)`` or ``KL(N_j || N_i)`` is below ``merge_kl``, transitively;
a merged component gets the summed mixing proportion, the pi-weighted mean of the means
(0 when it contains the zero component) and of the precisions. Every weight is then
set to the mean of its most responsible component (``argmax_j pi_j N(w | mu_j, sigma_j^2)``):
the zero component prunes (the weight becomes exactly 0 and is masked), the others
quantise. The layers become :class:`slimkit.nn.QuantizedLinear` /
``QuantizedConv2d`` with a per-layer codebook of the means it uses, stored as ``csr``
with codebook indices (Huffman coded unless ``huffman=false``).

Figures (``plots``): ``sws_weights_joint.png``, pretrained against retrained weights
coloured by the component each weight ends in, with the component means and their
±2 sigma bands and log-count marginals; ``sws_weights_histogram.png``, the retrained
weights' histogram (log counts) with the mixture density (scaled to counts) over it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit import hookimpl, ops
from slimkit.api import Method, Option, TrainCallback
from slimkit.errors import UserError
from slimkit.nn import (codebook_layers, effective_weight, quantizable_layers, quantized_twin, replace_layer,
                        to_masked)
from slimkit.storage import stored_bytes

#: slimkit.ops.gmm_prior takes at most this many mixture components.
MAX_COMPONENTS = 64
#: The paper's tutorial retrains about this many steps; a collapse hint suggests at least this.
TUTORIAL_STEPS = 7000
#: Default least number of optimizer steps of the retraining when no epochs are given (see
#: "Training length"): the tutorial's; 3000 left LeNet-300-100 on digits 9 points down.
MIN_STEPS_DEFAULT = TUTORIAL_STEPS
#: The zero component's Gamma hyper-prior (a, b) is the tutorial's at this many weights: LeNet-300-100 on
#: 28x28 inputs (784*300 + 300*100 + 100*10), where they were measured (docs/BENCHMARKS.md); see
#: :func:`scaled_gamma` for other sizes.
GAMMA_REF_WEIGHTS = 266_200

__all__ = ["SoftWeightSharing", "MixturePrior", "kl_gaussian", "merge_components", "responsibilities_argmax",
           "gamma_neg_log_prior", "scaled_gamma"]


# --------------------------------------------------------------------------- the prior

def gamma_neg_log_prior(log_vars: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``-log Gamma(lambda | a, b)`` up to a constant, for precisions ``lambda = exp(-log_vars)``:
    ``sum (a - 1) * log_var + b * exp(-log_var)``."""
    return ((a - 1.0) * log_vars + b * torch.exp(-log_vars)).sum()


def scaled_gamma(a: float, b: float, weights: int, ref_weights: int) -> tuple[float, float]:
    """The Gamma hyper-prior ``(a, b)``, given for ``ref_weights`` weights, for a network of ``weights``.

    As a function of ``sigma^2`` the hyper-prior ``(a - 1) log sigma^2 + b / sigma^2`` is the
    ``-log N`` of ``2 (a - 1)`` pseudo-weights whose mean squared distance from the mean is
    ``b / (a - 1)``. Those pseudo-weights are kept a fixed share of the network's weights:
    ``a - 1`` and ``b`` are multiplied by ``weights / ref_weights``, so the mode of the
    precision, ``(a - 1) / b``, stays. Used for the zero component, which takes nearly all
    the weights (see the module docstring). ``ref_weights`` 0 keeps ``(a, b)`` as given."""
    if ref_weights <= 0 or weights == ref_weights:
        return float(a), float(b)
    factor = weights / ref_weights
    return 1.0 + (a - 1.0) * factor, b * factor


class MixturePrior(nn.Module):
    """The Gaussian-mixture prior of soft weight-sharing, with its hyper-prior.

    ``means()``, ``log_vars()``, ``mix_logits()`` give all ``J`` components (component 0
    first, at mean 0 with mixing proportion ``pi_zero``); ``forward(weights)`` is
    ``-log p(weights) - log p(precisions)``. ``scales`` = (means, log_vars, mix) are the
    learning-rate ratios described in the module docstring.
    """

    def __init__(self, components: int, init_means: torch.Tensor, init_std: float, pi_zero: float,
                 gamma_zero=(5000.0, 2.0), gamma=(250.0, 0.1), scales=(1.0, 1.0, 1.0)):
        super().__init__()
        if components < 2:
            raise ValueError("soft weight-sharing needs at least 2 components (the zero one and another)")
        if init_means.numel() != components - 1:
            raise ValueError(f"{init_means.numel()} initial means for {components - 1} learned components")
        self.components = components
        self.pi_zero = float(pi_zero)
        self.gamma_zero = tuple(float(v) for v in gamma_zero)
        self.gamma = tuple(float(v) for v in gamma)
        self.scales = tuple(float(s) for s in scales)
        s_mu, s_lv, s_mix = self.scales
        self.mean_param = nn.Parameter(init_means.detach().float().clone() / s_mu)
        self.log_var_param = nn.Parameter(torch.full((components,), 2 * math.log(init_std)) / s_lv)
        self.mix_param = nn.Parameter(torch.zeros(components - 1))

    def means(self) -> torch.Tensor:
        return torch.cat([self.mean_param.new_zeros(1), self.scales[0] * self.mean_param])

    def log_vars(self) -> torch.Tensor:
        return self.scales[1] * self.log_var_param

    def mix_logits(self) -> torch.Tensor:
        """Logits whose softmax is ``[pi_zero, (1 - pi_zero) softmax(learned)]`` exactly."""
        rest = math.log1p(-self.pi_zero) + torch.log_softmax(self.scales[2] * self.mix_param, 0)
        return torch.cat([rest.new_full((1,), math.log(self.pi_zero)), rest])

    def mixing(self) -> torch.Tensor:
        return torch.softmax(self.mix_logits(), 0)

    def neg_log_hyperprior(self) -> torch.Tensor:
        lv = self.log_vars()
        return gamma_neg_log_prior(lv[:1], *self.gamma_zero) + gamma_neg_log_prior(lv[1:], *self.gamma)

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return ops.gmm_prior(weights, self.means(), self.log_vars(), self.mix_logits()) + self.neg_log_hyperprior()

    @torch.no_grad()
    def snapshot(self) -> dict:
        return {"means": self.means().tolist(), "stds": torch.exp(0.5 * self.log_vars()).tolist(),
                "mixing": self.mixing().tolist()}


class _WithPrior(nn.Module):
    """The network plus the prior during step 2. ``forward`` is the network's; in training
    it also evaluates the prior on the current weights (so that DDP sees the mixture
    parameters used in the forward pass) and leaves it in ``complexity``."""

    def __init__(self, net: nn.Module, prior: MixturePrior, layers):
        super().__init__()
        self.net = net
        self.prior = prior
        self.layers = tuple(layers)  # a plain tuple: already registered inside ``net``
        self.complexity = None

    def weights(self) -> torch.Tensor:
        return torch.cat([m.weight.reshape(-1) for m in self.layers])

    def forward(self, x):
        out = self.net(x)
        if self.training and torch.is_grad_enabled():
            self.complexity = self.prior(self.weights())
        return out


class _Monitor(TrainCallback):
    """Per epoch: the complexity term, the share of weights the zero component would
    take, the mixture; only the final epoch may be restored as the result."""

    def __init__(self, wrapper: _WithPrior, epochs: int):
        self.wrapper = wrapper
        self.epochs = epochs
        self.history: list[dict] = []

    @torch.no_grad()
    def on_epoch_end(self, model, epoch: int, metrics: dict) -> None:
        prior = self.wrapper.prior
        w = self.wrapper.weights().detach()
        comp = responsibilities_argmax(w, prior.means(), prior.log_vars(), prior.mix_logits())
        metrics["sws_zero_fraction"] = float((comp == 0).float().mean())
        metrics["sws_complexity"] = float(prior(w))
        snap = prior.snapshot()
        metrics["sws_zero_std"] = snap["stds"][0]
        self.history.append({"epoch": epoch, **snap, "zero_fraction": metrics["sws_zero_fraction"]})
        if epoch < self.epochs:
            metrics["checkpoint_ok"] = False


# --------------------------------------------------------------------------- step 3

def kl_gaussian(mu_p, log_var_p, mu_q, log_var_q):
    """``KL(N(mu_p, var_p) || N(mu_q, var_q))`` (works on tensors, broadcasting)."""
    return 0.5 * (log_var_q - log_var_p + (torch.exp(log_var_p) + (mu_p - mu_q) ** 2) / torch.exp(log_var_q) - 1.0)


@torch.no_grad()
def merge_components(means: torch.Tensor, log_vars: torch.Tensor, mixing: torch.Tensor, threshold: float):
    """Merge components whose KL divergence (either direction) is below ``threshold``, transitively.

    Returns ``(means, log_vars, mixing, groups)`` of the merged mixture (float64); the
    group holding component 0 comes first and keeps mean 0. A merged component has the
    summed mixing proportion and the mixing-weighted means of the means and precisions.
    """
    mu, lv, pi = (t.detach().double().cpu() for t in (means, log_vars, mixing))
    k = mu.numel()
    kl = kl_gaussian(mu[:, None], lv[:, None], mu[None, :], lv[None, :])
    close = (kl < threshold) | (kl.T < threshold)
    parent = list(range(k))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(k):
        for j in range(i + 1, k):
            if bool(close[i, j]):
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(find(i), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (0 not in g, g[0]))
    new_mu, new_lv, new_pi = [], [], []
    for g in ordered:
        idx = torch.tensor(g)
        p = pi[idx]
        total = p.sum()
        weight = p / total if float(total) > 0 else torch.full_like(p, 1.0 / len(g))
        new_pi.append(total)
        new_mu.append(torch.zeros((), dtype=torch.float64) if 0 in g else (weight * mu[idx]).sum())
        new_lv.append(-torch.log((weight * torch.exp(-lv[idx])).sum()))
    return torch.stack(new_mu), torch.stack(new_lv), torch.stack(new_pi), ordered


@torch.no_grad()
def responsibilities_argmax(weights: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor,
                            mix_logits_or_log_pi: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Most responsible component of each weight: ``argmax_j log pi_j + log N(w | mu_j, sigma_j^2)``.

    The last argument may be mixing logits or log proportions (``log_softmax`` is applied).
    """
    w = weights.detach().reshape(-1).double()
    mu = means.detach().double().to(w.device)
    lv = log_vars.detach().double().to(w.device)
    log_pi = torch.log_softmax(mix_logits_or_log_pi.detach().double().to(w.device), 0)
    out = torch.empty(w.numel(), dtype=torch.long, device=w.device)
    for start in range(0, w.numel(), chunk):
        x = w[start:start + chunk, None]
        score = log_pi - 0.5 * lv - 0.5 * (x - mu) ** 2 / torch.exp(lv)
        out[start:start + chunk] = score.argmax(1)
    return out


# --------------------------------------------------------------------------- plots

def _plot_joint(path, initial, final, comp, means, log_vars, seed: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    initial, final, comp = (np.asarray(a) for a in (initial, final, comp))
    rng = np.random.default_rng(seed)
    show = rng.permutation(initial.size)[:60000]
    stds = np.exp(0.5 * np.asarray(log_vars))
    fig = plt.figure(figsize=(8, 8))
    grid = fig.add_gridspec(4, 4, hspace=0.05, wspace=0.05)
    ax = fig.add_subplot(grid[1:, :3])
    top = fig.add_subplot(grid[0, :3], sharex=ax)
    right = fig.add_subplot(grid[1:, 3], sharey=ax)
    lo = float(min(initial.min(), final.min())) * 1.05
    hi = float(max(initial.max(), final.max())) * 1.05
    for j, (mu, sd) in enumerate(zip(np.asarray(means), stds)):
        ax.axhspan(mu - 2 * sd, mu + 2 * sd, color="green" if j == 0 else "tab:blue", alpha=0.08, lw=0)
        ax.axhline(mu, color="k", lw=0.4)
    ax.scatter(initial[show], final[show], c=comp[show], cmap="tab20", s=3, lw=0, rasterized=True)
    ax.set(xlabel="pretrained weight", ylabel="retrained weight", xlim=(lo, hi), ylim=(lo, hi))
    top.hist(initial, bins=300, color="tab:gray", log=True)
    right.hist(final, bins=300, color="tab:gray", log=True, orientation="horizontal")
    top.tick_params(labelbottom=False)
    right.tick_params(labelleft=False)
    top.set_title("soft weight-sharing: weight movement (colour = component after merging)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plot_histogram(path, final, means, log_vars, mixing, quantized):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = np.asarray(final)
    mu, lv, pi = (np.asarray(a, dtype=np.float64) for a in (means, log_vars, mixing))
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    counts, edges, _ = axes[0].hist(final, bins=200, color="tab:green", log=True, label="retrained weights")
    width = edges[1] - edges[0]
    xs = np.linspace(edges[0], edges[-1], 2000)
    sd = np.exp(0.5 * lv)
    z = (xs[None, :] - mu[:, None]) / sd[:, None]
    dens = pi[:, None] * np.exp(-0.5 * z ** 2) / (sd[:, None] * np.sqrt(2 * np.pi))
    scale = final.size * width
    axes[0].plot(xs, scale * dens.sum(0), color="k", lw=1, label="mixture (scaled to counts)")
    for j in range(mu.size):
        axes[0].plot(xs, scale * dens[j], lw=0.6, ls="--", color="tab:red" if j == 0 else "tab:blue")
    axes[0].set_ylim(0.5, max(counts.max(), 1) * 3)
    axes[0].set(ylabel="count (log)", title="soft weight-sharing: weights and the learned mixture")
    axes[0].legend(fontsize=8)
    q = np.asarray(quantized)
    values, q_counts = np.unique(q, return_counts=True)
    axes[1].bar(values, q_counts, width=width * 2, color="tab:purple", log=True)
    axes[1].set(xlabel="weight", ylabel="count (log)", title="after merging and quantisation (0 = pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- method

class SoftWeightSharing(Method):
    name = "sws"
    summary = ("Soft weight-sharing: retrain under a learned Gaussian-mixture prior, merge components, "
               "snap weights to component means (zero prunes) (Ullrich et al. 2017).")
    paper = ("K. Ullrich, E. Meeds, M. Welling. Soft Weight-Sharing for Neural Network Compression. "
             "ICLR 2017.")
    options = [
        Option("components", int, 32, "mixture components J, the fixed zero component included (the paper: "
               "16; 32 keeps small conv nets from losing points when snapped)", min=2,
               max=MAX_COMPONENTS),
        Option("pi_zero", float, 0.999, "fixed mixing proportion of the zero component", min=1e-6, max=0.999999),
        Option("tau", float, 5e-3, "weight of the prior: loss = CE + tau / N_train * (-log prior)", min=0.0),
        Option("init_std", float, 0.0, "initial standard deviation of every component (0 = the standard "
               "deviation of the incoming weights)", min=0.0),
        Option("gamma_zero_a", float, 5000.0, "Gamma hyper-prior shape a of the zero component's precision",
               min=1.0),
        Option("gamma_zero_b", float, 2.0, "Gamma hyper-prior rate b of the zero component's precision", min=0.0),
        Option("gamma_a", float, 250.0, "Gamma hyper-prior shape a of the other precisions", min=1.0),
        Option("gamma_b", float, 0.1, "Gamma hyper-prior rate b of the other precisions", min=0.0),
        Option("gamma_ref_weights", int, GAMMA_REF_WEIGHTS, "gamma_zero_a/b are for a network of this many "
               "weights; for another count their pseudo-count a - 1 and rate b scale with the number of weights, "
               "keeping the mode (0 = use them as given)", min=0),
        Option("lr_means", float, 1e-4, "learning rate of the component means", min=0.0),
        Option("lr_log_vars", float, 3e-3, "learning rate of the component log-variances", min=0.0),
        Option("lr_mix", float, 3e-3, "learning rate of the mixing-proportion logits", min=0.0),
        Option("merge_kl", float, 1e-2, "merge two components when the KL divergence between them (either "
               "direction) is below this", min=0.0),
        Option("huffman", bool, True, "Huffman-code the stored indices and relative positions"),
        Option("pos_bits", int, 0, "bits of a relative position in sparse storage (0 = the smallest)",
               min=0, max=8),
        Option("min_steps", int, MIN_STEPS_DEFAULT, "when neither this epochs option nor --epochs is given: "
               "retrain at least this many optimizer steps (the prior's variances and the weights need them: "
               "too few and the snapped model collapses), i.e. ceil(min_steps / steps per epoch) epochs", min=0),
        Option("plots", bool, True, "write sws_weights_joint.png and sws_weights_histogram.png"),
    ]
    # the common option lr is the Adam rate of the network weights; the mixture's rates are its own options
    common_defaults = {"lr": 5e-4}
    common_unset = {"epochs": "the run's --epochs; without --epochs, the default 10 raised to reach min_steps "
                              "optimizer steps on this data set"}

    def check(self, model, opts: dict) -> None:
        if not quantizable_layers(model):
            raise UserError("sws: the model has no nn.Conv2d or nn.Linear layers; there are no weights to share")
        if opts.get("lr", 5e-4) <= 0:
            raise UserError("sws: lr must be positive (the mixture's rates are set relative to it)")

    def apply(self, model, ctx, opts: dict):
        self.check(model, opts)
        model = to_masked(model)
        names, layers = zip(*quantizable_layers(model))
        with torch.no_grad():
            initial = torch.cat([effective_weight(m).reshape(-1) for m in layers]).detach().cpu()
        k = opts["components"]
        lr = opts["lr"]
        scales = (opts["lr_means"] / lr, opts["lr_log_vars"] / lr, opts["lr_mix"] / lr)
        if min(scales) <= 0:
            raise UserError("sws: lr_means, lr_log_vars and lr_mix must be positive")
        init_means = torch.linspace(float(initial.min()), float(initial.max()), k - 1)
        init_std = opts["init_std"] or float(initial.std())
        if not init_std > 0:
            raise UserError("sws: the weights are all equal, so init_std cannot be derived from them; set init_std")
        n_weights, ref = initial.numel(), opts["gamma_ref_weights"]
        gamma_zero = scaled_gamma(opts["gamma_zero_a"], opts["gamma_zero_b"], n_weights, ref)
        gamma = (opts["gamma_a"], opts["gamma_b"])  # not scaled: see the module docstring
        prior = MixturePrior(k, init_means, init_std, opts["pi_zero"], gamma_zero, gamma, scales).to(ctx.device)
        wrapper = _WithPrior(model, prior, layers)
        n_train = ctx.data.size("train")
        coef = opts["tau"] / max(n_train, 1)

        def loss(net, inputs, targets):
            logits = net(inputs)
            inner = getattr(net, "module", net)
            return F.cross_entropy(logits, targets) + coef * inner.complexity, logits

        per_epoch = ctx.steps_per_epoch()
        epochs = ctx.stage_epochs(opts["epochs"], opts["min_steps"])
        if opts["epochs"] is None and epochs > ctx.epochs:
            ctx.log(f"sws: {epochs} epoch(s) instead of the run's {ctx.epochs}: {per_epoch} optimizer steps an "
                    f"epoch, and the prior needs at least min_steps={opts['min_steps']}")
        monitor = _Monitor(wrapper, epochs)
        ctx.log(f"sws: retraining {epochs} epoch(s) under a {k}-component mixture prior over "
                f"{initial.numel():,} weights (tau={opts['tau']:g}, N={n_train}, pi_zero={opts['pi_zero']}, "
                f"init_std={init_std:.4g}, Gamma hyper-priors (a, b) zero {gamma_zero[0]:.4g}, {gamma_zero[1]:.4g}, "
                f"others {gamma[0]:.4g}, {gamma[1]:.4g})")
        steps = epochs * per_epoch
        needed = abs(math.log(init_std ** 2) - math.log(0.02 ** 2)) / opts["lr_log_vars"]
        if steps < 2 * needed:
            ctx.log(f"sws: WARNING {steps} optimizer steps may be too few: with lr_log_vars={opts['lr_log_vars']:g} "
                    f"the variances need ~{needed:.0f} steps at full rate to shrink from init_std="
                    f"{init_std:g} to the hyper-prior's scale, and the weights more to settle; "
                    f"train more epochs (the paper's tutorial: ~7000 steps) or start from a smaller init_std")
        val_before = ctx.evaluate(model, "val")
        if epochs > 0:
            ctx.train(wrapper, epochs=epochs, lr=lr, loss=loss, optimizer="adam", callbacks=[monitor])
        wrapper.complexity = None
        val_retrained = ctx.evaluate(model, "val")

        # ---- step 3: merge, assign, quantise
        with torch.no_grad():
            retrained = torch.cat([effective_weight(m).reshape(-1) for m in layers]).detach()
            mixing = prior.mixing()
            merged_mu, merged_lv, merged_pi, groups = merge_components(prior.means(), prior.log_vars(), mixing,
                                                                       opts["merge_kl"])
            comp = responsibilities_argmax(retrained, merged_mu, merged_lv, torch.log(merged_pi.clamp(min=1e-300)))
            values = merged_mu.float().to(retrained.device)[comp]
            offset, rows = 0, []
            for name, layer in zip(names, layers):
                n = layer.weight.numel()
                c = comp[offset:offset + n].cpu()
                v = values[offset:offset + n].cpu()
                offset += n
                keep = (c != 0) & (layer.weight_mask.reshape(-1).cpu() != 0)
                codebook = torch.unique(v[keep]) if bool(keep.any()) else torch.zeros(1)
                index = torch.searchsorted(codebook, v).clamp(max=codebook.numel() - 1)
                new = quantized_twin(layer, "codebook", num_codes=codebook.numel(), pos_bits=opts["pos_bits"],
                                     huffman=opts["huffman"])
                dev = new.weight.device
                new.set_codes(codebook.to(dev), index.to(dev), keep.to(dev))
                replace_layer(model, name, new)
                rows.append({"name": name, "params": n, "zeros": int(n - keep.sum()),
                             "sparsity": float(1 - keep.float().mean()), "codebook_size": int(codebook.numel())})
            final = torch.cat([m.weight.reshape(-1) for _, m in codebook_layers(model)]).cpu()
        for row in rows:
            row["stored_bytes"] = stored_bytes(model, f"{row['name']}.weight")
        zeros = sum(r["zeros"] for r in rows)
        total = sum(r["params"] for r in rows)
        ctx.log(f"sws: {len(groups)} component(s) after merging {k}; {zeros}/{total} weights are zero "
                f"({zeros / total:.4f})")
        if opts["plots"]:
            joint, hist = ctx.plot_path("sws_weights_joint.png"), ctx.plot_path("sws_weights_histogram.png")
            if joint is not None:
                _plot_joint(joint, initial.numpy(), retrained.cpu().numpy(), comp.cpu().numpy(),
                            merged_mu.numpy(), merged_lv.numpy(), ctx.seed)
                _plot_histogram(hist, retrained.cpu().numpy(), merged_mu.numpy(), merged_lv.numpy(),
                                merged_pi.numpy(), final.numpy())
        ctx.record(
            sparsity=zeros / total, zeros=zeros, weights=total, layers=rows, components=k,
            components_after_merge=len(groups), merged_groups=groups,
            mixture={"means": merged_mu.tolist(), "stds": torch.exp(0.5 * merged_lv).tolist(),
                     "mixing": merged_pi.tolist()},
            mixture_history=monitor.history, tau=opts["tau"], prior_coefficient=coef, init_std=init_std,
            gamma_zero=list(gamma_zero), gamma=list(gamma),
            val_accuracy_before=val_before, val_accuracy_retrained=val_retrained,
            epochs=epochs, optimizer_steps=steps, steps_per_epoch=per_epoch,
            weight_bytes=sum(r["stored_bytes"] for r in rows), dense_weight_bytes=4 * total,
        )
        return model

    def collapse_hint(self, opts: dict, ctx) -> str:
        steps = ctx.results.get("optimizer_steps")
        per_epoch = ctx.results.get("steps_per_epoch") or ctx.steps_per_epoch()
        before, retrained = ctx.results.get("val_accuracy_before"), ctx.results.get("val_accuracy_retrained")
        if steps is not None and steps >= TUTORIAL_STEPS and before is not None and retrained is not None \
                and retrained >= before - 0.02:
            # enough steps and the retrained network is fine: the points were lost in snapping
            return (f"likely cause: snapping, not training (validation {before:.2%} before, {retrained:.2%} "
                    f"retrained): the weights did not gather on the {opts.get('components', 16)} components; try "
                    f"--set components={2 * opts.get('components', 16)} (LeNet-5 on digits, seed 1: 84.96 -> "
                    f"90.81 % with 32)")
        if steps is None:
            return "likely cause: too few optimizer steps for the prior; try more --epochs"
        want = max(2 * steps, TUTORIAL_STEPS)
        return (f"likely cause: too few optimizer steps for the prior ({steps} steps, {per_epoch} an epoch; the "
                f"paper's tutorial retrains ~{TUTORIAL_STEPS}): the weights were snapped to components they had "
                f"not settled on; try --epochs {math.ceil(want / per_epoch)} (or --set sws.epochs=...), or a "
                f"smaller tau")


@hookimpl
def register_methods(register):
    register(SoftWeightSharing())
