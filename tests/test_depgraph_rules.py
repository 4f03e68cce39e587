"""What the channel graph refuses (one line naming the fx node, nothing changed) and the
register_channel_rules hook through which a plugin teaches it a layer type."""
import types

import pytest
import torch
import torch.nn as nn

from depgraph_corpus import Head, cbr
from slimkit import hookimpl
from slimkit.errors import UserError
from slimkit.nn.channels import remove_channels, zero_channels
from slimkit.nn.depgraph import build_graph
from slimkit.plugins import load_registry, set_registry


class ChannelScale(nn.Module):
    """A per-channel scale computed with einsum, an op the built-in rules do not know."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        return torch.einsum("bchw,c->bchw", x, self.scale)


class WithScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.s, self.b, self.head = cbr(3, 8), ChannelScale(8), cbr(8, 6), Head(6)

    def forward(self, x):
        return self.head(self.b(self.s(self.a(x))))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_unknown_op_on_prunable_channels_is_refused_naming_the_node():
    model = WithScale().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = _state(model)
    with pytest.raises(UserError) as err:
        build_graph(model, x)
    msg = str(err.value)
    assert "\n" not in msg and "'einsum'" in msg and "call_function einsum" in msg
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_excluding_the_producer_makes_the_unknown_op_harmless():
    model = WithScale().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = build_graph(model, x, strict=False)  # locks what reaches einsum instead of refusing
    assert len(graph.groups) == 1  # only b's channels stay prunable
    holders = {h for rec, _ in graph.groups[0].params for h in rec.holders}
    assert ("b.0", "weight") in holders and not any(name.startswith("a.") for name, _ in holders)


def test_untraceable_model_is_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.c(x)
            return y if y.sum() > 0 else -y  # data-dependent control flow

    with pytest.raises(UserError, match="cannot trace"):
        build_graph(Branchy(), torch.randn(1, 3, 8, 8))


def test_hard_coded_head_count_is_locked_not_broken():
    class FixedHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):  # (B, N, 8) -> 2 heads of 4, the count written into view
            b, n, _ = x.shape
            h = self.q(x).view(b, n, 2, 4).transpose(1, 2).softmax(-1)
            return self.o(h.transpose(1, 2).reshape(b, n, 8)).sum(1)

    graph = build_graph(FixedHeads(), torch.randn(2, 5, 8))
    assert graph.groups == []  # nothing can be removed without breaking the view


def test_a_wrong_rule_cannot_produce_a_broken_model(fresh_registry):
    """A plugin rule that claims ChannelScale makes new channels (it passes them through):
    the surgery's re-trace finds the shapes disagree, refuses, and the model is untouched."""
    from slimkit.nn.depgraph import Labels

    def wrong(call):
        x = call.args[0]
        return Labels([x[0], call.fresh(x[1].shape[0]), *x[2:]])

    @hookimpl
    def register_channel_rules(register):
        register(ChannelScale, wrong, lambda old, t: old)

    set_registry(load_registry(extra_plugins=[types.SimpleNamespace(__name__="wrong_rules",
                                                                    register_channel_rules=register_channel_rules)]))
    model = WithScale().eval()
    x = torch.randn(2, 3, 8, 8)
    graph = build_graph(model, x)
    before = _state(model)
    fresh = next(g for g in graph.groups if not any(h[0].startswith("a.") for rec, _ in g.params for h in rec.holders))
    with pytest.raises(UserError, match="pruned model"):
        remove_channels(model, graph, {fresh.atoms[0]}, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def _plugin_with_rule():
    from slimkit.nn.depgraph import Labels

    def propagate(call):
        x = call.args[0]
        lab = call.param("scale", 0, x[1], "scale")
        return Labels([x[0], lab, *x[2:]])

    def resize(old, tensors):
        return ChannelScale(tensors["scale"].shape[0])

    @hookimpl
    def register_channel_rules(register):
        register(ChannelScale, propagate, resize)

    return types.SimpleNamespace(__name__="scale_rules", register_channel_rules=register_channel_rules)


def test_hook_register_channel_rules(fresh_registry):
    """A plugin teaches the channel graph its own layer type; pruning through it is exact."""
    set_registry(load_registry(extra_plugins=[_plugin_with_rule()]))
    model = WithScale().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    graph = build_graph(model, x)
    rec = graph.params[id(model.s.scale)]
    a_out = graph.roots(graph.params[id(model.a[0].weight)].labels[0])
    assert (graph.roots(rec.labels[0]) == a_out).all()
    remove = {int(a_out[1]), int(a_out[5])}
    zero_channels(graph, remove)
    y = model(x)
    pruned = remove_channels(model, graph, remove, x)
    assert isinstance(pruned.s, ChannelScale) and pruned.s.scale.shape == (6,) and pruned.b[0].in_channels == 6
    torch.testing.assert_close(pruned(x), y, rtol=1e-9, atol=1e-9)


def test_rule_registration_checks_its_arguments():
    from slimkit.nn.channel_rules import builtin_rules

    rules = builtin_rules()
    with pytest.raises(TypeError, match="resize"):
        rules.register(ChannelScale, lambda call: None)
    with pytest.raises(TypeError):
        rules.register(42, lambda call: None)


def test_a_call_a_rule_cannot_read_is_refused_not_guessed():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return self.b(input=self.a(x)).sum((2, 3))

    with pytest.raises(UserError, match=r"fx node 'b' \(call_module b\)"):
        build_graph(Keyword(), torch.randn(1, 3, 8, 8))
