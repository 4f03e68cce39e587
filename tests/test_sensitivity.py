"""Per-layer sensitivity (slimkit.sensitivity), the method hooks of prune and lowrank, and the
knapsack allocation (slimkit.allocation) checked against brute force."""
import copy
import itertools
import json
import math
import random
from fractions import Fraction

import pytest
import torch

from slimkit.allocation import allocate, candidate_levels, interpolated_drop, predicted_losses
from slimkit.errors import UserError
from slimkit.models.lenet import lenet300, lenet5
from slimkit.plugins import get_registry
from slimkit.sensitivity import analyse, parse_levels, read_sensitivity


def _method(name):
    return get_registry().method(name)


def _with_layers(factory, method_name):
    """A seeded model for 8x8 digits, the method, its default options and its per-layer candidates."""
    torch.manual_seed(0)
    model = factory((1, 8, 8), 10)
    method = _method(method_name)
    opts = method.parse_options({})
    return model, method, opts, method.sensitivity_layers(model, opts)


def test_prune_compress_layer_prunes_only_that_layer_to_the_exact_count():
    model, m, opts, layers = _with_layers(lenet300, "prune")
    assert layers == {"classifier.fc1": 300 * 64, "classifier.fc2": 100 * 300, "classifier.fc3": 10 * 100}
    out = m.compress_layer(model, "classifier.fc2", 0.7, opts)
    zeros = {n: int((mod.weight * mod.weight_mask == 0).sum()) for n, mod in out.named_modules()
             if hasattr(mod, "weight_mask")}
    assert zeros == {"classifier.fc1": 0, "classifier.fc2": 21000, "classifier.fc3": 0}
    w = out.classifier.fc2.weight
    kept = w[w != 0].abs()
    assert kept.min() >= w.detach().abs()[out.classifier.fc2.weight_mask == 0].max()  # the smallest went


def test_lowrank_compress_layer_replaces_that_layer_at_the_rank_of_the_level():
    model, m, opts, layers = _with_layers(lenet5, "lowrank")
    assert list(layers) == ["features.conv2"]  # skip_first, layers=conv
    conv = model.features.conv2
    full = min(conv.in_channels * conv.kernel_size[0], conv.out_channels * conv.kernel_size[1])
    out = m.compress_layer(model, "features.conv2", 0.75, opts)
    new = out.features.conv2
    assert new.rank == math.ceil(0.25 * full)
    x = torch.randn(2, 1, 8, 8)
    assert out(x).shape == (2, 10)


def test_a_method_without_the_hooks_is_a_user_error():
    from slimkit.sensitivity import candidate_layers

    with pytest.raises(UserError, match="cannot compress one layer at a time"):
        candidate_layers(_method("distill"), lenet300((1, 8, 8), 10), {})


def test_analyse_measures_every_cell_once_and_reuses_finished_ones():
    torch.manual_seed(0)
    model = lenet300((1, 8, 8), 10)
    m = _method("prune")
    opts = m.parse_options({})
    x = torch.randn(64, 1, 8, 8)
    ref = model(x).argmax(1)
    calls = []

    def evaluate(net):  # agreement with the uncompressed model's predictions
        calls.append(1)
        return float((net(x).argmax(1) == ref).float().mean())

    cells = {}
    sens = analyse(model, m, opts, [0.5, 0.99], evaluate, on_cell=lambda l, v, a: cells.__setitem__((l, v), a))
    assert len(calls) == 1 + 3 * 2 and sens["baseline_accuracy"] == 1.0
    assert sens["layers"] == ["classifier.fc1", "classifier.fc2", "classifier.fc3"]
    assert sens["accuracy"][1][1] < 1.0  # 99 % of fc2 gone changes predictions
    calls.clear()
    again = analyse(model, m, opts, [0.5, 0.99], evaluate, done=cells)
    assert calls == [] and again["accuracy"] == sens["accuracy"]


def _digits_trainer():
    """The digits split (1,294 train / 144 val) and a CPU Trainer (seed 0, batch 64)."""
    from slimkit.api import DistInfo
    from slimkit.data import load_data
    from slimkit.progress import Reporter
    from slimkit.train import Trainer

    bundle = load_data("digits", get_registry().datasets, seed=0)
    return bundle, Trainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=64, reporter=Reporter(False))


def test_short_finetune_runs_its_steps_keeps_pruned_weights_zero_and_repeats():
    bundle, trainer = _digits_trainer()
    torch.manual_seed(0)
    pruned = _method("prune").compress_layer(lenet300((1, 8, 8), 10), "classifier.fc2", 0.9, {})
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    runs = []
    for _ in range(2):
        net, seen = copy.deepcopy(pruned), []
        trainer.short_finetune(net, bundle, 30, 0.05, after_step=seen.append)  # 21 batches an epoch: crosses one
        assert seen == list(range(1, 31)) and not net.training
        fc2 = net.classifier.fc2
        assert int((fc2.weight_mask == 0).sum()) == 27000 and int((fc2.weight[fc2.weight_mask == 0] != 0).sum()) == 0
        runs.append(net.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same batches, same steps: same weights
    assert not torch.equal(runs[0]["classifier.fc1.weight"], before["classifier.fc1.weight"])
    same = trainer.short_finetune(copy.deepcopy(pruned), bundle, 0, 0.05)
    assert all(torch.equal(same.state_dict()[k], before[k]) for k in before)


def test_finetuned_sensitivity_is_at_least_the_untuned_one():
    """NetAdapt's short-term fine-tuning recovers part of the damage: on a trained LeNet-300-100
    every heavily pruned cell measures at least as accurate after it, the most damaged one
    strictly more, and the analysed model itself is left as it was."""
    from conftest import stage_context

    bundle, trainer = _digits_trainer()
    torch.manual_seed(0)
    model = lenet300((1, 8, 8), 10)
    stage_context("baseline", bundle, None, trainer=trainer).train(model, epochs=3, lr=0.1)
    model.eval()
    m = _method("prune")
    opts = m.parse_options({})
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def evaluate(net):
        return trainer.evaluate(net, bundle, "val")

    levels = [0.95, 0.99]
    plain = analyse(model, m, opts, levels, evaluate)
    tuned = analyse(model, m, opts, levels, evaluate,
                    finetune=lambda net: trainer.short_finetune(net, bundle, 40, 0.05))
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    assert "fine-tuning" in tuned["note"] and "no fine-tuning" in plain["note"]
    flat_plain = [a for row in plain["accuracy"] for a in row]
    flat_tuned = [a for row in tuned["accuracy"] for a in row]
    assert all(t >= p for t, p in zip(flat_tuned, flat_plain))
    worst = flat_plain.index(min(flat_plain))
    assert flat_tuned[worst] > flat_plain[worst] + 0.1


def test_prune_allocation_with_short_finetuning_meets_the_target_exactly(tmp_path):
    from conftest import stage_context
    from slimkit.allocation import budgets_for_stage
    from slimkit.nn import prunable_layers

    bundle, trainer = _digits_trainer()
    torch.manual_seed(0)
    ctx = stage_context("prune", bundle, tmp_path, trainer=trainer)
    ctx._budgets = budgets_for_stage
    m = _method("prune")
    opts = m.parse_options({"sparsity": 0.9, "schedule": "oneshot", "allocation": "sensitivity",
                            "sensitivity_finetune_steps": 5, "epochs": 0})
    out = m.apply(lenet300((1, 8, 8), 10), ctx, opts)
    record = ctx.results["allocation"]
    assert record["sensitivity"]["finetune_steps"] == 5 and "fine-tuned for 5 steps" in record["description"]
    assert any("each copy fine-tuned for 5 steps" in line for line in ctx.logs)
    layers = dict(prunable_layers(out))
    total = sum(layers[n].weight.numel() for n in record["levels"])
    zeros = sum(int((layers[n].weight_mask == 0).sum()) for n in record["levels"])
    assert zeros == sum(math.ceil(Fraction(repr(lv)) * layers[n].weight.numel())
                        for n, lv in record["levels"].items())  # each layer exactly at its level
    assert zeros >= math.ceil(Fraction("0.9") * total)


def test_parse_levels():
    assert parse_levels(None)[0] == 0.1 and parse_levels(None)[-1] == 0.95
    assert parse_levels("0.9, 0.5,0.9") == [0.5, 0.9]
    for bad in ("0", "1.0", "x", "0.5,-1"):
        with pytest.raises(UserError):
            parse_levels(bad)


def _sens(acc, weights, levels, base=0.9):
    return {"method": "prune", "levels": levels, "layers": [f"l{i}" for i in range(len(weights))],
            "weights": weights, "baseline_accuracy": base, "accuracy": acc}


def test_predicted_losses_are_clamped_and_monotone():
    sens = _sens([[0.95, 0.85, 0.88, 0.5]], [10], [0.2, 0.4, 0.6, 0.8])
    assert predicted_losses(sens)[0] == pytest.approx([0.0, 0.05, 0.05, 0.4])


@pytest.mark.parametrize("seed", range(8))
def test_allocation_is_the_brute_force_optimum_and_meets_the_target(seed):
    rng = random.Random(seed)
    levels = [0.25, 0.5, 0.75, 0.9]
    weights = [rng.randint(50, 5000) for _ in range(4)]
    acc = [sorted((rng.uniform(0.3, 0.9) for _ in levels), reverse=True) for _ in weights]
    sens = _sens(acc, weights, levels)
    target = rng.uniform(0.3, 0.85)
    drops = predicted_losses(sens)
    need = math.ceil(target * sum(weights))
    for grid in (None, 0.1):  # measured levels only, and with the interpolated grid
        got = allocate(sens, target, grid=grid)
        removed = sum(math.ceil(got["levels"][f"l{i}"] * w) for i, w in enumerate(weights))
        assert removed >= need
        options = candidate_levels(levels, grid)
        best = min(sum(interpolated_drop(levels, drops[i], lv) for i, lv in enumerate(combo))
                   for combo in itertools.product([0.0, *options], repeat=len(weights))
                   if sum(math.ceil(lv * w) for lv, w in zip(combo, weights)) >= need)
        assert got["predicted_total_loss"] == pytest.approx(best, abs=1e-12)


def test_grid_levels_are_interpolated_and_balance_a_high_target():
    """LeNet-300-100-like sizes at 0.95: with measured levels only, the big layer must jump
    between 0.95 and 0.97; the grid lets it take 0.96 with the loss between the two."""
    levels = [0.9, 0.95, 0.97]
    assert candidate_levels(levels, 0.01) == [round(0.01 * k, 6) for k in range(1, 98)]
    assert candidate_levels(levels, None) == levels
    assert interpolated_drop(levels, [0.01, 0.02, 0.04], 0.96) == pytest.approx(0.03)
    assert interpolated_drop(levels, [0.01, 0.02, 0.04], 0.45) == pytest.approx(0.005)  # from (0, 0)
    sens = _sens([[0.96, 0.95, 0.93], [0.97, 0.96, 0.90], [0.97, 0.9, 0.8]], [235200, 30000, 1000], levels,
                 base=0.97)
    coarse, fine = allocate(sens, 0.95, grid=None), allocate(sens, 0.95)
    assert fine["predicted_total_loss"] < coarse["predicted_total_loss"]
    assert 0.95 < fine["levels"]["l0"] < 0.97


def test_allocation_never_predicts_more_loss_than_uniform_at_the_target():
    """Uniform levels equal to the target meet it exactly; the optimum can only be as good or better."""
    rng = random.Random(1)
    levels = [0.5, 0.8, 0.95, 0.97]
    weights = [235200, 30000, 1000]
    sens = _sens([sorted((rng.uniform(0.5, 0.97) for _ in levels), reverse=True) for _ in weights], weights, levels,
                 base=0.97)
    got = allocate(sens, 0.95)
    uniform = sum(row[levels.index(0.95)] for row in predicted_losses(sens))
    assert got["predicted_total_loss"] <= uniform + 1e-12


def test_allocation_prefers_the_insensitive_layer():
    sens = _sens([[0.9, 0.9, 0.89], [0.6, 0.3, 0.1]], [1000, 1000], [0.5, 0.9, 0.99])
    got = allocate(sens, 0.47)  # 940 of 2000 weights: l0 alone at 0.99 removes 990
    assert got["levels"] == {"l0": 0.94, "l1": 0.0}  # the grid level that just meets the target
    assert got["predicted_total_loss"] == pytest.approx(0.01 * 0.04 / 0.09)  # interpolated from 0.9 to 0.99
    coarse = allocate(sens, 0.47, grid=None)
    assert coarse["levels"] == {"l0": 0.99, "l1": 0.0} and coarse["predicted_total_loss"] == pytest.approx(0.01)


def test_allocation_that_cannot_reach_the_target_is_a_user_error():
    with pytest.raises(UserError, match="go up to 0.5"):
        allocate(_sens([[0.9], [0.9]], [10, 10], [0.5]), 0.9)


def test_read_sensitivity_rejects_malformed_files(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"method": "prune"}))
    with pytest.raises(UserError, match="lacks one of"):
        read_sensitivity(bad)
    bad.write_text(json.dumps(_sens([[0.9, 0.8]], [10], [0.5])))
    with pytest.raises(UserError, match="1 layers x 1 levels"):
        read_sensitivity(bad)


def test_sensitivity_command_writes_its_files_and_resumes_without_recomputing(tmp_path):
    from conftest import cli

    out = tmp_path / "sens"
    args = ("sensitivity", "--model", "lenet300", "--baseline-epochs", "1", "--levels", "0.5,0.9", "--out", out,
            "--quiet")
    assert cli(*args) == 0
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["cells_computed"] == 6 and len(sens["accuracy"]) == 3
    assert len((out / "sensitivity.csv").read_text().splitlines()) == 1 + 6
    assert 'data-figure="sensitivity"' in (out / "sensitivity.svg").read_text()
    # as if interrupted after two cells: the settings line, the baseline and two cells survive
    cells = out / ".cells.jsonl"
    cells.write_text("\n".join(cells.read_text().splitlines()[:4]) + "\n")
    assert cli(*args) == 0
    again = json.loads((out / "sensitivity.json").read_text())
    assert again["cells_computed"] == 4 and again["accuracy"] == sens["accuracy"]
    assert cli(*args) == 0 and json.loads((out / "sensitivity.json").read_text())["cells_computed"] == 0
    assert cli("sensitivity", "--method", "distill", "--out", tmp_path / "x", "--quiet") == 2
    # the file drives a compress run's budgets (same cached baseline)
    run = tmp_path / "run"
    assert cli("compress", "--model", "lenet300", "--baseline-epochs", "1", "--epochs", "0", "-m", "prune", "--set",
               "schedule=oneshot", "--set", "sparsity=0.6", "--set", "allocation=sensitivity", "--set",
               f"sensitivity={out / 'sensitivity.json'}", "--no-latency", "--quiet", "--out", run) == 0
    stage = json.loads((run / "report.json").read_text())["stages"][0]
    assert stage["allocation"]["sensitivity_source"] == str(out / "sensitivity.json")
    assert all(0.0 <= lv <= 0.9 for lv in stage["allocation"]["levels"].values())  # measured up to 0.9
    assert stage["zeros"] >= math.ceil(0.6 * stage["prunable_params"])
    assert cli("compress", "--model", "lenet300", "--baseline-epochs", "1", "-m", "prune", "--set",
               "sensitivity=x.json", "--quiet", "--out", tmp_path / "bad") == 2  # without allocation=sensitivity
    # cells measured after a short fine-tuning are other cells: none of the earlier ones is reused
    assert cli(*args, "--finetune-steps", "3") == 0
    tuned = json.loads((out / "sensitivity.json").read_text())
    assert tuned["cells_computed"] == 6 and tuned["finetune_steps"] == 3 and "fine-tuning" in tuned["note"]
