"""Per-group budgets for a non-additive cost (filter-prune's MACs): AIMET's greedy selection
(slimkit.allocation.allocate_greedy) and filter-prune's one-group sensitivity hooks."""
import pytest
import torch

from slimkit.allocation import allocate_greedy, highest_level_within, predicted_losses
from slimkit.errors import UserError
from slimkit.models import zoo
from slimkit_plugins import filter_prune as fp


def _sens(acc, weights, levels, base=0.9):
    return {"method": "filter-prune", "levels": levels, "layers": [f"l{i}" for i in range(len(weights))],
            "weights": weights, "baseline_accuracy": base, "accuracy": acc}


def test_highest_level_within_interpolates_between_measured_levels():
    levels, drops = [0.5, 0.9], [0.02, 0.10]
    assert highest_level_within(levels, drops, 0.0) == 0.0
    assert highest_level_within(levels, drops, 0.01) == pytest.approx(0.25)  # on the segment from (0, 0)
    assert highest_level_within(levels, drops, 0.02) == 0.5
    assert highest_level_within(levels, drops, 0.06) == pytest.approx(0.7)
    assert highest_level_within(levels, drops, 0.5) == 0.9  # never beyond the highest measured level
    assert highest_level_within([0.5, 0.9], [0.0, 0.0], 0.0) == 0.9  # flat: as far as measured


def _removed_at_least(weights, target):
    def reached(levels):
        return sum(lv * w for lv, w in zip(levels.values(), weights)) >= target * sum(weights)
    return reached


def test_greedy_selection_meets_the_budget_at_the_smallest_threshold():
    levels = [0.25, 0.5, 0.75, 0.9]
    sens = _sens([[0.9, 0.89, 0.85, 0.6], [0.8, 0.6, 0.4, 0.2], [0.9, 0.9, 0.88, 0.87]], [100, 100, 100], levels)
    reached = _removed_at_least([100, 100, 100], 0.6)
    got = allocate_greedy(sens, reached)
    assert reached(got["levels"])
    drops = predicted_losses(sens)
    for i, name in enumerate(sens["layers"]):  # every layer within the threshold, and as far as it allows
        assert got["predicted_loss"][name] <= got["threshold"] + 1e-9
        assert got["levels"][name] == pytest.approx(highest_level_within(levels, drops[i], got["threshold"]))
    lower = {n: highest_level_within(levels, drops[i], got["threshold"] * 0.99)
             for i, n in enumerate(sens["layers"])}
    assert not reached(lower)  # a smaller threshold misses the budget
    # the insensitive layer goes furthest, the sensitive one least
    assert got["levels"]["l2"] == 0.9 and got["levels"]["l1"] < got["levels"]["l0"]


def test_greedy_selection_that_cannot_reach_the_budget_is_a_user_error():
    sens = _sens([[0.9], [0.9]], [10, 10], [0.5])
    with pytest.raises(UserError, match="misses the budget"):
        allocate_greedy(sens, _removed_at_least([10, 10], 0.9))


def _vgg():
    torch.manual_seed(0)
    return zoo.MODELS["vgg11"][0]((1, 16, 16), 10, width=0.125).eval()


def test_filter_prune_hooks_name_groups_and_prune_only_one():
    model, method = _vgg(), fp.FilterPrune()
    opts = method.parse_options({})
    layers = method.sensitivity_layers(model, opts)
    assert list(layers)[:2] == ["features.block1.conv1", "features.block2.conv1"]
    assert layers["features.block2.conv1"] == 16 * 8 * 3 * 3  # the group's filters
    out = method.compress_layer(model, "features.block3.conv1", 0.5, opts)
    before = {r["name"]: r for r in fp.layer_rows(model, out)}
    assert before["features.block3.conv1"]["out_after"] == 16 and before["features.block3.conv1"]["out_before"] == 32
    assert before["features.block3.conv2"]["in_after"] == 16 and before["features.block3.conv2"]["out_after"] == 32
    changed = [n for n, r in before.items() if (r["in_after"], r["out_after"]) != (r["in_before"], r["out_before"])]
    assert changed == ["features.block3.conv1", "features.block3.conv2"]
    with pytest.raises(UserError, match="no channel group"):
        method.compress_layer(model, "nope", 0.5, opts)


def test_group_ratios_match_uniform_ratio_when_equal():
    model = _vgg()
    graph = fp.graph_for(model, (1, 16, 16))
    scores = fp.importance_scores(graph, "l1")
    uniform = fp.select_atoms(graph, scores, 0.3)
    per_group = fp.select_atoms(graph, scores, 0.0, group_ratios={g.index: 0.3 for g in graph.groups})
    assert uniform == per_group and uniform


def test_allocation_options_are_checked():
    model, method = _vgg(), fp.FilterPrune()
    for bad in ({"allocation": "sensitivity"}, {"allocation": "sensitivity", "macs": 0.5, "steps": 2},
                {"allocation": "sensitivity", "macs": 0.5, "importance": "taylor"},
                {"sensitivity": "s.json", "macs": 0.5}):
        with pytest.raises(UserError):
            method.check(model, method.parse_options(bad))


@pytest.mark.slow
def test_compress_with_sensitivity_allocation_meets_the_macs_target(tmp_path):
    import json

    from conftest import cli

    out = tmp_path / "run"
    assert cli("compress", "--model", "lenet5", "--baseline-epochs", "1", "--epochs", "0", "-m", "filter-prune",
               "--set", "macs=0.5", "--set", "allocation=sensitivity", "--no-latency", "--quiet", "--out", out) == 0
    stage = json.loads((out / "report.json").read_text())["stages"][0]
    assert stage["macs_after"] <= 0.5 * stage["macs_before"] and stage["macs_target_reached"]
    alloc = stage["allocation"]
    assert set(alloc["levels"]) == set(stage["group_ratios"]) and alloc["strategy"].startswith("greedy")
    assert all(v <= alloc["threshold"] + 1e-9 for v in alloc["predicted_loss"].values())
