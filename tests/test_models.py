"""The model zoo (slimkit.models) and the size counters: shapes, spec round trips, structural edits, counts."""
import json
import re
from collections import OrderedDict

import pluggy
import pytest
import torch
import torch.nn as nn

from slimkit import hookspecs
from slimkit.errors import UserError
from slimkit.models import count_macs, count_nonzero, count_params, zoo
from slimkit.models.vgg import collapse_block, conv_blocks
from slimkit.nn import MaskedConv2d, MaskedLinear, ModuleRegistry, to_masked

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NAMES = ["lenet300", "lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "minivgg", "resnet20", "resnet56", "resnet18",
         "mobilenetv2"]
# Width only scales channels; the spatial logic under test is the same, so the large nets run narrow to stay fast.
FAST_WIDTH = {"vgg11": 0.25, "vgg13": 0.25, "vgg16": 0.25, "vgg19": 0.25, "minivgg": 0.5, "resnet56": 0.5,
              "resnet18": 0.125, "mobilenetv2": 0.25}


def build(name, shape, num_classes=10, **options):
    factory = zoo.MODELS[name][0]
    options.setdefault("width", FAST_WIDTH.get(name, 1.0))
    return factory(shape, num_classes, seed=0, **options)


def registry(masked=False):
    reg = ModuleRegistry()
    zoo.register_modules(reg.register)
    if masked:
        reg.register(MaskedConv2d)
        reg.register(MaskedLinear)
    return reg


def round_trip(model, reg=None):
    """spec -> JSON text -> rebuild -> strict state dict load; returns the rebuilt model."""
    reg = reg or registry()
    text = json.dumps(reg.spec(model))
    rebuilt = reg.build(json.loads(text))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt


def assert_same_outputs(a, b, shape):
    a.eval()
    b.eval()
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == (3, 10)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)


# --------------------------------------------------------------------------- registration

def test_hooks_register_every_model_with_a_summary_through_pluggy():
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    pm.register(zoo, name="slimkit.models.zoo")
    models, modules = {}, []
    pm.hook.register_models(register=lambda name, factory, summary="": models.__setitem__(name, (factory, summary)))
    pm.hook.register_modules(register=modules.append)
    assert sorted(models) == sorted(NAMES + ["vit"])  # vit: tests/test_vit.py
    for name, (factory, summary) in models.items():
        assert callable(factory) and re.search(r"\((\w|&| |\.)+ (19|20)\d\d", summary), name  # cites its paper
    reg = ModuleRegistry()
    for cls in modules:
        reg.register(cls)
    assert {"slimkit.models.resnet.BasicBlock", "slimkit.models.mobilenet.InvertedResidual",
            "slimkit.models.vgg.VGG"} <= set(reg.names())


# --------------------------------------------------------------------------- shapes and round trips

@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_forwards_every_input_shape(name, shape):
    model = build(name, shape)
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, *shape))
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_default_options_build_for_every_shape(name):
    factory = zoo.MODELS[name][0]
    models = {shape: factory(shape, 10) for shape in SHAPES}
    model = models[(1, 8, 8)].eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # Only the first layer sees the input's channels and only LeNet's flattened layers see its size.
    counts = {shape: count_params(m) for shape, m in models.items()}
    if name in ("lenet300", "lenet5"):
        assert len(set(counts.values())) == 3
    else:
        assert counts[(1, 8, 8)] == counts[(1, 28, 28)] < counts[(3, 32, 32)]


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trip_gives_identical_outputs(name):
    shape = (3, 32, 32) if name in ("lenet5", "resnet20") else (1, 8, 8)
    model = build(name, shape)
    # Perturb BN statistics so a round trip that loses buffers would show.
    model.train()
    with torch.no_grad():
        model(torch.randn(4, *shape))
    rebuilt = round_trip(model)
    assert type(rebuilt) is type(model)
    assert [n for n, _ in rebuilt.named_modules()] == [n for n, _ in model.named_modules()]
    assert_same_outputs(model, rebuilt, shape)


def test_full_width_parameter_counts_match_the_published_networks():
    # Option-A ResNets (parameter-free shortcuts) have 269,722 and 853,018 parameters; the two 1x1 projection
    # shortcuts (16->32, 32->64, with BN) add 512+64 + 2048+128 = 2,752.
    assert count_params(zoo.MODELS["resnet20"][0]((3, 32, 32), 10)) == 269_722 + 2_752
    assert count_params(zoo.MODELS["resnet56"][0]((3, 32, 32), 10)) == 853_018 + 2_752
    # CIFAR VGG-16 with BN and one Linear, by hand: 3x3 convs without bias, BN weight and bias, fc.
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512), (512, 512),
             (512, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(i * o * 9 + 2 * o for i, o in convs) + 512 * 10 + 10
    assert count_params(zoo.MODELS["vgg16"][0]((3, 32, 32), 10)) == expected


def test_width_option_scales_channels_and_rejects_bad_values():
    narrow = zoo.MODELS["lenet300"][0]((1, 28, 28), 10, width=0.5)
    assert [m.out_features for m in narrow.modules() if isinstance(m, nn.Linear)] == [150, 50, 10]
    tiny = zoo.MODELS["vgg11"][0]((1, 8, 8), 10, width=0.001)
    assert all(b.out_channels == 1 for b in conv_blocks(tiny))  # rounded, never below one channel
    with pytest.raises(UserError):
        zoo.MODELS["vgg11"][0]((1, 8, 8), 10, width=0)
    with pytest.raises(UserError):
        zoo.MODELS["vgg11"][0]((1, 8, 8), 10, classifier="four")
    with pytest.raises(UserError):
        zoo.MODELS["resnet20"][0]((64,), 10)  # not an image
    with pytest.raises(TypeError):  # unknown options are TypeErrors, which the engine reports
        zoo.MODELS["resnet20"][0]((1, 8, 8), 10, depth=3)


def test_seed_option_is_deterministic_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a = zoo.MODELS["lenet5"][0]((1, 8, 8), 10, seed=3)
    b = zoo.MODELS["lenet5"][0]((1, 8, 8), 10, seed=3)
    c = zoo.MODELS["lenet5"][0]((1, 8, 8), 10, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.features.conv1.weight, c.features.conv1.weight)


# --------------------------------------------------------------------------- VGG blocks

def test_vgg_blocks_expose_stages_channels_and_small_input_pooling():
    model = zoo.MODELS["vgg16"][0]((1, 8, 8), 10, width=0.25)
    blocks = model.blocks
    assert [b.name for b in blocks] == [f"features.block{i}" for i in range(1, 6)]
    assert [(b.in_channels, b.out_channels) for b in blocks] == [(1, 16), (16, 32), (32, 64), (64, 128), (128, 128)]
    assert [len(b.convs) for b in blocks] == [2, 2, 3, 3, 3]
    # 8x8: pools while the size is >= 2 (8 -> 4 -> 2 -> 1), then none.
    assert [b.pool is not None for b in blocks] == [True, True, True, False, False]
    name, block = blocks[2]  # unpacks as (name, block)
    assert model.get_submodule(name) is block and isinstance(block, nn.Sequential)
    assert list(block._modules) == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "pool"]
    pools = [b.pool is not None for b in conv_blocks(zoo.MODELS["vgg11"][0]((1, 28, 28), 10, width=0.25))]
    assert pools == [True, True, True, True, False]  # 28 -> 14 -> 7 -> 3 -> 1
    plain = zoo.MODELS["vgg11"][0]((3, 32, 32), 10, width=0.25, batch_norm=False, classifier="three")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert [b.pool is not None for b in plain.blocks] == [True] * 5
    assert list(plain.classifier._modules) == ["fc1", "relu1", "drop1", "fc2", "relu2", "drop2", "fc3"]


def test_replacing_a_vgg_block_by_one_conv_keeps_working_and_round_trips():
    shape = (1, 8, 8)
    model = build("vgg11", shape)
    name, block = model.blocks[1]
    i, o = model.blocks[1].in_channels, model.blocks[1].out_channels
    model.features._modules["block2"] = nn.Conv2d(i, o, 3, stride=2, padding=1)
    model.eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert (model.blocks[1].in_channels, model.blocks[1].out_channels) == (i, o)
    rebuilt = round_trip(model)
    assert type(rebuilt.features.block2) is nn.Conv2d
    assert_same_outputs(model, rebuilt, shape)


def test_collapse_block_keeps_channels_and_pool_and_round_trips():
    shape = (3, 32, 32)
    model = build("vgg13", shape)
    before = [(b.in_channels, b.out_channels) for b in model.blocks]
    old_pool = model.blocks[2].pool
    new = collapse_block(model, "features.block3")
    assert model.features.block3 is new
    assert list(new._modules) == ["conv1", "bn1", "relu1", "pool"] and new.pool is old_pool
    assert [(b.in_channels, b.out_channels) for b in model.blocks] == before
    assert count_params(model) < count_params(build("vgg13", shape))
    assert_same_outputs(model, round_trip(model), shape)
    with pytest.raises(UserError):
        collapse_block(model, "block9")


def test_removing_a_same_shape_conv_from_a_block_round_trips():
    shape = (1, 28, 28)
    model = build("vgg16", shape)
    block = model.features.block3
    assert block.conv2.in_channels == block.conv2.out_channels
    for child in ("conv2", "bn2", "relu2"):
        del block._modules[child]
    model.eval()
    rebuilt = round_trip(model)
    assert list(rebuilt.features.block3._modules) == ["conv1", "bn1", "relu1", "conv3", "bn3", "relu3", "pool"]
    assert_same_outputs(model, rebuilt, shape)


# --------------------------------------------------------------------------- other structural edits

def test_resnet_conv_replaced_by_two_convs_round_trips():
    shape = (1, 8, 8)
    model = build("resnet20", shape)
    block = model.layer2[0]
    assert type(block.shortcut) is nn.Sequential and type(model.layer2[1].shortcut) is nn.Identity
    c = block.conv1
    block.conv1 = nn.Sequential(OrderedDict([
        ("u", nn.Conv2d(c.in_channels, 4, 1, bias=False)),
        ("v", nn.Conv2d(4, c.out_channels, 3, stride=c.stride, padding=1, bias=False))]))
    model.eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert_same_outputs(model, round_trip(model), shape)


def test_masked_models_round_trip_with_masks():
    shape = (1, 8, 8)
    model = to_masked(build("mobilenetv2", shape))
    conv = model.features.block3.depthwise.conv
    mask = torch.ones_like(conv.weight)
    mask[::2] = 0
    conv.set_mask(mask)
    rebuilt = round_trip(model, registry(masked=True))
    assert isinstance(rebuilt.features.block3.depthwise.conv, MaskedConv2d)
    assert torch.equal(rebuilt.features.block3.depthwise.conv.weight_mask, mask)
    assert_same_outputs(model, rebuilt, shape)


# --------------------------------------------------------------------------- counting

def test_lenet300_params_and_macs_by_hand():
    model = zoo.MODELS["lenet300"][0]((1, 28, 28), 10)
    assert count_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    macs = count_macs(model, (1, 28, 28), layers=True)
    assert macs["dense"] == macs["nonzero"] == 784 * 300 + 300 * 100 + 100 * 10
    assert macs["layers"]["classifier.fc2"] == {"dense": 30_000, "nonzero": 30_000}
    with torch.no_grad():
        model.classifier.fc1.weight[:, :100] = 0  # 300 x 100 weights gone
    assert count_macs(model, (1, 28, 28))["nonzero"] == 784 * 300 - 30_000 + 300 * 100 + 100 * 10


def test_count_macs_reaches_inside_custom_blocks():
    # ResNet-20 on 32x32 by hand: stem, 3 stages of 3 BasicBlocks, two 1x1 projections, fc.
    def conv(positions, cin, cout, k=3):
        return positions * cin * cout * k * k
    expected = (conv(1024, 3, 16) + 6 * conv(1024, 16, 16)
                + conv(256, 16, 32) + 5 * conv(256, 32, 32) + conv(256, 16, 32, 1)
                + conv(64, 32, 64) + 5 * conv(64, 64, 64) + conv(64, 32, 64, 1)
                + 64 * 10)
    model = zoo.MODELS["resnet20"][0]((3, 32, 32), 10)
    model.train()
    assert count_macs(model, (3, 32, 32))["dense"] == expected == 40_813_184
    assert model.training and model.layer3[2].bn2.training  # modes restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_depthwise_conv_macs_use_groups():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 4, 1))
    assert count_macs(model, (8, 5, 5))["dense"] == 25 * 8 * 9 + 25 * 8 * 4


def test_count_nonzero_is_exact_after_zeroing():
    model = build("lenet5", (1, 8, 8))
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert count_nonzero(model) == weights < count_params(model)  # the zoo initialises biases to zero
    with torch.no_grad():
        model.features.conv1.weight[:2] = 0  # 2 filters x 1 x 5 x 5
        model.classifier.fc1.bias[:5] = 1.0
    assert count_nonzero(model) == weights - 50 + 5


def test_masked_layers_are_counted_as_weight_times_mask():
    shape = (1, 8, 8)
    model = to_masked(zoo.MODELS["lenet5"][0](shape, 10))
    conv1, fc3 = model.features.conv1, model.classifier.fc3
    assert isinstance(conv1, MaskedConv2d) and isinstance(fc3, MaskedLinear)
    base_nnz, base = count_nonzero(model), count_macs(model, shape)
    with torch.no_grad():
        conv1.weight_mask[:, :, :2, :] = 0  # 6 x 1 x 2 x 5 = 60 of 150, weights themselves left nonzero
        fc3.weight_mask[:3] = 0  # 3 x 84 = 252
    assert int((conv1.weight != 0).sum()) == 150  # the mask, not the stored weight, decides
    assert count_nonzero(model) == base_nnz - 60 - 252
    macs = count_macs(model, shape, layers=True)
    assert macs["dense"] == base["dense"] == 66_600  # 8x8 LeNet-5: 64*150 + 16*2400 + 64*120 + 120*84 + 84*10
    assert macs["layers"]["features.conv1"]["nonzero"] == 64 * (150 - 60)
    assert macs["layers"]["classifier.fc3"]["nonzero"] == 84 * 10 - 252
    assert macs["nonzero"] == base["nonzero"] - 64 * 60 - 252


def test_latency_and_macs_restore_each_modules_mode():
    """Measuring must not change a model: per-module train/eval flags come back as they were."""
    from slimkit.measure import measure_latency

    model = zoo.MODELS["lenet5"][0]((1, 8, 8), 10)
    model.train()
    model.features.eval()  # a mixed state, as a frozen-part fine-tune leaves it
    before = [m.training for m in model.modules()]
    count_macs(model, (1, 8, 8))
    measure_latency({"m": model}, (1, 8, 8), warmup=1, repeats=2)
    assert [m.training for m in model.modules()] == before


def test_latency_rounds_shuffle_the_order_of_the_models():
    """In a fixed order each model inherits the same neighbour's cache footprint: a bias of one side
    (inside `slimkit info`, the pruned ViT measured 0.78x its baseline in fixed order, 1.04x shuffled)."""
    from slimkit.measure import measure_latency

    calls = []

    def model(name):
        return lambda x: calls.append(name)

    ms = measure_latency({n: model(n) for n in "abcd"}, (1, 2, 2), warmup=1, repeats=12)
    assert set(ms) == set("abcd") and all(v >= 0 for v in ms.values())
    rounds = [tuple(calls[i:i + 4]) for i in range(4, len(calls), 4)]
    assert len(rounds) == 12 and all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1 and len({r[0] for r in rounds}) > 1  # the order changes from round to round
