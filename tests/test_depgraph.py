"""Exactness of the channel dependency graph and its surgery (slimkit.nn.depgraph / channels).

For each model: give chosen channels zero effect (zero_channels: their producers' weights,
biases, normalisation scale and shift), remove them (remove_channels), and the smaller
model's outputs equal the zeroed model's in float64. A model the graph cannot follow is
refused with one line naming the fx node, and nothing changes.
"""
import json
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from depgraph_corpus import CORPUS, cbr, Head
from slimkit.errors import UserError
from slimkit.models import count_params, zoo
from slimkit.nn import ModuleRegistry
from slimkit.nn.channels import remove_channels, zero_channels
from slimkit.nn.depgraph import FIXED, build_graph


def prepared(model, shape, seed=0):
    torch.manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():  # non-trivial normalisation statistics and affine parameters
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model, torch.randn(3, *shape, dtype=torch.float64)


def check_exact(model, x, remove, graph):
    y0 = model(x)
    zero_channels(graph, remove)
    y = model(x)
    n_before = count_params(model)
    pruned = remove_channels(model, graph, remove, x)
    assert count_params(pruned) < n_before
    torch.testing.assert_close(pruned(x), y, rtol=1e-9, atol=1e-9)
    assert torch.equal(model(x), y)  # the original is untouched
    return y0, y, pruned


def random_half(graph, seed=0):
    rng = random.Random(seed)
    remove = set()
    for g in graph.groups:
        remove.update(rng.sample(g.atoms, len(g.atoms) // 2))
    return graph.restore_minimum(remove)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_random_half_of_every_group_is_removed_exactly(name):
    factory, shape = CORPUS[name]
    model, x = prepared(factory(), shape)
    graph = build_graph(model, x)
    remove = random_half(graph)
    assert remove
    y0, y, _ = check_exact(model, x, remove, graph)
    assert not torch.allclose(y0, y)  # the removed channels mattered before they were zeroed


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_one_channel_of_each_group(name):
    factory, shape = CORPUS[name]
    model, x = prepared(factory(), shape, seed=1)
    graph = build_graph(model, x)
    assert graph.groups
    for group in graph.groups:
        if len(group.atoms) < 2:
            continue
        m, _ = prepared(factory(), shape, seed=1)
        g = build_graph(m, x)
        atom = g.groups[group.index].atoms[-1]
        check_exact(m, x, {atom}, g)


ZOO = {"lenet300": ((1, 8, 8), {}), "lenet5": ((1, 8, 8), {}), "minivgg": ((3, 8, 8), {"width": 0.25}),
       "vgg11": ((3, 8, 8), {"width": 0.25}), "vgg13": ((3, 8, 8), {"width": 0.125}),
       "vgg16": ((3, 8, 8), {"width": 0.125}), "vgg19": ((3, 8, 8), {"width": 0.125}),
       "resnet20": ((3, 8, 8), {"width": 0.5}), "resnet56": ((3, 8, 8), {"width": 0.25}),
       "resnet18": ((3, 8, 8), {"width": 0.125}), "mobilenetv2": ((3, 8, 8), {"width": 0.25}),
       "vit": ((1, 8, 8), {"dim": 16, "depth": 2, "heads": 4, "patch": 4})}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_zoo_model_is_pruned_exactly(name):
    if name not in zoo.MODELS:
        pytest.skip(f"{name} is not in the zoo")
    shape, opts = ZOO[name]
    model, x = prepared(zoo.MODELS[name][0](shape, 5, seed=0, **opts), shape)
    graph = build_graph(model, x)
    _, y, pruned = check_exact(model, x, random_half(graph, seed=3), graph)
    reg = ModuleRegistry()  # the pruned model saves as a spec and rebuilds at its new sizes
    zoo.register_modules(reg.register)
    rebuilt = reg.build(json.loads(json.dumps(reg.spec(pruned)))).double().eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(rebuilt(x), y, rtol=1e-9, atol=1e-9)


def test_groups_of_a_residual_stage_share_channels():
    model, x = prepared(zoo.MODELS["resnet20"][0]((3, 8, 8), 5, seed=0, width=0.5), (3, 8, 8))
    graph = build_graph(model, x)
    # stage 1: stem + 3 blocks' second convs share one stream; each block's first conv is its own group
    sizes = sorted(len(g.atoms) for g in graph.groups)
    assert sizes == [8] * 4 + [16] * 4 + [32] * 4
    holders = {h[0] for g in graph.groups if len(g.atoms) == 8 for rec, d in g.params for h in rec.holders}
    assert "conv1" in holders and "layer1.2.conv2" in holders


def test_self_concat_maps_each_copy_to_its_slice():
    model, x = prepared(CORPUS["self_concat"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    cat = next(v for k, v in graph.node_labels.items() if k.startswith("cat"))
    first, second = graph.roots(cat[1][:6]), graph.roots(cat[1][6:])
    assert np.array_equal(first, second)  # one atom, two places
    pruned = remove_channels(model, graph, {int(first[2])}, x)
    assert pruned.b[0].in_channels == 10 and pruned.a[0].out_channels == 5


def test_attention_heads_go_whole_and_layernorm_dims_stay():
    model, x = prepared(CORPUS["attention"][0](), (3, 4, 4))
    graph = build_graph(model, x)
    q_rec = graph.params[id(model.q.weight)]
    q_out = graph.roots(q_rec.labels[0])
    assert len(set(q_out.tolist())) == 4 and all(len(set(q_out[h * 4:(h + 1) * 4].tolist())) == 1 for h in range(4))
    for proj in (model.k, model.v):  # the same head atoms label k, v and the output projection's columns
        assert np.array_equal(graph.roots(graph.params[id(proj.weight)].labels[0]), q_out)
    assert np.array_equal(graph.roots(graph.params[id(model.o.weight)].labels[1]), q_out)
    embed = graph.roots(graph.params[id(model.embed.weight)].labels[0])
    assert not any(graph.prunable(int(a)) for a in embed)  # normalised by LayerNorm: locked
    pruned = remove_channels(model, graph, {int(q_out[4])}, x)
    assert pruned.q.out_features == pruned.v.out_features == pruned.o.in_features == 12


def test_grouped_conv_loses_whole_groups():
    model, x = prepared(CORPUS["grouped_conv"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    g1 = graph.roots(graph.params[id(model.g1[0].weight)].labels[0])
    pruned = remove_channels(model, graph, {int(g1[0])}, x)
    # g2's first group reads g1's groups 0 and 1, and GroupNorm's groups 0-1 lie in g2's group 0: all go
    assert (pruned.g1[0].groups, pruned.g1[0].in_channels, pruned.g1[0].out_channels) == (2, 8, 4)
    assert (pruned.g2[0].groups, pruned.g2[0].in_channels, pruned.g2[0].out_channels) == (1, 4, 6)
    assert (pruned.gn.num_groups, pruned.gn.num_channels) == (2, 6) and pruned.stem[0].out_channels == 8


def test_flatten_into_linear_removes_each_channels_columns():
    model, x = prepared(CORPUS["flatten_linear"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    cols = graph.roots(graph.params[id(model.fc1.weight)].labels[1])
    c2 = graph.roots(graph.params[id(model.c2[0].weight)].labels[0])
    assert np.array_equal(cols, np.repeat(c2, 16))
    pruned = remove_channels(model, graph, {int(c2[1])}, x)
    assert pruned.fc1.in_features == 64


def test_shared_layer_stays_one_layer():
    model, x = prepared(CORPUS["shared_conv"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    remove = random_half(graph)
    zero_channels(graph, remove)
    pruned = remove_channels(model, graph, remove, x)
    assert pruned.shared is pruned.alias


def test_locked_dims_are_not_prunable():
    model, x = prepared(CORPUS["chunk_gate"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    c2 = graph.params[id(model.c2[0].weight)].labels[0]
    assert not any(graph.prunable(int(a)) for a in c2)  # split by fixed sizes [4, 4]
    fc = graph.params[id(model.head.fc.weight)].labels[0]
    assert not any(graph.prunable(int(a)) for a in fc)  # the model's output
    with pytest.raises(ValueError, match="locked"):
        remove_channels(model, graph, {int(c2[0])}, x)


def test_removing_every_channel_of_a_dimension_is_refused():
    # the shuffle's hard-coded view(b, 3, -1) ties the 12 channels of stem and g1 into one atom: removing it
    # would leave convolutions with no channels, so it is refused in one line and the model is untouched
    model, x = prepared(CORPUS["channel_shuffle"][0](), (3, 8, 8))
    graph = build_graph(model, x)
    stream = set(graph.roots(graph.params[id(model.g1[0].weight)].labels[0]).tolist())
    assert len(stream) == 1 and graph.prunable(next(iter(stream)))
    y = model(x)
    with pytest.raises(ValueError, match="no entries"):
        remove_channels(model, graph, stream, x)
    assert torch.equal(model(x), y) and model.g1[0].out_channels == 12
