"""Method `layer-removal` (Tan, Sheehan & Yap, CS230 2018): zero-density / random layer removal + KD."""
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
from slimkit.models.resnet import resnet20
from slimkit.models.vgg import vgg11
from slimkit.nn import to_masked
from slimkit.plugins import get_registry
from slimkit.progress import Reporter
from slimkit import storage
from slimkit.train import Trainer
from slimkit_plugins import layer_removal as lr

SHAPE = (1, 8, 8)


def make_ctx(tmp_path, teacher, epochs=1, seed=0):
    bundle = DataBundle("synthetic", load_synthetic("128x1x8x8@4", 0), seed=0)
    trainer = Trainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=32, reporter=Reporter(False))
    return StageContext(stage="layer-removal", data=bundle, device=torch.device("cpu"), dist=DistInfo(),
                        out_dir=tmp_path, seed=seed, epochs=epochs, lr=None, batch_size=32, optimizer="sgd",
                        teacher=teacher, log=lambda m: None, _trainer=trainer)


def tiny_vgg():
    return vgg11(SHAPE, 4, width=0.125, seed=0)  # channels 8 | 16 | 16->32, 32 | 32->64, 64 | 64, 64


def opts(**raw):
    return lr.LayerRemoval().parse_options(raw)


def test_candidates_of_vgg_are_the_same_shape_convs():
    names = [c.name for c in lr.find_removable(tiny_vgg())]
    assert names == ["features.block3.conv2", "features.block4.conv2", "features.block5.conv1",
                     "features.block5.conv2"]
    c = lr.find_removable(tiny_vgg())[0]
    assert c.children == ["conv2", "bn2", "relu2"] and c.shape == [32, 32, 3, 3]


def test_candidates_of_resnet_are_identity_shortcut_blocks():
    model = resnet20((1, 8, 8), 4, width=0.5)
    names = [c.name for c in lr.find_removable(model)]
    # the first block of stages 2 and 3 has a strided 1x1 projection: not removable
    assert names == ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def test_zero_density_counts_weights_below_threshold():
    model = tiny_vgg()
    c = next(c for c in lr.find_removable(model) if c.name == "features.block4.conv2")
    w = c.convs[0].weight
    with torch.no_grad():
        w.fill_(1.0)
        w.view(-1)[:100] = 0.003
        w.view(-1)[100:150] = -0.009
        w.view(-1)[150:160] = 0.011
    assert lr.zero_density(c, 0.01) == 150 / w.numel()
    assert lr.zero_density(c, 0.02) == 160 / w.numel()


def test_zero_density_sees_pruning_masks():
    model = to_masked(tiny_vgg())
    c = next(c for c in lr.find_removable(model) if c.name == "features.block3.conv2")
    conv = c.convs[0]
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight_mask.view(-1)[:300] = 0
    assert lr.zero_density(c, 0.01) == 300 / conv.weight.numel()


def test_zero_density_ranking_picks_the_layer_with_most_near_zero_weights():
    model = tiny_vgg()
    candidates = lr.find_removable(model)
    target = next(c for c in candidates if c.name == "features.block4.conv2")
    with torch.no_grad():  # 90 % of its weights become tiny
        w = target.convs[0].weight
        w.view(-1)[: int(0.9 * w.numel())] = 1e-4
    densities = {c.name: lr.zero_density(c, 0.01) for c in candidates}
    assert max(densities, key=densities.get) == "features.block4.conv2"
    assert [c.name for c in lr.choose(candidates, 1, "zero-density", 0.01, seed=0)] == ["features.block4.conv2"]
    two = lr.choose(candidates, 2, "zero-density", 0.01, seed=0)
    second = sorted((c for c in candidates if c is not target), key=lambda c: -densities[c.name])[0]
    assert {c.name for c in two} == {"features.block4.conv2", second.name}


def test_random_rank_is_seeded():
    candidates = lr.find_removable(resnet20((1, 8, 8), 4, width=0.5))
    picks = {s: [c.name for c in lr.choose(candidates, 2, "random", 0.01, seed=s)] for s in range(8)}
    again = {s: [c.name for c in lr.choose(candidates, 2, "random", 0.01, seed=s)] for s in range(8)}
    assert picks == again  # same seed, same layers
    assert len({tuple(p) for p in picks.values()}) > 1  # the seed matters
    assert all(len(set(p)) == 2 for p in picks.values())


@pytest.mark.parametrize("factory,input_shape", [(tiny_vgg, SHAPE), (lambda: resnet20((1, 8, 8), 4, width=0.5), SHAPE)])
def test_removal_keeps_the_model_well_formed_and_counts_params(tmp_path, factory, input_shape):
    model = factory().eval()
    candidates = lr.find_removable(model)
    chosen = [candidates[0], candidates[-1]]
    removed_params = 0
    for c in chosen:
        parent = model.get_submodule(c.parent)
        removed_params += sum(p.numel() for n in c.children for p in parent._modules[n].parameters())
    before = count_params(model)
    lr.remove(model, chosen)
    assert count_params(model) == before - removed_params
    assert model(torch.randn(3, *input_shape)).shape == (3, 4)
    # the smaller architecture saves and rebuilds
    registry = get_registry()
    storage.save_model(tmp_path / "m.slim", model, registry, info={"model": "x"})
    loaded = storage.load_model(tmp_path / "m.slim", registry).model.eval()
    x = torch.randn(2, *input_shape)
    torch.testing.assert_close(loaded(x), model(x))
    assert len(lr.find_removable(model)) == len(candidates) - 2


def test_refuses_a_model_with_nothing_removable():
    method = lr.LayerRemoval()
    with pytest.raises(UserError, match="no layer of LeNet300 can be removed"):
        method.check(lenet300(SHAPE, 4), opts())
    chain = nn.Sequential(OrderedDict(conv1=nn.Conv2d(1, 4, 3, padding=1), relu1=nn.ReLU(),
                                      conv2=nn.Conv2d(4, 8, 3, padding=1), relu2=nn.ReLU(),
                                      conv3=nn.Conv2d(8, 8, 3, stride=2, padding=1), flat=nn.Flatten()))
    with pytest.raises(UserError, match="can be removed while keeping the network well-formed"):
        method.check(chain, opts())
    with pytest.raises(UserError, match=r"layer-removal.count=5 is out of range: only 4"):
        method.check(tiny_vgg(), opts(count=5))


def test_apply_distils_and_records(tmp_path):
    model = tiny_vgg()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    before = count_params(model)
    ctx = make_ctx(tmp_path, teacher, epochs=1)
    out = lr.LayerRemoval().apply(model, ctx, opts(count=2, rank="zero-density"))
    r = ctx.results
    order = [c["name"] for c in r["candidates"]]  # forward order
    top2 = sorted(r["candidates"], key=lambda c: -c["zero_density"])[:2]  # stable: ties keep the earlier layer
    assert [x["name"] for x in r["removed"]] == sorted((c["name"] for c in top2), key=order.index)
    assert {x["zero_density"] for x in r["removed"]} == {c["zero_density"] for c in top2}
    assert r["params_before"] == before and r["params_after"] == count_params(out) < before
    assert len(r["accuracy_per_epoch"]) == 1 and r["train_loss_per_epoch"][0] > 0
    assert out(torch.randn(2, *SHAPE)).shape == (2, 4)


@pytest.mark.parametrize("pipe", [True, False])
def test_pipe_weights_keeps_or_reinitialises_the_kept_layers(tmp_path, pipe):
    model = tiny_vgg()
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = make_ctx(tmp_path, teacher, epochs=0)
    lr.LayerRemoval().apply(model, ctx, opts(rank="random", pipe_weights=pipe))
    same = torch.equal(model.features.block1.conv1.weight, teacher.features.block1.conv1.weight)
    assert same is pipe
    assert torch.equal(model.classifier.fc.weight, teacher.classifier.fc.weight) is pipe


def test_kd_loss_weighting_is_lambda(tmp_path, monkeypatch):
    from slimkit import ops

    seen = []
    real = ops.kd_loss

    def spy(student, teacher, labels, temperature, alpha):
        seen.append((temperature, alpha))
        return real(student, teacher, labels, temperature, alpha=alpha)

    monkeypatch.setattr(ops, "kd_loss", spy)
    model = tiny_vgg()
    ctx = make_ctx(tmp_path, copy.deepcopy(model).eval().requires_grad_(False), epochs=1)
    lr.LayerRemoval().apply(model, ctx, opts(**{"lambda": 0.25, "temperature": 3.0}))
    assert seen and set(seen) == {(3.0, 0.25)}
