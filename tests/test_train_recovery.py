"""The training loop's schedule (linear warm-up, then cosine) and its collapse recovery for
baselines: an epoch whose validation accuracy falls below half the best so far is rolled
back to the best weights, momentum cleared, the rest of the schedule at half the rate."""
import pytest
import torch
import torch.nn as nn

from conftest import stage_context
from slimkit.api import TrainCallback
from slimkit.data import load_data
from slimkit.data.builtin import digits
from slimkit.errors import TrainingDiverged
from slimkit.train import COLLAPSE_FRACTION, MAX_RECOVERIES, lr_factor, warmup_steps


class Wreck(TrainCallback):
    """Zeroes every weight after the last step of the given epochs (1-based): a collapse by construction."""

    def __init__(self, epochs, steps_per_epoch):
        self.last_steps = {e * steps_per_epoch - 1 for e in epochs}

    @torch.no_grad()
    def after_step(self, model, step):
        if step in self.last_steps:
            for p in model.parameters():
                p.zero_()


def setup(tmp_path):
    bundle = load_data("digits", {"digits": digits}, seed=0)
    ctx = stage_context("baseline", bundle, tmp_path, epochs=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return ctx, model, ctx.steps_per_epoch()


def test_a_collapsed_baseline_epoch_is_rolled_back_at_half_the_rate(tmp_path):
    ctx, model, spe = setup(tmp_path)
    history = ctx._trainer.fit(model, ctx, epochs=4, lr=0.1, label="baseline", callbacks=[Wreck([2], spe)])
    first, wrecked, after = history[0], history[1], history[2]
    assert wrecked["val_accuracy"] < COLLAPSE_FRACTION * first["val_accuracy"]
    note = wrecked["recovered"]
    assert note["kind"] == "recovered" and note["epoch"] == 2 and note["best_val_accuracy"] == first["val_accuracy"]
    assert "halved" in note["message"]
    total, w = 4 * spe, warmup_steps(4 * spe, spe)
    assert after["lr"] == pytest.approx(0.1 * lr_factor(3 * spe, total, w) / 2)  # half the schedule's rate
    assert after["val_accuracy"] > 0.8  # trained on from epoch 1's weights, not from zeros
    assert not any(h.get("recovered") for h in (first, after, history[3]))


def test_other_stages_are_not_rolled_back(tmp_path):
    ctx, model, spe = setup(tmp_path)
    history = ctx._trainer.fit(model, ctx, epochs=3, lr=0.1, label="prune", callbacks=[Wreck([2], spe)])
    assert not any(h.get("recovered") for h in history)
    assert history[2]["lr"] == pytest.approx(0.1 * lr_factor(3 * spe, 3 * spe, warmup_steps(3 * spe, spe)))


def test_repeated_collapse_stops_with_one_line(tmp_path):
    ctx, model, spe = setup(tmp_path)
    epochs = MAX_RECOVERIES + 2
    with pytest.raises(TrainingDiverged, match="collapsed 4 times.*lower --lr"):
        ctx._trainer.fit(model, ctx, epochs=epochs, lr=0.1, label="baseline",
                         callbacks=[Wreck(range(2, epochs + 1), spe)])
