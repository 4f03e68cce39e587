"""Method `lowrank`: closed-form vertical/horizontal decomposition (Tai et al. 2016) and SVD of linear layers.

The decomposition is checked against the layers it replaces in float64; the method
runs through the engine's real training loop on a small synthetic data set.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import stage_context
from slimkit import storage
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.models import count_macs, count_params
from slimkit.nn import MaskedConv2d, MaskedLinear, to_masked
from slimkit.plugins import load_registry
from slimkit_plugins import lowrank as lr

SHAPE = (3, 8, 8)


def registry_with_lowrank():
    registry = load_registry()
    if "lowrank" not in registry.methods:  # not (yet) an installed entry point
        registry = load_registry(extra_plugins=[lr])
    return registry


def make_ctx(tmp_path, epochs=1, n=192, shape=SHAPE):
    raw = load_synthetic(f"{n}x{'x'.join(map(str, shape))}@4", 0)
    return stage_context("lowrank", DataBundle("synthetic", raw, seed=0), tmp_path, epochs=epochs)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def opts(**kw):
    base = {o.name: o.default for o in lr.LowRank.all_options()}
    base.update(kw)
    return base


# --------------------------------------------------------------------------- closed form

CONV_VARIANTS = [
    dict(),
    dict(padding=1),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    dict(stride=(1, 3), padding=(0, 1), dilation=(1, 2)),
    dict(padding="same"),
    dict(padding="valid", bias=False),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(1, 2), padding_mode="circular", stride=(1, 2)),
]


@pytest.mark.parametrize("kw", CONV_VARIANTS, ids=[str(k) for k in CONV_VARIANTS])
@pytest.mark.parametrize("kernel", [3, (3, 5), (1, 1)])
def test_full_rank_reproduces_conv_exactly(kw, kernel):
    if kernel == (1, 1) and ("padding_mode" in kw or kw.get("padding") not in (None, "same", "valid")):
        kw = {k: v for k, v in kw.items() if k not in ("padding", "padding_mode")}
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, kernel, **kw).double()
    new = lr.decompose_conv(conv, lr.full_rank(conv))
    kh, kw_ = conv.kernel_size
    assert new.rank == min(5 * kh, 7 * kw_)
    assert new.vertical.kernel_size == (kh, 1) and new.horizontal.kernel_size == (1, kw_)
    assert new.vertical.stride == (conv.stride[0], 1) and new.horizontal.stride == (1, conv.stride[1])
    assert new.vertical.bias is None and (new.horizontal.bias is not None) == (conv.bias is not None)
    x = torch.randn(2, 5, 11, 10, dtype=torch.float64)
    want = conv(x)
    got = new(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-8, rtol=0), (got - want).abs().max()


def test_kernel_matrix_layout_is_the_papers():
    w = torch.arange(2 * 3 * 3 * 3, dtype=torch.float64).reshape(2, 3, 3, 3)  # N=2, C=3, 3x3
    m = lr.conv_matrix(w)
    assert m.shape == (9, 6)
    for n in range(2):
        for c in range(3):
            for h in range(3):
                for x in range(3):
                    assert m[c * 3 + h, n * 3 + x] == w[n, c, h, x]


def test_truncated_error_is_the_svd_tail():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 8, 3, padding=1).double()
    sigma = lr.singular_values(conv)
    m = lr.conv_matrix(conv.weight.detach())
    for k in (1, 4, 9, 17):
        new = lr.decompose_conv(conv, k)
        err = torch.linalg.norm(m - lr.conv_matrix(new.dense_weight()))
        tail = math.sqrt(float((sigma[k:] ** 2).sum()))
        assert abs(float(err) - tail) <= 1e-9 * max(1.0, tail)
        # and the decomposed layer computes exactly the conv with the approximated kernel
        x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
        ref = F.conv2d(x, new.dense_weight(), conv.bias, padding=1)
        assert torch.allclose(new(x), ref, atol=1e-10)
    # Eckart-Young: a rank-K reconstruction from perturbed factors is never better
    new = lr.decompose_conv(conv, 4)
    with torch.no_grad():
        new.vertical.weight.add_(1e-3 * torch.randn_like(new.vertical.weight))
    assert torch.linalg.norm(m - lr.conv_matrix(new.dense_weight())) > math.sqrt(float((sigma[4:] ** 2).sum()))


def test_linear_svd_exact_at_full_rank_and_tail_below():
    torch.manual_seed(2)
    lin = nn.Linear(12, 7).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    full = lr.decompose_linear(lin, 7)
    assert torch.allclose(full(x), lin(x), atol=1e-10)
    assert full.first.bias is None and torch.equal(full.second.bias, lin.bias)
    sigma = lr.singular_values(lin)
    for k in (1, 3, 6):
        err = torch.linalg.norm(lin.weight.detach() - lr.decompose_linear(lin, k).dense_weight())
        assert abs(float(err) - math.sqrt(float((sigma[k:] ** 2).sum()))) < 1e-10
    with pytest.raises(ValueError):
        lr.decompose_linear(lin, 8)


def test_masked_layers_are_decomposed_from_weight_times_mask():
    torch.manual_seed(3)
    model = to_masked(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 5 * 5, 3))).double()
    conv, lin = model[0], model[2]
    assert isinstance(conv, MaskedConv2d) and isinstance(lin, MaskedLinear)
    conv.set_mask(torch.rand_like(conv.weight) > 0.5)
    lin.set_mask(torch.rand_like(lin.weight) > 0.5)
    with torch.no_grad():  # weights under the mask that the mask must hide
        conv.weight.add_(1.0 - conv.weight_mask)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    ref = F.conv2d(x, conv.weight * conv.weight_mask, conv.bias, padding=1)
    assert torch.allclose(lr.decompose_conv(conv, lr.full_rank(conv))(x), ref, atol=1e-8)
    y = torch.randn(2, 150, dtype=torch.float64)
    ref = F.linear(y, lin.weight * lin.weight_mask, lin.bias)
    assert torch.allclose(lr.decompose_linear(lin, lr.full_rank(lin))(y), ref, atol=1e-8)


# --------------------------------------------------------------------------- ranks

def test_energy_mode_picks_the_documented_rank():
    sigma = torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)  # squares 9, 4, 1, 1 of 15
    assert lr.choose_rank(sigma, "energy", energy=0.6) == 1  # 9 >= 0.6 * 15 exactly
    assert lr.choose_rank(sigma, "energy", energy=0.61) == 2
    assert lr.choose_rank(sigma, "energy", energy=13 / 15) == 2  # 13 of 15 exactly
    assert lr.choose_rank(sigma, "energy", energy=0.9) == 3  # 14/15 = 0.933
    assert lr.choose_rank(sigma, "energy", energy=1.0) == 4
    sigma = torch.tensor([2.0, 1.0], dtype=torch.float64)  # 4 + 1: 0.8 is an exact boundary
    assert lr.choose_rank(sigma, "energy", energy=0.8) == 1


def test_energy_mode_on_a_conv_with_a_known_spectrum():
    torch.manual_seed(4)
    c, n, k = 4, 5, 3
    u, _ = torch.linalg.qr(torch.randn(c * k, c * k, dtype=torch.float64))
    q, _ = torch.linalg.qr(torch.randn(n * k, n * k, dtype=torch.float64))
    sigma = torch.tensor([8.0, 4.0, 2.0, 1.0] + [0.5] * 8, dtype=torch.float64)  # 12 = min(12, 15)
    m = u @ torch.diag(sigma) @ q[:, :12].T
    conv = nn.Conv2d(c, n, k, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(m.reshape(c, k, n, k).permute(2, 0, 1, 3))
    assert torch.allclose(lr.singular_values(conv), sigma, atol=1e-10)
    # squares 64, 16, 4, 1, 8 x 0.25 -> total 87; 80/87 = 0.9195 -> K=2 for 0.9, 84/87 = 0.9655 -> K=3 for 0.95
    assert lr._plan_rank(conv, opts(rank_mode="energy", energy=0.9)) == 2
    assert lr._plan_rank(conv, opts(rank_mode="energy", energy=0.95)) == 3


def test_ratio_and_fixed_rank():
    s = torch.ones(30, dtype=torch.float64)
    assert lr.choose_rank(s, "ratio", ratio=0.1) == 3  # not ceil(3.0000000000000004) = 4
    assert lr.choose_rank(s, "ratio", ratio=0.11) == 4
    assert lr.choose_rank(s, "ratio", ratio=0.001) == 1
    assert lr.choose_rank(s, "fixed", rank=50) == 30
    assert lr.choose_rank(s, "fixed", rank=7) == 7
    conv = nn.Conv2d(64, 64, 3)
    assert lr._plan_rank(conv, opts(rank_mode="ratio", ratio=0.25)) == 48  # full rank 192


# --------------------------------------------------------------------------- cost formulas

@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), ((2, 1), (1, 0))])
def test_params_and_macs_formulas(stride, padding):
    c, n, kh, kw, k, h, w = 6, 10, 3, 3, 5, 12, 9
    conv = nn.Conv2d(c, n, (kh, kw), stride=stride, padding=padding)
    new = lr.decompose_conv(conv, k)
    before, after = lr.conv_lowrank_params(c, n, kh, kw, k)
    assert before == c * n * kh * kw and after == k * (c * kh + n * kw)
    assert count_params(new) == after + n  # plus the bias
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    ho = (h + 2 * ph - kh) // sh + 1
    wv = w + 2 * 0  # the vertical conv is neither strided nor padded along the width
    wo = (w + 2 * pw - kw) // sw + 1
    macs = count_macs(nn.Sequential(new), (c, h, w))["dense"]
    assert macs == ho * wv * k * c * kh + ho * wo * n * k * kw
    assert count_macs(nn.Sequential(conv), (c, h, w))["dense"] == ho * wo * n * c * kh * kw
    lin = lr.decompose_linear(nn.Linear(20, 8), 3)
    assert count_params(lin) == 3 * (20 + 8) + 8
    assert count_macs(lin, (20,))["dense"] == 3 * 20 + 8 * 3


# --------------------------------------------------------------------------- skip rules and check()

def test_skip_rules():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 8, 4, padding="same"),
                          nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    rows = {r["name"]: r for r in lr.select_layers(model, "conv", True)}
    assert "skip_first" in rows["0"]["reason"] and not rows["0"]["eligible"]
    assert "groups=2" in rows["1"]["reason"]
    assert "same" in rows["2"]["reason"]
    assert rows["3"]["eligible"]
    assert rows["5"]["reason"] == "layers=conv"
    rows = {r["name"]: r for r in lr.select_layers(model, "all", False)}
    assert rows["0"]["eligible"] and rows["5"]["eligible"]
    rows = {r["name"]: r for r in lr.select_layers(model, "linear", True)}
    assert [n for n, r in rows.items() if r["eligible"]] == ["5"]
    # a first conv with many input channels is not the image input: kept eligible
    rows = lr.select_layers(nn.Sequential(nn.Conv2d(16, 8, 3)), "conv", True)
    assert rows[0]["eligible"]
    # the parts of an existing low-rank layer are not decomposed again
    nested = nn.Sequential(nn.Conv2d(3, 8, 3), lr.decompose_conv(nn.Conv2d(8, 8, 3), 4))
    rows = {r["name"]: r for r in lr.select_layers(nested, "conv", True)}
    assert rows["1.vertical"]["reason"] == rows["1.horizontal"]["reason"] == "already part of a low-rank layer"


def test_check_refuses_models_without_eligible_layers():
    method = lr.LowRank()
    with pytest.raises(UserError, match="no layer"):
        method.check(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8, 2)), opts())
    with pytest.raises(UserError, match="no layer"):
        method.check(nn.Sequential(nn.Flatten(), nn.Linear(8, 2)), opts())
    method.check(nn.Sequential(nn.Flatten(), nn.Linear(64, 64)), opts(layers="linear"))
    with pytest.raises(UserError, match="needs rank"):
        method.check(small_cnn(), opts(rank_mode="fixed"))
    with pytest.raises(UserError, match="saves no parameters"):
        method.check(small_cnn(), opts(rank_mode="fixed", rank=1000))
    with pytest.raises(UserError, match="saves no parameters"):
        method.check(small_cnn(), opts(ratio=1.0))


# --------------------------------------------------------------------------- BN

def test_bn_is_calibrated_to_the_identity():
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    plain = lr.decompose_conv(conv, 5)
    with_bn = lr.decompose_conv(conv, 5, bn=True)
    model = nn.Sequential(with_bn)
    x = torch.randn(64, 4, 6, 6) * 2 + 1
    seen = lr.calibrate_bn(model, [with_bn], [x[:32], x[32:]])
    assert seen == 64
    model.eval()
    with torch.no_grad():
        ref = plain(x)
        assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)  # eval: the identity
        y = ref.transpose(0, 1).reshape(6, -1)
        assert torch.allclose(with_bn.bn.running_mean, y.mean(1), atol=1e-5)
        model.train()
        assert torch.allclose(model(x), ref, atol=1e-3, rtol=1e-3)  # train: batch stats of the same data
    assert with_bn.bn.training


# --------------------------------------------------------------------------- the method

def test_apply_end_to_end_records_and_round_trips(tmp_path):
    ctx = make_ctx(tmp_path, epochs=1)
    model = small_cnn()
    base_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(False))
    out = lr.LowRank().apply(model, ctx, opts(layers="all", ratio=0.25))
    r = ctx.results
    names = {row["name"]: row for row in r["layers"]}
    assert not names["0"]["replaced"] and "skip_first" in names["0"]["reason"]
    assert isinstance(out[3], lr.LowRankConv2d) and isinstance(out[6], lr.LowRankConv2d)
    assert names["3"]["rank"] == 12 and names["6"]["rank"] == 24  # ceil(0.25 x 48), 0.25 x 96
    assert isinstance(out[11], lr.LowRankLinear) and names["11"]["rank"] == 6  # 6 x (32 + 24) < 32 x 24
    assert isinstance(out[13], lr.LowRankLinear) and names["13"]["rank"] == 1  # 1 x (24 + 4) < 24 x 4
    assert r["layers_decomposed"] == 4
    assert r["conv_params_before"] == base_params and r["conv_params_after"] < base_params
    assert r["params_after"] == count_params(out) < r["params_before"]
    assert r["macs_after"] == count_macs(out, SHAPE)["dense"] < r["macs_before"]
    assert r["latency_ms_before"] > 0 and r["latency_ms_after"] > 0
    for row in r["layers"]:
        if row["replaced"]:
            assert 0 <= row["kernel_rel_error"] < 1 and 0 <= row["response_rel_error"] < 1
            assert row["params_after"] < row["params_before"]
            assert row["macs_after"] < row["macs_before"]
    assert 0 <= r["test_accuracy_before_finetune"] <= 1
    # saved and loaded back through a .slim: same outputs
    registry = registry_with_lowrank()
    path = tmp_path / "m.slim"
    storage.save_model(path, out, registry, info={"input_shape": list(SHAPE), "num_classes": 4})
    loaded = storage.load_model(path, registry).model
    out.eval(), loaded.eval()
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.equal(loaded(x), out(x))
    assert isinstance(loaded[3], lr.LowRankConv2d) and isinstance(loaded[11], lr.LowRankLinear)


def test_layers_whose_rank_saves_nothing_are_kept_with_the_reason(tmp_path):
    ctx = make_ctx(tmp_path, epochs=0)
    out = lr.LowRank().apply(small_cnn(), ctx, opts(layers="all", rank_mode="fixed", rank=20))
    names = {row["name"]: row for row in ctx.results["layers"]}
    assert names["3"]["replaced"] and names["6"]["replaced"]  # 20 x 144 < 4608, 20 x 192 < 9216
    assert not names["11"]["replaced"] and names["11"]["rank"] == 20
    assert "saves no parameters: K (in + out) = 1120 >= 768" in names["11"]["reason"]
    assert not names["13"]["replaced"] and "112 >= 96" in names["13"]["reason"]  # K clamped to 4
    assert type(out[11]) is nn.Linear and type(out[13]) is nn.Linear


def low_rank_kernel(conv, r, seed):
    g = torch.Generator().manual_seed(seed)
    n, c, kh, kw = conv.weight.shape
    m = torch.randn(c * kh, r, generator=g) @ torch.randn(r, n * kw, generator=g) / math.sqrt(r * c * kh)
    with torch.no_grad():
        conv.weight.copy_(m.reshape(c, kh, n, kw).permute(2, 0, 1, 3))


def test_exact_when_the_kernels_have_low_rank_and_bn_is_the_identity(tmp_path):
    model = small_cnn()
    low_rank_kernel(model[3], 6, 1)
    low_rank_kernel(model[6], 8, 2)
    model.eval()
    ctx = make_ctx(tmp_path, epochs=0)
    x = ctx.data.tensors("test")[0][:32]
    with torch.no_grad():
        ref = model(x)
    out = lr.LowRank().apply(copy.deepcopy(model), ctx, opts(rank_mode="energy", energy=0.999999))
    names = {row["name"]: row for row in ctx.results["layers"]}
    assert names["3"]["rank"] == 6 and names["6"]["rank"] == 8
    assert names["3"]["kernel_rel_error"] < 1e-5 and names["6"]["response_rel_error"] < 1e-5
    out.eval()
    with torch.no_grad():
        assert torch.allclose(out(x), ref, atol=1e-4, rtol=1e-4)
    # with bn=true the inserted BatchNorms are calibrated to the identity: same outputs in eval mode
    ctx_bn = make_ctx(tmp_path, epochs=0)
    with_bn = lr.LowRank().apply(copy.deepcopy(model), ctx_bn, opts(rank_mode="energy", energy=0.999999, bn=True))
    assert isinstance(with_bn[3].bn, nn.BatchNorm2d) and ctx_bn.results["bn_calibration_examples"] > 0
    with_bn.eval()
    with torch.no_grad():
        assert torch.allclose(with_bn(x), ref, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(with_bn[3].bn.running_var, torch.ones(32))  # real statistics, not the defaults
    assert ctx_bn.results["test_accuracy_before_finetune"] == ctx.results["test_accuracy_before_finetune"]
    registry = registry_with_lowrank()
    storage.save_model(tmp_path / "bn.slim", with_bn, registry, info={"input_shape": list(SHAPE), "num_classes": 4})
    loaded = storage.load_model(tmp_path / "bn.slim", registry).model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), with_bn(x))


def test_energy_mode_that_saves_nothing_is_a_user_error(tmp_path):
    ctx = make_ctx(tmp_path, epochs=0)
    with pytest.raises(UserError, match="no layer would get fewer parameters"):
        lr.LowRank().apply(small_cnn(), ctx, opts(rank_mode="energy", energy=1.0))


def test_registered_as_a_plugin():
    registry = registry_with_lowrank()
    assert isinstance(registry.method("lowrank"), lr.LowRank)
    names = registry.modules.names()
    assert "slimkit.nn.lowrank.LowRankConv2d" in names and "slimkit.nn.lowrank.LowRankLinear" in names
    # the layers lived in the plugin before they moved into slimkit.nn: files naming them still load
    for old in ("LowRankConv2d", "LowRankLinear"):
        assert registry.modules.resolve(f"slimkit_plugins.lowrank.{old}") == f"slimkit.nn.lowrank.{old}"
