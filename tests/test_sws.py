"""Method `sws`: soft weight-sharing (Ullrich, Meeds & Welling 2017): the mixture prior and
its hyper-prior against the formula, the learning-rate scales, the KL merge, the
responsibilities, and a quick end-to-end run through the engine's loop."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from slimkit import storage
from slimkit.api import DistInfo, StageContext, epochs_for_steps
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.nn import codebook_layers
from slimkit.plugins import load_registry
from slimkit.progress import Reporter
from slimkit.train import Trainer
from slimkit_plugins import sws

INFO = {"model": "mlp", "input_shape": [1, 6, 6], "num_classes": 4, "data": {}}


def make_ctx(tmp_path, epochs, stage="sws"):
    bundle = DataBundle("synthetic", load_synthetic("384x1x6x6@4", 0), seed=0)
    trainer = Trainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=32, reporter=Reporter(False))
    return StageContext(stage=stage, data=bundle, device=torch.device("cpu"), dist=DistInfo(), out_dir=tmp_path,
                        seed=0, epochs=epochs, lr=None, batch_size=32, optimizer="sgd", log=lambda m: None,
                        _trainer=trainer)


def prior(**kw):
    args = dict(components=5, init_means=torch.tensor([-0.4, -0.1, 0.2, 0.5]), init_std=0.1, pi_zero=0.9,
                gamma_zero=(50.0, 2.0), gamma=(30.0, 0.5), scales=(0.5, 4.0, 2.0))
    args.update(kw)
    return sws.MixturePrior(args.pop("components"), **args)


# --------------------------------------------------------------------------- the prior

def test_prior_value_matches_the_formula():
    p = prior()
    with torch.no_grad():
        p.mix_param.copy_(torch.tensor([0.3, -0.2, 0.1, 0.0]))
        p.log_var_param.copy_(torch.tensor([-5.0, -4.0, -3.0, -4.5, -3.5]) / 4.0)
    w = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 0.3
    mu = np.array([0.0, -0.4, -0.1, 0.2, 0.5])
    lv = np.array([-5.0, -4.0, -3.0, -4.5, -3.5])
    rest = np.exp(2.0 * np.array([0.3, -0.2, 0.1, 0.0]))
    pi = np.concatenate([[0.9], 0.1 * rest / rest.sum()])
    x = w.double().numpy()[:, None]
    dens = pi * np.exp(-0.5 * (x - mu) ** 2 / np.exp(lv)) / np.sqrt(2 * math.pi * np.exp(lv))
    neg_log_prior = -np.log(dens.sum(1)).sum()
    hyper = (50 - 1) * lv[0] + 2.0 * np.exp(-lv[0]) + ((30 - 1) * lv[1:] + 0.5 * np.exp(-lv[1:])).sum()
    with torch.no_grad():
        assert float(p(w)) == pytest.approx(neg_log_prior + hyper, rel=1e-5)
        assert float(p.neg_log_hyperprior()) == pytest.approx(hyper, rel=1e-6)
        np.testing.assert_allclose(p.mixing().double().numpy(), pi, rtol=1e-6)
        assert float(p.mixing()[0]) == pytest.approx(0.9, abs=1e-7)
    assert p.means().tolist() == pytest.approx(mu.tolist())


def test_gamma_hyperprior_is_minimal_at_the_gamma_mode():
    # -log Gamma(lambda | a, b) over log-variances is minimal at lambda = (a - 1) / b
    lv = torch.linspace(-10, 0, 2001)
    values = torch.stack([sws.gamma_neg_log_prior(v.reshape(1), 5000.0, 2.0) for v in lv])
    best = float(lv[values.argmin()])
    assert math.exp(-best) == pytest.approx((5000 - 1) / 2.0, rel=0.01)


def test_learning_rate_scales_move_each_group_by_its_own_rate():
    p = prior(scales=(0.2, 6.0, 6.0))  # lr_means / lr, lr_log_vars / lr, lr_mix / lr of the paper
    before = (p.means().detach().clone(), p.log_vars().detach().clone(), p.mix_param.detach().clone())
    opt = torch.optim.Adam(p.parameters(), lr=5e-4)
    w = torch.randn(1000, generator=torch.Generator().manual_seed(1)) * 0.2
    opt.zero_grad()
    p(w).backward()
    opt.step()
    # Adam's first step moves every parameter by lr (its update is m / sqrt(v) = sign(g))
    d_means = (p.means().detach() - before[0])[1:].abs()
    d_lv = (p.log_vars().detach() - before[1]).abs()
    assert torch.allclose(d_means, torch.full_like(d_means, 1e-4), rtol=1e-3)
    assert torch.allclose(d_lv, torch.full_like(d_lv, 3e-3), rtol=1e-3)
    assert p.means()[0].item() == 0.0  # the zero component never moves


# --------------------------------------------------------------------------- step 3

def test_kl_of_gaussians():
    kl = sws.kl_gaussian(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))
    assert float(kl) == pytest.approx(0.5 * (math.log(4.0) + (1 + 1) / 4 - 1))
    assert float(sws.kl_gaussian(torch.tensor(0.3), torch.tensor(-2.0), torch.tensor(0.3), torch.tensor(-2.0))) == 0


def test_merge_joins_overlapping_components_only():
    lv = math.log(0.01 ** 2)
    means = torch.tensor([0.0, 0.0005, 0.3, 0.3004, 0.6, -0.5])
    log_vars = torch.full((6,), lv)
    mixing = torch.tensor([0.9, 0.02, 0.02, 0.03, 0.01, 0.02])
    mu, new_lv, pi, groups = sws.merge_components(means, log_vars, mixing, threshold=1e-2)
    # KL between means 4e-4 apart at sigma 0.01 is 0.5 * 0.04**2 = 8e-4 < 1e-2: merged
    assert groups == [[0, 1], [2, 3], [4], [5]]
    assert mu[0].item() == 0.0  # the zero group keeps mean 0
    assert pi.tolist() == pytest.approx([0.92, 0.05, 0.01, 0.02])
    assert mu[1].item() == pytest.approx((0.02 * 0.3 + 0.03 * 0.3004) / 0.05)
    assert new_lv[1].item() == pytest.approx(lv)
    # with a threshold below every divergence nothing merges
    assert len(sws.merge_components(means, log_vars, mixing, threshold=1e-4)[3]) == 6


def test_merge_is_transitive_and_weights_precisions():
    means = torch.tensor([0.0, 0.2, 0.21, 0.22])
    log_vars = torch.log(torch.tensor([1e-4, 1e-4, 4e-4, 1e-4]))
    mixing = torch.tensor([0.7, 0.1, 0.1, 0.1])
    kl = sws.kl_gaussian(means[1], log_vars[1], means[3], log_vars[3])
    assert kl > 1.0  # 1 and 3 alone would not merge ...
    _, lv, _, groups = sws.merge_components(means, log_vars, mixing, threshold=1.0)
    assert groups == [[0], [1, 2, 3]]  # ... but 2 overlaps both
    precision = (1e4 + 2.5e3 + 1e4) / 3
    assert math.exp(-lv[1].item()) == pytest.approx(precision)


def test_responsibility_picks_the_most_likely_component():
    means = torch.tensor([0.0, -0.5, 0.5])
    log_vars = torch.log(torch.tensor([0.05, 0.05, 0.05]) ** 2)
    log_pi = torch.log(torch.tensor([0.98, 0.01, 0.01]))
    w = torch.tensor([0.0, 0.05, -0.49, 0.52, 0.26, 0.24])
    # 0.26 is nearer 0.5, but the zero component's 98 % share still wins up to ~0.31
    assert sws.responsibilities_argmax(w, means, log_vars, log_pi).tolist() == [0, 0, 1, 2, 0, 0]


def test_hyper_prior_pseudo_counts_scale_with_the_number_of_weights():
    # at the reference size the tutorial's values are kept exactly (LeNet-300-100 on MNIST)
    assert sws.scaled_gamma(250.0, 0.1, 266_200, sws.GAMMA_REF_WEIGHTS) == (250.0, 0.1)
    # LeNet-5 on 8x8 digits: 21,150 weights -> a - 1 and b times 21,150 / 266,200
    a, b = sws.scaled_gamma(250.0, 0.1, 21_150, 266_200)
    assert a == pytest.approx(1 + 249 * 21_150 / 266_200) and a == pytest.approx(20.7834, rel=1e-5)
    assert b == pytest.approx(0.1 * 21_150 / 266_200)
    a0, b0 = sws.scaled_gamma(5000.0, 2.0, 21_150, 266_200)
    assert (a0, b0) == (pytest.approx(398.178, rel=1e-5), pytest.approx(0.158903, rel=1e-5))
    # the mode of the precision, (a - 1) / b, stays; twice the weights, twice the pseudo-counts
    for weights in (1_000, 21_150, 532_400, 9_000_000):
        a, b = sws.scaled_gamma(250.0, 0.1, weights, 266_200)
        assert (a - 1) / b == pytest.approx(2490.0)
    assert sws.scaled_gamma(250.0, 0.1, 532_400, 266_200)[0] == pytest.approx(499.0)
    assert sws.scaled_gamma(250.0, 0.1, 21_150, 0) == (250.0, 0.1)  # 0: as given


# --------------------------------------------------------------------------- the method

def test_quick_run_prunes_95_percent_and_stores_a_codebook(tmp_path):
    reg = load_registry()  # QuantizedLinear is an engine type: no quantize plugin needed to save it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 4))
    make_ctx(tmp_path, 4, stage="baseline").train(model, lr=0.1)
    baseline_acc = make_ctx(tmp_path, 0).evaluate(model)
    assert baseline_acc > 0.5
    initial = [m.weight.detach().clone() for m in (model[1], model[3], model[5])]
    method = sws.SoftWeightSharing()
    # faster-converging settings than the paper's, for a six-epoch run on a tiny set (~98 % zeros)
    opts = method.parse_options({"init_std": 0.05, "lr": 2e-3, "lr_means": 1e-3, "lr_log_vars": 0.03,
                                 "pi_zero": 0.9999, "min_steps": 0,
                                 "gamma_ref_weights": 0})  # the tutorial's hyper-priors, unscaled
    ctx = make_ctx(tmp_path, 6)
    out = method.apply(model, ctx, opts)
    layers = codebook_layers(out)
    assert len(layers) == 3
    weights = torch.cat([m.weight.detach().reshape(-1) for _, m in layers])
    assert float((weights == 0).float().mean()) >= 0.95
    assert ctx.results["sparsity"] == pytest.approx(float((weights == 0).float().mean()))
    means = set(torch.tensor(ctx.results["mixture"]["means"]).float().tolist())
    for _, m in layers:
        kept = m.weight[m.weight_mask != 0]
        assert set(kept.tolist()) <= set(m.weight_codebook.tolist()) <= means
        assert torch.equal(m.weight_mask != 0, m.weight != 0)
    assert ctx.evaluate(out) > 0.3  # above chance (0.25) with 95 % of the weights gone
    # the retraining moved the weights: the run recorded a mixture history, one entry an epoch
    assert [h["epoch"] for h in ctx.results["mixture_history"]] == list(range(1, 7))
    assert not torch.equal(initial[0], model[1].weight.detach())
    for name in ("sws_weights_joint.png", "sws_weights_histogram.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    storage.save_model(tmp_path / "sws.slim", out, reg, info=INFO)
    header = storage.read_header(tmp_path / "sws.slim")
    assert {header["tensors"][f"{i}.weight"]["codec"] for i in (1, 3, 5)} == {"csr"}
    loaded = storage.load_model(tmp_path / "sws.slim", reg).model
    for a, b in zip(out.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_components_start_at_the_spread_of_the_weights(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 4))
    weights = torch.cat([model[1].weight.detach().reshape(-1), model[3].weight.detach().reshape(-1)])
    method = sws.SoftWeightSharing()
    ctx = make_ctx(tmp_path, 0)
    method.apply(model, ctx, method.parse_options({"plots": False}))
    assert ctx.results["init_std"] == pytest.approx(float(weights.std()), rel=1e-5)  # init_std=0: automatic
    # the zero component's hyper-prior is the tutorial's scaled to this network's 640 weights; the others' are kept
    assert ctx.results["gamma_zero"] == pytest.approx(list(sws.scaled_gamma(5000.0, 2.0, 640, sws.GAMMA_REF_WEIGHTS)))
    assert ctx.results["gamma_zero"][0] == pytest.approx(1 + 4999 * 640 / 266_200)
    assert ctx.results["gamma"] == [250.0, 0.1]
    assert ctx.results["mixture_history"] == [] and not (tmp_path / "sws_weights_joint.png").exists()
    # untrained, the learned means are still spread evenly over the weights' range
    means = sorted(ctx.results["mixture"]["means"])
    assert means[0] == pytest.approx(float(weights.min()), rel=1e-5)
    assert means[-1] == pytest.approx(float(weights.max()), rel=1e-5)


def test_options_are_checked():
    method = sws.SoftWeightSharing()
    with pytest.raises(UserError, match="components"):
        method.parse_options({"components": 65})
    with pytest.raises(UserError, match="pi_zero"):
        method.parse_options({"pi_zero": 1.0})
    opts = method.parse_options({})
    assert (opts["components"], opts["pi_zero"], opts["tau"], opts["init_std"]) == (32, 0.999, 5e-3, 0.0)
    assert (opts["gamma_zero_a"], opts["gamma_zero_b"], opts["gamma_a"], opts["gamma_b"]) == (5000, 2, 250, 0.1)
    assert (opts["epochs"], opts["min_steps"]) == (None, sws.MIN_STEPS_DEFAULT)
    assert opts["gamma_ref_weights"] == sws.GAMMA_REF_WEIGHTS == 784 * 300 + 300 * 100 + 100 * 10
    with pytest.raises(UserError, match="no nn.Conv2d"):
        method.check(nn.Sequential(nn.ReLU()), opts)


def test_unset_epochs_are_raised_to_the_minimum_steps():
    # the run's epochs when they give enough steps; else ceil(min_steps / steps an epoch)
    assert epochs_for_steps(10, None, 3000, 113) == 27  # MNIST split: 7,200 / 64 -> 113 steps an epoch
    assert epochs_for_steps(10, None, 3000, 21) == 143  # digits: 1,294 / 64 -> 21
    assert epochs_for_steps(40, None, 3000, 113) == 40
    # given epochs are kept, and so is a run of 0 epochs (no retraining asked for)
    assert epochs_for_steps(10, 5, 3000, 21) == 5
    assert epochs_for_steps(0, None, 3000, 21) == 0
    assert epochs_for_steps(10, None, 0, 21) == 10


def test_min_steps_raise_only_a_default_epoch_count(tmp_path):
    ctx = make_ctx(tmp_path, 1)  # 11 steps an epoch
    assert ctx.stage_epochs(None, 40) == 1  # --epochs given: kept
    assert ctx.stage_epochs(7, 40) == 7  # the method's epochs option: kept
    ctx.epochs_set = False
    assert ctx.stage_epochs(None, 40) == 4 and ctx.stage_epochs(None, 0) == 1 and ctx.stage_epochs(2, 40) == 2


def test_stage_records_its_steps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Linear(8, 4))
    method = sws.SoftWeightSharing()
    ctx = make_ctx(tmp_path, 1)  # 346 train examples at batch 32: 11 steps an epoch
    ctx.epochs_set = False  # the run's epochs are the engine's default, not the user's
    method.apply(model, ctx, method.parse_options({"plots": False, "min_steps": 40}))
    assert (ctx.results["steps_per_epoch"], ctx.results["epochs"], ctx.results["optimizer_steps"]) == (11, 4, 44)
    assert len(ctx.results["mixture_history"]) == 4
