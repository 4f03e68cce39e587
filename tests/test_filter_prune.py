"""filter-prune on the channel dependency graph: importance criteria, scopes, targets, options."""
import pytest
import torch
import torch.nn as nn

from depgraph_corpus import CORPUS
from slimkit.errors import UserError
from slimkit.models import zoo
from slimkit_plugins import filter_prune as fp
from test_prune import VGGLike, convs_of, make_ctx, opts_for


def resnet(width=0.5, seed=0):
    return zoo.MODELS["resnet20"][0]((3, 8, 8), 4, width=width, seed=seed)


def test_l1_per_layer_keeps_the_largest_filters_and_slices_everything():
    model = VGGLike().eval()
    w0 = model.features[0][0].weight.detach().clone()
    params_before, macs_before = fp.count_params(model), fp.count_macs(model, (3, 16, 16))
    out = fp.prune_channels(model, (3, 16, 16), ratio=0.5, norm_over="filters")  # Li et al.'s filter norm
    assert [c.out_channels for c in convs_of(out)] == [4, 8, 8, 6]
    assert [c.in_channels for c in convs_of(out)] == [3, 4, 8, 8]
    keep = sorted(torch.argsort(w0.abs().sum((1, 2, 3)), descending=True)[:4].tolist())
    assert torch.equal(out.features[0][0].weight, w0[keep])  # surviving filters are the original rows
    assert out.classifier[1].in_features == 6 * 4 and out.classifier[3].in_features == 10  # hidden units too
    assert fp.count_params(out) < 0.5 * params_before and fp.count_macs(out, (3, 16, 16)) < 0.5 * macs_before
    assert [c.out_channels for c in convs_of(model)] == [8, 16, 16, 12]  # the original is untouched


def test_removing_dead_filters_keeps_the_function():
    model = VGGLike(bias=False).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                dead = torch.arange(m.weight.shape[0]) % 2 == 1
                m.weight[dead] = 0
                if isinstance(m, nn.BatchNorm2d):
                    m.bias[dead] = 0
    x = torch.randn(3, 3, 16, 16)
    out = fp.prune_channels(model, (3, 16, 16), ratio=0.5, exclude="classifier.*")
    # the classifier is left alone, inputs included, so the last conv keeps its maps
    assert [c.out_channels for c in convs_of(out)] == [4, 8, 8, 12]
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_bn_scale_removes_the_smallest_gammas_of_each_group():
    model = resnet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.linspace(1.0, 0.1, m.num_features))  # the last channels matter least
    out = fp.prune_channels(model, (3, 8, 8), ratio=0.25, importance="bn-scale")
    assert out.layer1[0].conv1.out_channels == 6
    torch.testing.assert_close(out.layer1[0].bn1.weight, model.layer1[0].bn1.weight[:6])
    assert out.conv1.out_channels == 6 and out.fc.in_features == 24


def test_taylor_and_random_importance():
    model = resnet()
    ctx = make_ctx(None, epochs=0)
    graph = fp.graph_for(model, (3, 8, 8))
    taylor = fp.importance_scores(graph, "taylor", data=ctx.data, taylor_batches=2, batch_size=32)
    atoms = {a for g in graph.groups for a in g.atoms}
    assert set(taylor) == atoms and all(v >= 0 for v in taylor.values()) and max(taylor.values()) > 0
    assert all(p.grad is None for p in model.parameters())
    rand1 = fp.importance_scores(graph, "random", seed=1)
    assert set(rand1) == atoms and rand1 != fp.importance_scores(graph, "random", seed=2)
    assert rand1 == fp.importance_scores(graph, "random", seed=1)


def test_global_scope_ranks_across_groups_and_keeps_one_per_group():
    model = resnet().eval()
    with torch.no_grad():
        model.layer3[0].conv1.weight.mul_(1e-3)  # one layer's filters are far weaker than the rest
    graph = fp.graph_for(model, (3, 8, 8))
    scores = fp.importance_scores(graph, "l1", norm_over="filters")
    remove = fp.select_atoms(graph, scores, 0.2, "global", normalize=False)
    weak = next(g for g in graph.groups if any(h == ("layer3.0.conv1", "weight") for r, d in g.params if d == 0
                                                for h in r.holders))
    assert len(remove & set(weak.atoms)) == len(weak.atoms) - 1  # all but one of the weak layer's
    assert all(set(g.atoms) - remove for g in graph.groups)


class _TinyMLP(nn.Module):
    """Three hidden units, one group: fc1's output rows, bn's scales, fc2's input columns."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [3.0, 0.0]]))
            self.fc1.bias.fill_(10.0)  # biases and shifts are not scored: large ones must change nothing
            self.bn.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
            self.bn.bias.fill_(-5.0)
            self.fc2.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]))

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def _by_unit(graph, scores):
    rec = graph.params[id(graph.model.fc1.weight)]
    return [scores[int(a)] for a in graph.roots(rec.labels[0])]


def test_group_norm_is_the_mean_over_the_groups_weights():
    """DepGraph's group magnitude by hand: per unit, the L1 (squared L2) of its fc1 row, its BN scale and its
    fc2 column, averaged over the three tensors."""
    graph = fp.graph_for(_TinyMLP().eval(), (2,))
    assert [len(g.atoms) for g in graph.groups] == [3]
    l1 = _by_unit(graph, fp.importance_scores(graph, "l1"))
    assert l1 == pytest.approx([(3 + 2 + 3) / 3, (1 + 1 + 1) / 3, (3 + 0.5 + 1) / 3], rel=1e-12)
    l2 = _by_unit(graph, fp.importance_scores(graph, "l2", norm_over="group"))
    assert l2 == pytest.approx([(5 + 4 + 5) / 3, (0.5 + 1 + 1) / 3, (9 + 0.25 + 1) / 3], rel=1e-12)
    removed = fp.prune_channels(graph.model, (2,), ratio=1 / 3, graph=graph)
    assert torch.equal(removed.fc1.weight, graph.model.fc1.weight[[0, 2]])  # unit 1 scores least


def test_group_norm_leaves_depthwise_filters_out_unless_group_all():
    """expand (1x1) -> BN -> depthwise -> BN -> project (1x1): one group of two channels, five tensors each;
    ``group`` averages four (not the depthwise filter, as Torch-Pruning), ``group-all`` all five."""
    def conv(cin, cout, w, groups=1):
        c = nn.Conv2d(cin, cout, 1, groups=groups, bias=False)
        c.weight.data = torch.tensor(w).view_as(c.weight)
        return c

    def bn(w):
        b = nn.BatchNorm2d(2)
        b.weight.data = torch.tensor(w)
        return b

    model = nn.Sequential(conv(1, 2, [2.0, -1.0]), bn([1.0, 3.0]), conv(2, 2, [5.0, 0.5], groups=2),
                          bn([1.0, -1.0]), conv(2, 1, [4.0, -2.0])).eval()
    graph = fp.graph_for(model, (1, 4, 4))
    atoms = [int(a) for a in graph.roots(graph.params[id(model[0].weight)].labels[0])]
    group = fp.importance_scores(graph, "l1")
    assert [group[a] for a in atoms] == pytest.approx([(2 + 1 + 1 + 4) / 4, (1 + 3 + 1 + 2) / 4], rel=1e-12)
    every = fp.importance_scores(graph, "l1", norm_over="group-all")
    assert [every[a] for a in atoms] == pytest.approx([(2 + 1 + 5 + 1 + 4) / 5, (1 + 3 + 0.5 + 1 + 2) / 5],
                                                      rel=1e-12)


def test_filters_option_scores_output_rows_only():
    """norm_over=filters is Li et al.'s filter norm, the numbers filter-prune gave before group scoring."""
    graph = fp.graph_for(_TinyMLP().eval(), (2,))
    assert _by_unit(graph, fp.importance_scores(graph, "l1", norm_over="filters")) == pytest.approx([3, 1, 3])
    assert _by_unit(graph, fp.importance_scores(graph, "l2", norm_over="filters")) == pytest.approx(
        [5 ** 0.5, 0.5 ** 0.5, 3])
    model = resnet().eval()
    graph = fp.graph_for(model, (3, 8, 8))
    conv = model.layer2[1].conv1  # its own group: no other layer's filters hold these channels
    rec = graph.params[id(conv.weight)]
    atoms = [int(a) for a in graph.roots(rec.labels[0])]
    for power, ref in ((1, conv.weight.detach().double().abs().sum((1, 2, 3))),
                       (2, conv.weight.detach().double().pow(2).sum((1, 2, 3)).sqrt())):
        scores = fp.importance_scores(graph, f"l{power}", norm_over="filters")
        assert [scores[a] for a in atoms] == pytest.approx(ref.tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="norm_over"):
        fp.importance_scores(graph, "l1", norm_over="columns")


def test_global_group_l1_keeps_every_layer():
    """One ranking over MobileNetV2's 25 groups: divided by their group means, the group scores leave every
    group at least a quarter of its channels at ratio 0.5; raw, the layers with many small weights go first
    and a group is nearly emptied (what made global scope lose to Torch-Pruning, docs/BENCHMARKS.md)."""
    model = zoo.MODELS["mobilenetv2"][0]((3, 8, 8), 4, seed=0, width=0.5).eval()
    graph = fp.graph_for(model, (3, 8, 8))
    scores = fp.importance_scores(graph, "l1")
    groups = [set(g.atoms) for g in graph.groups if len(g.atoms) > 1]

    def least_kept(remove):
        return min(len(g - remove) / len(g) for g in groups)

    normalised = fp.select_atoms(graph, scores, 0.5, "global")
    assert len(normalised) == fp.filters_to_remove(sum(map(len, groups)), 0.5)
    assert least_kept(normalised) >= 0.25
    assert least_kept(fp.select_atoms(graph, scores, 0.5, "global", normalize=False)) < 0.05


def test_pruning_leaves_the_random_state_as_it_was():
    """Rebuilt layers initialise their weights before they are overwritten; that must not move the RNG, or
    the dropout masks of the fine-tuning that follows would depend on how many trial copies were pruned."""
    model = zoo.MODELS["mobilenetv2"][0]((3, 8, 8), 4, seed=0, width=0.25).eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    fp.prune_to_macs(model, (3, 8, 8), 0.5 * fp.count_macs(model, (3, 8, 8)))
    assert torch.equal(torch.rand(3), expected)


def test_round_to_keeps_multiples():
    out = fp.prune_channels(resnet(), (3, 8, 8), ratio=0.3, round_to=4)
    assert all(c.out_channels % 4 == 0 for c in convs_of(out))


def test_round_to_counts_channels_and_leaves_small_groups_exact():
    assert next(o for o in fp.FilterPrune().options if o.name == "round_to").default == 8
    model = resnet(width=1.0)  # groups of 16, 32 and 64 channels
    graph = fp.graph_for(model, (3, 8, 8))
    widths = {graph.channels_per_atom(g) for g in graph.groups}
    assert widths == {1}
    steps = fp.rounding_steps(graph, 8)
    assert set(steps.values()) == {8} and len(steps) == len([g for g in graph.groups if len(g.atoms) >= 16])
    out = fp.prune_channels(model, (3, 8, 8), ratio=0.3, round_to=8)  # 16-5, 32-10, 64-19 rounded up
    assert sorted({c.out_channels for c in convs_of(out)}) == [16, 24, 48]
    out = fp.prune_channels(model, (3, 8, 8), ratio=0.5, round_to=8)
    assert sorted({c.out_channels for c in convs_of(out)}) == [8, 16, 32]
    small = resnet(width=0.25)  # 4, 8 and 16 channels: only the 16-channel groups are rounded
    out = fp.prune_channels(small, (3, 8, 8), ratio=0.5, round_to=8)
    assert sorted({c.out_channels for c in convs_of(out)}) == [2, 4, 8]


def test_round_to_counts_an_attention_heads_channels():
    vit = zoo.MODELS["vit"][0]((1, 8, 8), 10, dim=32, depth=1, heads=8, seed=0).eval()  # heads of 4 channels
    graph = fp.graph_for(vit, (1, 8, 8))
    heads = [g for g in graph.groups if graph.channels_per_atom(g) == 4]
    assert len(heads) == 1 and len(heads[0].atoms) == 8
    assert fp.rounding_steps(graph, 8)[heads[0].index] == 2  # two heads make 8 channels
    out = fp.prune_channels(vit, (1, 8, 8), ratio=0.3, round_to=8)  # 8 heads - round(2.4) = 6 heads, 24 channels
    assert out.blocks[0].attn.q.out_features == 24
    out = fp.prune_channels(vit, (1, 8, 8), ratio=0.4, round_to=8)  # 5 heads -> 6 (an even count)
    assert out.blocks[0].attn.q.out_features == 24
    wide = zoo.MODELS["vit"][0]((1, 8, 8), 10, dim=32, depth=1, heads=2, seed=0).eval()  # heads of 16
    assert fp.prune_channels(wide, (1, 8, 8), ratio=0.5, round_to=8).blocks[0].attn.q.out_features == 16


def test_exclude_leaves_matching_layers_alone():
    model = resnet()
    out = fp.prune_channels(model, (3, 8, 8), ratio=0.5, exclude="layer2.*")
    assert out.layer2[1].conv1.out_channels == 16 and out.layer1[0].conv1.out_channels == 4
    assert out.layer3[0].conv1.out_channels == 16


def test_macs_target_is_met_by_bisection():
    model = resnet(width=0.25)
    base = fp.count_macs(model, (3, 8, 8))
    out, ratio = fp.prune_to_macs(model, (3, 8, 8), 0.5 * base)
    assert fp.count_macs(out, (3, 8, 8)) <= 0.5 * base
    looser = fp.prune_channels(model, (3, 8, 8), ratio=ratio - 0.05)
    assert fp.count_macs(looser, (3, 8, 8)) > 0.5 * base  # close to the least pruning that meets it


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "lenet300", "vgg11"])
def test_check_accepts_the_zoo(name):
    shape = (1, 8, 8) if name.startswith("lenet") else (3, 8, 8)
    opts = {} if name.startswith("lenet") else {"width": 0.25}
    fp.FilterPrune().check(zoo.MODELS[name][0](shape, 4, seed=0, **opts), opts_for(fp.FilterPrune()))


def test_check_refuses_untraceable_and_apply_refuses_unfollowable(tmp_path):
    method = fp.FilterPrune()

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) if x.sum() > 0 else x

    with pytest.raises(UserError, match="cannot trace"):
        method.check(Branchy(), opts_for(method))

    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(torch.einsum("bchw->bc", self.c(x)))

    with pytest.raises(UserError, match="einsum"):
        method.apply(Einsum(), make_ctx(tmp_path, epochs=0), opts_for(method))


def test_through_the_engine_with_steps_and_fine_tuning(tmp_path):
    model = resnet()
    method = fp.FilterPrune()
    opts = opts_for(method, ratio=0.5, steps=2, epochs=1, round_to=1)  # exact counts: the steps are checked
    method.check(model, opts)
    ctx = make_ctx(tmp_path, epochs=1)
    out = method.apply(model, ctx, opts)
    res = ctx.results
    assert res["macs_after"] < 0.5 * res["macs_before"] and res["params_after"] < res["params_before"]
    rows = {r["name"]: r for r in res["layers"]}
    assert rows["layer1.0.conv1"]["out_before"] == 8 and rows["layer1.0.conv1"]["out_after"] == 4
    assert rows["fc"]["in_after"] == out.fc.in_features
    assert sum("step" in line for line in ctx.logs) == 2
    assert out(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_macs_option_and_bn_sparsity_phase(tmp_path):
    method = fp.FilterPrune()
    opts = opts_for(method, macs=0.6, importance="bn-scale", sparsity=1e-3, sparsity_epochs=1, epochs=0)
    ctx = make_ctx(tmp_path, epochs=1)
    out = method.apply(resnet(width=0.25), ctx, opts)
    assert ctx.results["macs_after"] <= 0.6 * ctx.results["macs_before"] and ctx.results["macs_target_reached"]
    cb = fp._BNSparsity(0.5)
    bn = nn.BatchNorm2d(2)
    bn.weight.data = torch.tensor([1.0, -2.0])
    bn.weight.grad = torch.zeros(2)
    cb.after_backward(nn.Sequential(bn), 0)
    assert bn.weight.grad.tolist() == [0.5, -0.5]
    assert out is not None


def test_attention_model_loses_whole_heads():
    factory, shape = CORPUS["attention"]
    out = fp.prune_channels(factory(), shape, ratio=0.5)
    assert out.q.out_features == out.k.out_features == out.v.out_features == out.o.in_features == 8
    assert out.fc1.out_features == 12 and out.embed.out_features == 16  # MLP units go, LayerNorm'd dim stays


def test_options_have_defaults_and_ranges():
    described = {o["name"]: o for o in fp.FilterPrune().describe()["options"]}
    assert described["importance"]["default"] == "l1" and "taylor" in described["importance"]["allowed"]
    assert described["scope"]["allowed"] == "one of per-layer, global"
    for name in ("ratio", "macs", "steps", "round_to", "taylor_batches", "sparsity"):
        assert "[" in described[name]["allowed"] or ">=" in described[name]["allowed"]
    with pytest.raises(UserError):
        opts_for(fp.FilterPrune(), importance="l3")


def test_masked_layers_stay_masked_with_their_masks_sliced():
    from slimkit.nn import MaskedConv2d, MaskedLinear, to_masked

    model = to_masked(VGGLike()).eval()
    first = model.features[0][0]
    with torch.no_grad():
        first.weight_mask[:, 0] = 0  # input channel 0 of every filter pruned
        first.zero_pruned()
    out = fp.prune_channels(model, (3, 16, 16), ratio=0.5)
    convs = convs_of(out)
    assert all(isinstance(c, MaskedConv2d) for c in convs) and isinstance(out.classifier[1], MaskedLinear)
    assert [c.out_channels for c in convs] == [4, 8, 8, 6]
    for c in convs + [out.classifier[1], out.classifier[3]]:
        assert c.weight_mask.shape == c.weight.shape and torch.equal(c.weight, c.weight * c.weight_mask)
    assert (out.features[0][0].weight_mask[:, 0] == 0).all()
    assert out(torch.randn(1, 3, 16, 16)).shape == (1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet20", "mobilenetv2", "vit"])
def test_compress_writes_a_smaller_model_that_evaluates_as_reported(model, tmp_path, capsys):
    import json

    from conftest import cli

    out = tmp_path / "o"
    opts = ("--model-opt", "width=0.5") if model != "vit" else ("--model-opt", "dim=32", "--model-opt", "depth=2")
    assert cli("compress", "--model", model, *opts, "--data", "digits", "--baseline-epochs", "3", "--epochs", "1",
               "--method", "filter-prune", "--set", "macs=0.5", "--quiet", "--no-latency", "--out", out) == 0
    report = json.loads((out / "report.json").read_text())
    stage = next(s for s in report["stages"] if s.get("macs_before"))
    capsys.readouterr()
    assert cli("evaluate", out / "model.slim", "--json") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["final"]["accuracy"]
    assert stage["macs_after"] <= 0.5 * stage["macs_before"]
    assert cli("export", out / "model.slim", "--format", "torchscript", "--out", tmp_path / "m.pt") == 0
    assert cli("info", out / "model.slim") == 0


def test_global_bn_scale_normalises_unless_sparsity_trained():
    """Raw BN scales of an untrained-for-sparsity net differ by orders of magnitude between
    layers; one raw global threshold would empty the small-scale layer (Network Slimming's
    raw threshold is meant for sparsity-trained scales only)."""
    model = resnet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.linspace(1.0, 0.5, m.num_features))
        model.layer1[0].bn1.weight.mul_(1e-3)  # one layer with tiny scales
    normalised = fp.prune_channels(model, (3, 8, 8), ratio=0.25, importance="bn-scale", scope="global")
    raw = fp.prune_channels(model, (3, 8, 8), ratio=0.25, importance="bn-scale", scope="global",
                            sparsity_trained=True)
    assert raw.layer1[0].conv1.out_channels == 1  # the raw threshold takes all but the last one
    assert normalised.layer1[0].conv1.out_channels > 1
