"""No silent collapse: a stage that loses more than the run's threshold is flagged in
report.json's ``warnings`` (with the method's hint, or a generic one) and in red in the
summary; a higher threshold lets the same run pass without a warning."""
import json
from types import SimpleNamespace

import pytest

from conftest import cli
from slimkit.api import Method
from slimkit.errors import UserError
from slimkit.pipeline import GENERIC_COLLAPSE_HINT, Run, RunConfig
from slimkit_plugins import sws

# one-shot pruning of 99.9 % with no retraining: LeNet-300-100 keeps 1 of its 1,000 output
# weights and falls to about chance on digits -- a collapse by construction
FORCED = ("compress", "--data", "digits", "--model", "lenet300", "--baseline-epochs", "3", "--epochs", "0",
          "--method", "prune", "--set", "sparsity=0.999", "--set", "schedule=oneshot", "--no-latency")


def test_forced_collapse_is_a_warning_in_the_report_and_red_in_the_summary(tmp_path, capsys):
    assert cli(*FORCED, "--out", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    before, after = report["baseline"]["accuracy"], report["final"]["accuracy"]
    assert before - after > 0.05
    [warning] = report["warnings"]
    assert warning["kind"] == "collapse" and warning["method"] == "prune" and warning["stage"] == 0
    assert warning["accuracy_before"] == pytest.approx(before)  # the stage's input is the baseline artifact
    assert warning["accuracy_after"] == after == report["stages"][0]["accuracy"]
    assert warning["drop_points"] == pytest.approx(100 * (before - after))
    assert warning["threshold_points"] == 5.0 and warning["hint"] == GENERIC_COLLAPSE_HINT
    assert report["stages"][0]["collapse"] == warning
    printed = capsys.readouterr().out
    assert "stage prune: accuracy" in printed and "COLLAPSE" in printed
    assert f"WARNING: stage 0 (prune) fell from {100 * before:.2f} % to {100 * after:.2f} %" in printed


def test_a_threshold_above_the_drop_records_no_warning(tmp_path):
    assert cli(*FORCED, "--quiet", "--collapse-threshold", "100", "--out", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["warnings"] == [] and "collapse" not in report["stages"][0]


@pytest.mark.parametrize("value", [-1.0, 101.0, float("nan")])
def test_threshold_out_of_range_is_refused(value):
    with pytest.raises(UserError, match="collapse-threshold"):
        Run(RunConfig(data="synthetic", collapse_threshold=value, quiet=True, latency=False))


def test_methods_have_no_hint_unless_they_say_so():
    assert Method().collapse_hint({}, None) is None


def test_sws_hint_names_the_steps_and_suggests_epochs():
    ctx = SimpleNamespace(results={"optimizer_steps": 230, "steps_per_epoch": 23})
    hint = sws.SoftWeightSharing().collapse_hint({}, ctx)
    # at least the tutorial's ~7000 steps: ceil(7000 / 23) = 305 epochs
    assert "too few optimizer steps for the prior (230 steps, 23 an epoch" in hint and "--epochs 305" in hint
    ctx = SimpleNamespace(results={"optimizer_steps": 6000, "steps_per_epoch": 100})
    assert "--epochs 120" in sws.SoftWeightSharing().collapse_hint({}, ctx)  # twice the steps given


def test_sws_hint_blames_snapping_when_the_retrained_net_was_fine():
    results = {"optimizer_steps": 7014, "steps_per_epoch": 21, "val_accuracy_before": 0.9236,
               "val_accuracy_retrained": 0.9306}
    hint = sws.SoftWeightSharing().collapse_hint({"components": 16}, SimpleNamespace(results=results))
    assert "snapping, not training" in hint and "--set components=32" in hint
    results["val_accuracy_retrained"] = 0.85  # the retraining itself lost accuracy: the steps hint
    assert "too few optimizer steps" in sws.SoftWeightSharing().collapse_hint({}, SimpleNamespace(results=results))
