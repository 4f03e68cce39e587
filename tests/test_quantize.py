"""Method `quantize`: Deep Compression's trained weight sharing (k-means codebooks, centroid
fine-tuning with grouped gradients, Huffman-coded storage) and int8 per-channel quantisation.

Training runs through the engine's real loop (Trainer behind a real StageContext) on a
small synthetic data set.
"""
import pytest
import torch
import torch.nn as nn

from slimkit import storage
from slimkit.api import DistInfo, StageContext
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.nn import (Int8Linear, MaskedLinear, QuantizedConv2d, QuantizedLinear, codebook_layers, quantizable_layers,
                        quantized_twin, to_masked)
from slimkit.plugins import load_registry
from slimkit.storage import stored_bytes
from slimkit.progress import Reporter
from slimkit.train import Trainer
from slimkit_plugins import prune as pr
from slimkit_plugins import quantize as qz

INFO = {"model": "mlp", "input_shape": [1, 6, 6], "num_classes": 4, "data": {}}


@pytest.fixture(scope="module")
def registry():
    reg = load_registry()
    return reg if "quantize" in reg.methods else load_registry(extra_plugins=[qz])


def make_ctx(tmp_path, epochs=2, n=384, trainer=None, stage="quantize"):
    bundle = DataBundle("synthetic", load_synthetic(f"{n}x1x6x6@4", 0), seed=0)
    trainer = trainer or Trainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=32,
                                 reporter=Reporter(False))
    return StageContext(stage=stage, data=bundle, device=torch.device("cpu"), dist=DistInfo(), out_dir=tmp_path,
                        seed=0, epochs=epochs, lr=None, batch_size=32, optimizer="sgd", log=lambda m: None,
                        _trainer=trainer)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 4))


def trained_mlp(tmp_path):
    model = mlp()
    make_ctx(tmp_path, epochs=4, stage="baseline").train(model, lr=0.1)
    return model


# --------------------------------------------------------------------------- k-means

def test_linear_initialisation_spaces_centroids_between_min_and_max():
    values = torch.tensor([0.3, -1.0, 2.0, 0.1])
    assert qz.init_centroids(values, 4, "linear").tolist() == [-1.0, 0.0, 1.0, 2.0]
    assert qz.init_centroids(values, 1, "linear").tolist() == [pytest.approx(0.35)]
    dens = qz.init_centroids(torch.arange(101.0), 5, "density")
    assert dens.tolist() == [0.0, 25.0, 50.0, 75.0, 100.0]
    rand = qz.init_centroids(values, 3, "random", seed=1)
    assert rand.numel() == 3 and torch.equal(rand, torch.sort(rand).values)
    assert set(rand.tolist()) <= set(values.double().tolist())


def test_kmeans_converges_to_cluster_means():
    g = torch.Generator().manual_seed(0)
    groups = [torch.full((50,), c) + 0.01 * torch.randn(50, generator=g) for c in (-1.0, 0.5, 3.0)]
    values = torch.cat(groups)
    centroids, assignment = qz.kmeans_1d(values, qz.init_centroids(values, 3), iters=20)
    for j, grp in enumerate(groups):
        assert centroids[j].item() == pytest.approx(grp.double().mean().item(), abs=1e-12)
        assert (assignment[50 * j:50 * (j + 1)] == j).all()
    # zero iterations: the initial centroids are kept
    c0, _ = qz.kmeans_1d(values, qz.init_centroids(values, 3), iters=0)
    assert torch.equal(c0, qz.init_centroids(values, 3))


def test_share_weights_ignores_pruned_weights_and_keeps_them_zero():
    torch.manual_seed(1)
    layer = MaskedLinear(20, 10)
    with torch.no_grad():
        layer.weight.mul_(0.1)
        layer.weight[0, :5] = torch.tensor([5.0, -5.0, 4.0, -4.0, 3.0])  # large weights, then pruned
    mask = torch.ones(10, 20)
    mask[0, :5] = 0
    layer.set_mask(mask)
    codebook, index, keep = qz.share_weights(layer, 3, iters=0)
    kept = layer.weight.detach().reshape(-1)[keep]
    assert codebook[0].item() == pytest.approx(kept.min().item())
    assert codebook[-1].item() == pytest.approx(kept.max().item())
    assert abs(codebook).max() < 1.0  # the pruned +-5 took no part
    new = quantized_twin(layer, "codebook", num_codes=8)
    new.set_codes(codebook, index, keep)
    w = new.weight.detach()
    assert torch.equal(w[0, :5].view(torch.int32), torch.zeros(5).view(torch.int32))  # +0.0 exactly
    assert torch.equal(new.weight_mask, mask)
    assert set(w[mask.bool()].tolist()) <= set(codebook.tolist())


# --------------------------------------------------------------------------- grouped gradients

def tiny_layer():
    layer = QuantizedLinear(3, 2, num_codes=3)
    codebook = torch.tensor([-1.0, 0.5, 2.0])
    index = torch.tensor([[0, 1, 2], [1, 1, 0]])
    keep = torch.tensor([[True, True, True], [True, False, True]])
    layer.set_codes(codebook, index, keep)
    return layer


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_grouped_gradient_is_the_cluster_sum_or_mean(reduce):
    layer = tiny_layer()
    cb = qz.SharedWeightGradients([layer], reduce)
    cb.on_train_begin(layer, 1)
    layer.weight.grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 6.0]])  # 100: a pruned weight's gradient
    cb.after_backward(layer, 0)
    # clusters: 0 = {(0,0), (1,2)}, 1 = {(0,1), (1,0)} ((1,1) is pruned), 2 = {(0,2)}
    sums = {0: 1.0 + 6.0, 1: 2.0 + 4.0, 2: 3.0}
    sizes = {0: 2, 1: 2, 2: 1}
    g = {k: sums[k] / (sizes[k] if reduce == "mean" else 1) for k in sums}
    assert layer.weight.grad.tolist() == [[g[0], g[1], g[2]], [g[1], 0.0, g[0]]]


def test_centroid_step_is_minus_lr_times_summed_gradient_and_weights_stay_codebook_values():
    layer = tiny_layer()
    cb = qz.SharedWeightGradients([layer], "sum")
    cb.on_train_begin(layer, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    loss = (layer(x) ** 2).sum()
    opt.zero_grad()
    loss.backward()
    raw = layer.weight.grad.clone()
    cb.after_backward(layer, 0)
    opt.step()
    cb.after_step(layer, 0)
    index = torch.tensor([[0, 1, 2], [1, 1, 0]])
    keep = torch.tensor([[True, True, True], [True, False, True]])
    expected = torch.tensor([-1.0, 0.5, 2.0]).clone()
    for k in range(3):
        expected[k] -= 0.1 * raw[(index == k) & keep].sum()
    assert torch.allclose(layer.weight_codebook, expected, atol=1e-6)
    w = layer.weight.detach()
    assert torch.equal(w[keep], layer.weight_codebook[index[keep]])
    assert w[1, 1].item() == 0.0 and layer.weight_mask[1, 1].item() == 0.0


# --------------------------------------------------------------------------- the method

def test_prune_then_quantize_keeps_pruned_zeros_and_stores_indices(tmp_path, registry):
    model = trained_mlp(tmp_path)
    ctx = make_ctx(tmp_path, epochs=1, stage="prune")
    model = pr.MagnitudePrune().apply(model, ctx, pr.MagnitudePrune().parse_options(
        {"sparsity": 0.8, "schedule": "oneshot"}))
    masks = {n: m.weight_mask.clone() for n, m in model.named_modules() if hasattr(m, "weight_mask")}
    masked_size = storage.save_model(tmp_path / "pruned.slim", model, registry, info=INFO)

    method = qz.Quantize()
    ctx = make_ctx(tmp_path, epochs=2)
    model = method.apply(model, ctx, method.parse_options({"fc_bits": 3}))
    layers = dict(codebook_layers(model))
    assert set(layers) == set(masks)
    for name, m in layers.items():
        assert torch.equal(m.weight_mask, masks[name])
        w = m.weight.detach()
        assert (w[masks[name] == 0].contiguous().view(torch.int32) == 0).all()  # exactly +0.0
        kept = w[masks[name] != 0]
        assert set(kept.tolist()) <= set(m.weight_codebook.tolist()) and m.weight_codebook.numel() == 8
    rows = ctx.results["layers"]
    assert [r["bits"] for r in rows] == [3, 3, 3] and ctx.results["mode"] == "kmeans"
    assert all(r["used_clusters"] <= 8 and r["sparsity"] >= 0.8 for r in rows)
    assert 0.0 <= ctx.results["val_accuracy_after_clustering"] <= 1.0

    size = storage.save_model(tmp_path / "q.slim", model, registry, info=INFO)
    header = storage.read_header(tmp_path / "q.slim")
    assert {header["tensors"][f"{n}.weight"]["codec"] for n in layers} == {"csr"}
    loaded = storage.load_model(tmp_path / "q.slim", registry).model
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert size < masked_size
    # 3-bit Huffman-coded indices + Huffman-coded gaps, against 32-bit values + a 1-bit mask
    masked_bytes = sum(4 * int(masks[n].sum()) + (masks[n].numel() + 7) // 8 for n in masks)
    assert ctx.results["weight_bytes"] < 0.4 * masked_bytes
    assert ctx.results["weight_bytes"] == sum(stored_bytes(model, f"{n}.weight") for n in layers)


def test_fine_tuning_moves_centroids_and_can_be_skipped(tmp_path):
    model = to_masked(trained_mlp(tmp_path))
    start = {}
    for name, layer in quantizable_layers(model):
        codebook, _, _ = qz.share_weights(layer, 2, iters=20)
        start[name] = codebook
    method = qz.Quantize()
    tuned = method.apply(mlp_copy(model), make_ctx(tmp_path, epochs=1), method.parse_options({"fc_bits": 2}))
    frozen = method.apply(mlp_copy(model), make_ctx(tmp_path, epochs=0),
                          method.parse_options({"fc_bits": 2, "epochs": 0}))
    for name, m in codebook_layers(frozen):
        assert torch.equal(m.weight_codebook, start[name])
    moved = [not torch.equal(m.weight_codebook, start[name]) for name, m in codebook_layers(tuned)]
    assert all(moved)


def mlp_copy(model):
    import copy

    return copy.deepcopy(model)


def test_int8_per_channel_error_bound():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(8, 3, 3, 3, generator=g) * torch.logspace(-3, 1, 8).reshape(8, 1, 1, 1)
    w[3] = 0.0
    q, scale = qz.int8_quantize(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    back = storage.int8_dequantize(q, scale)
    err = (back - w).abs().reshape(8, -1).amax(1)
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-12).all()
    for c in range(8):
        if c != 3:
            assert int(q[c].abs().max()) == 127  # the largest weight of each channel uses the full range
            assert scale[c].item() == pytest.approx(w[c].abs().max().item() / 127)
    assert scale[3].item() == 1.0 and int(q[3].abs().max()) == 0


class NoTraining(Trainer):
    def fit(self, *args, **kwargs):
        raise AssertionError("int8 mode is post-training: it must not train")


def test_int8_mode_is_post_training_and_stored_as_int8(tmp_path, registry):
    model = mlp()
    reference = [m.weight.detach().clone() for _, m in quantizable_layers(model)]
    method = qz.Quantize()
    trainer = NoTraining(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=32, reporter=Reporter(False))
    ctx = make_ctx(tmp_path, trainer=trainer)
    model = method.apply(model, ctx, method.parse_options({"mode": "int8"}))
    layers = [m for _, m in quantizable_layers(model)]
    assert all(isinstance(m, Int8Linear) for m in layers)
    for m, w in zip(layers, reference):
        assert ((m.weight - w).abs().amax(1) <= m.weight_scale / 2 * (1 + 1e-5)).all()
    assert all(r["max_error_over_half_scale"] <= 1 + 1e-5 for r in ctx.results["layers"])
    size = storage.save_model(tmp_path / "i8.slim", model, registry, info=INFO)
    dense = storage.save_model(tmp_path / "d.slim", mlp(), registry, info=INFO)
    header = storage.read_header(tmp_path / "i8.slim")
    assert {header["tensors"][f"{i}.weight"]["codec"] for i in (1, 3, 5)} == {"int8"}
    weights = sum(w.numel() for w in reference)
    assert ctx.results["weight_bytes"] == weights + 4 * (48 + 24 + 4)  # one byte a weight + a float32 scale a row
    assert size < dense / 2  # weights from 4 bytes to 1; the JSON headers of so small a model stay
    loaded = storage.load_model(tmp_path / "i8.slim", registry).model
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


def test_options_and_check():
    method = qz.Quantize()
    with pytest.raises(UserError, match="fc_bits"):
        method.parse_options({"fc_bits": "9"})
    with pytest.raises(UserError, match="mode"):
        method.parse_options({"mode": "int4"})
    with pytest.raises(UserError, match="nothing to quantise"):
        method.check(nn.Sequential(nn.ReLU()), method.parse_options({}))
    assert method.parse_options({})["fc_bits"] == 5 and method.parse_options({})["conv_bits"] == 8


def test_conv_layers_get_conv_bits(tmp_path, registry):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4))
    method = qz.Quantize()
    ctx = make_ctx(tmp_path, epochs=0)
    model = method.apply(model, ctx, method.parse_options({"conv_bits": 4, "fc_bits": 2, "epochs": 0}))
    assert isinstance(model[0], QuantizedConv2d) and model[0].weight_codebook.numel() == 16
    assert isinstance(model[3], QuantizedLinear) and model[3].weight_codebook.numel() == 4
    assert [r["kind"] for r in ctx.results["layers"]] == ["conv", "fc"]
    storage.save_model(tmp_path / "conv.slim", model, registry, info=INFO)
    assert storage.read_header(tmp_path / "conv.slim")["tensors"]["0.weight"]["codec"] == "codebook"
    loaded = storage.load_model(tmp_path / "conv.slim", registry).model
    assert isinstance(loaded[0], QuantizedConv2d)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(2, 1, 6, 6)
    model.eval()
    assert torch.equal(model(x), loaded(x))
