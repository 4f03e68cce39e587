"""Method `structural` (Deep Net Triage, Nowak & Corso 2018): block collapse, mean/stn init, regimes.

Training runs through the engine's real loop (Trainer behind a real StageContext) on a
small synthetic data set and a VGG-11 at width 1/8.
"""
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from slimkit.api import DistInfo, StageContext
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.models import count_params
from slimkit.models.lenet import lenet300
from slimkit.models.mobilenet import mobilenetv2
from slimkit.models.resnet import resnet20
from slimkit.models.vgg import collapse_block, vgg11
from slimkit.progress import Reporter
from slimkit.train import Trainer
from slimkit_plugins import structural as st

SHAPE = (1, 8, 8)


def make_ctx(tmp_path, teacher=None, epochs=1, n=128):
    bundle = DataBundle("synthetic", load_synthetic(f"{n}x1x8x8@4", 0), seed=0)
    trainer = Trainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=32, reporter=Reporter(False))
    return StageContext(stage="structural", data=bundle, device=torch.device("cpu"), dist=DistInfo(),
                        out_dir=tmp_path, seed=0, epochs=epochs, lr=None, batch_size=32, optimizer="sgd",
                        teacher=teacher, log=lambda m: None, _trainer=trainer)


def tiny_vgg(seed=0):
    model = vgg11(SHAPE, 4, width=0.125, seed=seed)  # channels 8, 16, 32 32, 64 64, 64 64
    # Trained-looking BatchNorm statistics (not the fresh 0/1), so that copies are checked for real.
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


def teacher_of(model):
    return copy.deepcopy(model).eval().requires_grad_(False)


def outside(model, block_name):
    """Every parameter and buffer outside ``block_name``, cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(block_name + ".")}


def opts(**raw):
    return st.Structural().parse_options(raw)


# --------------------------------------------------------------------------- check

def test_check_accepts_vgg_and_names_the_valid_range():
    method = st.Structural()
    method.check(tiny_vgg(), opts(block=5))
    with pytest.raises(UserError, match=r"structural.block=6 is out of range.*5 conv blocks.*1\.\.5"):
        method.check(tiny_vgg(), opts(block=6))


@pytest.mark.parametrize("factory,why", [
    (lambda: lenet300(SHAPE, 4), "no `features`"),
    (lambda: resnet20((3, 8, 8), 4), "no `features`"),
    (lambda: mobilenetv2((3, 8, 8), 4, width=0.25), "InvertedResidual"),
])
def test_check_refuses_models_without_vgg_blocks(factory, why):
    with pytest.raises(UserError, match=why):
        st.Structural().check(factory(), opts(block=1))


def test_check_refuses_strided_block():
    model = nn.Module()
    model.features = nn.Sequential(OrderedDict(block1=nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3, stride=2, padding=1), relu1=nn.ReLU()))))
    with pytest.raises(UserError, match="changes the spatial size"):
        st.Structural().check(model, opts(block=1))


# --------------------------------------------------------------------------- mean init

def test_fit_channels_folds_by_averaging_and_tiles():
    w = torch.arange(6.0).view(6, 1)
    assert torch.equal(st.fit_channels(w, 0, 6), w)
    # 6 -> 4: channel j = mean of j, j+4 (those < 6)
    assert st.fit_channels(w, 0, 4).flatten().tolist() == [2.0, 3.0, 2.0, 3.0]
    # 6 -> 3: channel j = mean of j, j+3
    assert st.fit_channels(w, 0, 3).flatten().tolist() == [1.5, 2.5, 3.5]
    # 6 -> 8: tiled, channel j = j mod 6
    assert st.fit_channels(w, 0, 8).flatten().tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


def test_mean_init_on_vgg_block_is_the_average_of_conv1_and_folded_conv2(tmp_path):
    model = tiny_vgg()
    block = model.features.block3  # conv1 16->32, conv2 32->32; new layer 16->32
    w1, w2 = block.conv1.weight.detach().clone(), block.conv2.weight.detach().clone()
    bn1, bn2 = copy.deepcopy(block.bn1), copy.deepcopy(block.bn2)
    new = collapse_block(model, "block3")
    info = st.mean_init(new, block)
    # conv2's 32 input channels folded onto 16: input channel i is the mean of channels i and i + 16
    expected = (w1 + 0.5 * (w2[:, :16] + w2[:, 16:])) / 2
    torch.testing.assert_close(new.conv1.weight, expected, rtol=0, atol=1e-6)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(new.bn1, attr), (getattr(bn1, attr) + getattr(bn2, attr)) / 2)
    assert info["convs_averaged"] == 2 and info["shapes_averaged"] == [[32, 16, 3, 3], [32, 32, 3, 3]]


def test_mean_init_tiles_and_folds_when_every_shape_differs():
    # conv1 4->6, conv2 6->8: the new layer is 4->8; conv1 is tiled on outputs, conv2 folded on inputs.
    torch.manual_seed(0)
    old = nn.Sequential(OrderedDict(conv1=nn.Conv2d(4, 6, 3, padding=1), relu1=nn.ReLU(),
                                    conv2=nn.Conv2d(6, 8, 3, padding=1), relu2=nn.ReLU()))
    new = nn.Sequential(OrderedDict(conv1=nn.Conv2d(4, 8, 3, padding=1), relu1=nn.ReLU()))
    st.mean_init(new, old)
    w1, w2 = old.conv1.weight, old.conv2.weight
    expected = torch.empty(8, 4, 3, 3)
    for o in range(8):
        for i in range(4):
            folded = torch.stack([w2[o, j] for j in range(6) if j % 4 == i]).mean(0)
            expected[o, i] = (w1[o % 6, i] + folded) / 2
    torch.testing.assert_close(new.conv1.weight, expected, rtol=0, atol=1e-6)
    b1, b2 = old.conv1.bias, old.conv2.bias
    torch.testing.assert_close(new.conv1.bias, torch.stack([(b1[o % 6] + b2[o]) / 2 for o in range(8)]))


def test_mean_init_of_a_single_conv_block_is_the_identity(tmp_path):
    model = tiny_vgg().eval()
    x = torch.randn(5, *SHAPE)
    before = model(x)
    ctx = make_ctx(tmp_path, epochs=0)
    st.Structural().apply(model, ctx, opts(block=2, init="mean", epochs=0))
    torch.testing.assert_close(model.eval()(x), before)


# --------------------------------------------------------------------------- stn and regimes

def test_stn_trains_only_the_new_layer(tmp_path):
    model = tiny_vgg()
    teacher = teacher_of(model)
    new = collapse_block(model, "block4")
    start = copy.deepcopy(new.state_dict())
    rest = outside(model, "features.block4")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ctx = make_ctx(tmp_path, teacher=teacher)
    history = st.student_teacher(model, teacher, "features.block4", ctx, epochs=2)
    assert len(history) == 2 and all(h["train_loss"] >= 0 for h in history)
    after = outside(model, "features.block4")
    assert after.keys() == rest.keys()
    for k in rest:  # every other parameter and BatchNorm statistic, bit for bit
        assert torch.equal(after[k], rest[k]), k
    assert not torch.equal(new.conv1.weight, start["conv1.weight"])
    assert not torch.equal(new.bn1.running_mean, start["bn1.running_mean"])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_stn_lowers_the_block_mse(tmp_path):
    model = tiny_vgg()
    teacher = teacher_of(model)
    collapse_block(model, "block3")
    ctx = make_ctx(tmp_path, teacher=teacher, n=256)
    history = st.student_teacher(model, teacher, "features.block3", ctx, epochs=3, lr=0.05)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_frozen_regime_leaves_everything_else_unchanged(tmp_path):
    model = tiny_vgg()
    rest = outside(model, "features.block3")
    ctx = make_ctx(tmp_path, teacher=teacher_of(model))
    st.Structural().apply(model, ctx, opts(block=3, init="random", regime="frozen"))
    after = outside(model, "features.block3")
    for k in rest:
        assert torch.equal(after[k], rest[k]), k
    assert all(p.requires_grad for p in model.parameters())  # restored after the stage
    assert model.features.block3.bn1.num_batches_tracked.item() > 0  # the new layer did train


def test_thawed_regime_changes_the_rest(tmp_path):
    model = tiny_vgg()
    rest = outside(model, "features.block3")
    ctx = make_ctx(tmp_path, teacher=teacher_of(model))
    st.Structural().apply(model, ctx, opts(block=3, init="mean", regime="thawed"))
    after = outside(model, "features.block3")
    assert not torch.equal(after["features.block1.conv1.weight"], rest["features.block1.conv1.weight"])
    assert not torch.equal(after["classifier.fc.weight"], rest["classifier.fc.weight"])
    assert not torch.equal(after["features.block5.bn2.running_mean"], rest["features.block5.bn2.running_mean"])


def test_apply_records_shapes_params_and_convergence(tmp_path):
    model = tiny_vgg()
    before = count_params(model)
    ctx = make_ctx(tmp_path, teacher=teacher_of(model), epochs=2)
    st.Structural().apply(model, ctx, opts(block=4, init="stn", regime="frozen", stn_epochs=1))
    r = ctx.results
    assert r["block"] == 4 and r["block_name"] == "features.block4"
    assert [c["shape"] for c in r["convs_replaced"]] == [[64, 32, 3, 3], [64, 64, 3, 3]]
    assert r["new_conv_shape"] == [64, 32, 3, 3]
    assert r["params_before"] == before
    assert r["params_after"] == count_params(model) == before - 64 * 64 * 9 - 2 * 64  # conv2 + bn2 gone
    assert len(r["accuracy_per_epoch"]) == 2 and len(r["stn"]["train_mse"]) == 1
    assert r["epochs_to_95"] == st.epochs_to_fraction(r["accuracy_per_epoch"])


def test_epochs_to_95_on_known_histories():
    # final (best) 0.96 -> 95 % of it is 0.912: epoch 4 is the first at or above
    assert st.epochs_to_fraction([0.5, 0.8, 0.9, 0.96, 0.95]) == 4
    assert st.epochs_to_fraction([0.95, 0.2, 1.0]) == 1  # 0.95 is 95 % of 1.0 exactly: epoch 1
    assert st.epochs_to_fraction([0.1, 0.2, 0.3, 0.4]) == 4
    assert st.epochs_to_fraction([0.5, 0.6], fraction=0.8) == 1
    assert st.epochs_to_fraction([]) is None
