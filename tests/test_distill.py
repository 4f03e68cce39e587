"""The `distill` method: Hinton KD, function matching, FitNets hints, cached teacher logits, checks.

Training runs through the engine's real loop (slimkit.train.Trainer behind a real
StageContext) on the small synthetic data set, and once through the CLI.
"""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.api import DistInfo, StageContext
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.models import count_params
from slimkit.plugins import get_registry
from slimkit.progress import Reporter
from slimkit.train import Trainer
from slimkit_plugins import distill as ds

from conftest import cli

SHAPE = (1, 8, 8)


class RecordingTrainer(Trainer):
    """The real trainer, noting for every fit: label, loss, epochs and the model's weights before training."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def fit(self, model, ctx, **kw):
        self.calls.append({"label": kw.get("label"), "loss": kw.get("loss"), "epochs": kw.get("epochs"),
                           "lr": kw.get("lr"), "model": model, "callbacks": list(kw.get("callbacks", ())),
                           "initial": {k: v.detach().clone() for k, v in model.state_dict().items()}})
        return super().fit(model, ctx, **kw)


def make_bundle(n=256, shape=SHAPE):
    return DataBundle("synthetic", load_synthetic(f"{n}x{'x'.join(map(str, shape))}@4", 0), seed=0)


def make_ctx(tmp_path, bundle=None, epochs=2, teacher=None, model_name="lenet5"):
    bundle = bundle or make_bundle()
    trainer = RecordingTrainer(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=64,
                               reporter=Reporter(False))
    logs = []
    ctx = StageContext(stage="distill", data=bundle, device=torch.device("cpu"), dist=DistInfo(), out_dir=tmp_path,
                       seed=0, epochs=epochs, lr=None, batch_size=64, optimizer="sgd", teacher=teacher,
                       model_name=model_name, log=logs.append, _trainer=trainer, _registry=get_registry())
    ctx.logs = logs
    return ctx


def make_teacher(bundle, seed=0, train_ctx=None):
    torch.manual_seed(seed)
    teacher = get_registry().build_model("lenet5", bundle.input_shape, bundle.num_classes)
    if train_ctx is not None:
        train_ctx._trainer.fit(teacher, train_ctx, epochs=2, lr=0.1, label="teacher")
    return teacher.eval().requires_grad_(False)


def opts(**raw):
    return ds.Distill().parse_options(raw)


def spy_kd_loss(monkeypatch):
    calls = []
    real = ds.kd_loss

    def spy(student, teacher, labels=None, temperature=4.0, alpha=0.9, ignore_index=-100):
        calls.append({"labels": labels, "temperature": temperature, "alpha": alpha})
        return real(student, teacher, labels, temperature, alpha, ignore_index)

    import slimkit.distillation

    monkeypatch.setattr(ds, "kd_loss", spy)  # function matching and hints call it from the plugin
    monkeypatch.setattr(slimkit.distillation, "kd_loss", spy)  # the KD losses any method can use
    return calls


# --------------------------------------------------------------------------- losses

def hinton_by_hand(s, t, y, T, alpha):
    p_t = F.softmax(t / T, dim=1)
    kl = (p_t * (torch.log(p_t) - F.log_softmax(s / T, dim=1))).sum(1).mean()
    return alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)


def test_cached_logits_equal_teacher_recomputed_and_loss_matches_formula(monkeypatch):
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=3)
    x, y = bundle.tensors("train")
    cached = ds.teacher_logits(teacher, x, torch.device("cpu"), batch_size=50)  # several uneven batches
    assert cached.shape == (x.shape[0], 4)
    idx = torch.tensor([0, 7, 51, 199, x.shape[0] - 1])
    with torch.no_grad():
        assert torch.allclose(cached[idx], teacher(x[idx]), atol=1e-5)
        assert torch.allclose(cached, teacher(x), atol=1e-5)

    calls = spy_kd_loss(monkeypatch)
    torch.manual_seed(0)
    student = get_registry().build_model("lenet5", bundle.input_shape, 4, width=0.5)
    kd = ds.CachedKDLoss(cached, temperature=3.0, alpha=0.7)
    kd.on_batch(student, 0, idx)  # the loop names the batch's examples; the targets are their labels
    value, logits = kd(student, x[idx], y[idx])
    assert len(calls) == 1 and calls[0]["temperature"] == 3.0 and calls[0]["alpha"] == 0.7
    assert torch.equal(calls[0]["labels"], y[idx])
    with torch.no_grad():
        assert torch.equal(logits, student(x[idx]))  # the loop's train accuracy compares these with the labels
        expected = hinton_by_hand(student(x[idx]), teacher(x[idx]), y[idx], 3.0, 0.7)
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
    with pytest.raises(RuntimeError, match="no example indices for this batch"):
        kd(student, x[:3], y[:3])


def test_training_loop_gives_the_cached_loss_labels_as_targets_and_each_batch_its_own_logits(tmp_path, monkeypatch):
    """Through the real loop: every loss call gets the batch's real labels as targets (not example
    indices) and the teacher's logits of exactly those examples; the loop's train accuracy is real."""
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=2)
    x_all, y_all = bundle.tensors("train")
    seen = []
    real_call = ds.CachedKDLoss.__call__

    def spy(self, model, inputs, targets):
        rows = (inputs.reshape(len(inputs), 1, -1) == x_all.reshape(1, len(x_all), -1)).all(-1)
        assert bool((rows.sum(1) == 1).all())  # every input is one example of the train split
        seen.append((rows.float().argmax(1), targets.clone(), self.logits[self.index].clone()))
        return real_call(self, model, inputs, targets)

    monkeypatch.setattr(ds.CachedKDLoss, "__call__", spy)
    ctx = make_ctx(tmp_path, bundle, epochs=2, teacher=teacher)
    ds.Distill().apply(get_registry().build_model("lenet5", SHAPE, 4), ctx, opts(student="lenet5", width=0.5))
    assert ctx.results["teacher_logits_cached"] is True
    assert sum(len(i) for i, _, _ in seen) == 2 * len(y_all)  # two epochs over the train split
    with torch.no_grad():
        for index, targets, logits in seen:
            assert torch.equal(targets, y_all[index])
            assert bool((targets < bundle.num_classes).all())
            torch.testing.assert_close(logits, teacher(x_all[index]), rtol=1e-5, atol=1e-5)


def test_a_bundle_refuses_targets_that_are_not_class_labels():
    """What the cached path once did: a train split whose targets were example indices."""
    bundle = make_bundle()
    x, y = bundle.tensors("train")
    with pytest.raises(ValueError, match=r"class labels in \[0, 4\)"):
        bundle.with_split("train", x, torch.arange(x.shape[0]))
    with pytest.raises(ValueError, match="class labels"):
        bundle.with_split("train", x, y.float())
    assert torch.equal(bundle.with_split("train", x, y.flip(0)).tensors("train")[1], y.flip(0))


def test_function_matching_teacher_and_student_see_the_same_augmented_view(monkeypatch):
    bundle = make_bundle()
    calls = spy_kd_loss(monkeypatch)
    seen = {}

    class Recorder(nn.Module):
        def __init__(self, key):
            super().__init__()
            self.key = key
            self.lin = nn.Linear(64, 4)

        def forward(self, x):
            seen[self.key] = x.detach().clone()
            return self.lin(x.flatten(1))

    fm = ds.FunctionMatchingLoss(Recorder("teacher"), 2.0, 1.0, image=True, flip=True,
                                 fill=-bundle.mean / bundle.std, seed=5)
    x, y = bundle.tensors("train")
    x = x[:32]
    fm.on_step_begin(None, 7)
    value, logits = fm(Recorder("student"), x, y[:32])
    assert logits is None and torch.isfinite(value)
    assert torch.equal(seen["teacher"], seen["student"])
    assert not torch.allclose(seen["student"], x)  # augmented (crop + mixup)
    assert calls[-1]["labels"] is None and calls[-1]["temperature"] == 2.0
    assert torch.equal(fm.augment(x, step=7), seen["student"])  # repeatable per step
    assert not torch.equal(fm.augment(x, step=8), seen["student"])


def test_function_matching_ignores_labels(tmp_path, monkeypatch):
    """Shuffled training labels give the identical student (same seed): no label enters the loss."""
    calls = spy_kd_loss(monkeypatch)
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=1)
    x, y = bundle.tensors("train")
    shuffled = bundle.with_split("train", x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(9))])
    assert not torch.equal(shuffled.tensors("train")[1], y)
    students = []
    for data in (bundle, shuffled):
        ctx = make_ctx(tmp_path, data, epochs=2, teacher=teacher)
        o = opts(student="lenet5", width=0.5, loss="function-matching")
        students.append(ds.Distill().apply(get_registry().build_model("lenet5", SHAPE, 4), ctx, o))
        assert ctx.results["loss"] == "function-matching" and ctx.results["teacher_logits_cached"] is False
    assert calls and all(c["labels"] is None for c in calls)
    a, b = (s.state_dict() for s in students)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it did train: the weights moved away from the (seeded, identical) initialisation
    init = ctx._trainer.calls[0]["initial"]
    assert any(not torch.equal(init[k], b[k]) for k in b)


# --------------------------------------------------------------------------- the labels-only control

def test_baseline_trains_the_identical_student_on_labels(tmp_path, monkeypatch):
    calls = spy_kd_loss(monkeypatch)
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=2)
    ctx = make_ctx(tmp_path, bundle, epochs=2, teacher=teacher)
    student = ds.Distill().apply(teacher, ctx, opts(student="lenet5", width=0.5, baseline=True, lr=0.05))
    r = ctx.results
    assert calls and all(c["labels"] is not None for c in calls)
    kd_call, control = ctx._trainer.calls
    assert isinstance(kd_call["loss"], ds.CachedKDLoss) and control["loss"] is None  # the engine's CE
    assert control["label"] == "distill-labels-only"
    assert kd_call["epochs"] == control["epochs"] == 2 and kd_call["lr"] == control["lr"] == 0.05
    assert control["model"] is not student
    assert kd_call["initial"].keys() == control["initial"].keys()
    assert all(torch.equal(kd_call["initial"][k], control["initial"][k]) for k in kd_call["initial"])
    assert r["labels_only_accuracy"] == pytest.approx(ctx.evaluate(control["model"]))
    assert r["kd_uplift"] == pytest.approx(r["student_accuracy"] - r["labels_only_accuracy"])
    assert r["student_params"] == count_params(student) < r["teacher_params"] == count_params(teacher)
    assert r["teacher_logits_cached"] is True
    # both trainings warm the learning rate up over the same first epoch (230 examples / 64 = 4 steps)
    warmups = [[cb for cb in call["callbacks"] if isinstance(cb, ds.KDWarmup)] for call in (kd_call, control)]
    assert [len(w) for w in warmups] == [1, 1] and warmups[0][0] is warmups[1][0]
    assert warmups[0][0].steps == ctx.steps_per_epoch() == 4 == r["warmup_steps"]


def test_warmup_scales_gradients_linearly_over_its_steps_only():
    warmup = ds.KDWarmup(4)
    assert [warmup.factor(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    model = nn.Linear(3, 2)
    for step, factor in [(0, 0.25), (2, 0.75), (3, 1.0), (40, 1.0)]:
        model.zero_grad()
        model(torch.ones(1, 3)).sum().backward()
        full = [p.grad.clone() for p in model.parameters()]
        warmup.after_backward(model, step)
        assert all(torch.equal(p.grad, g * factor) for p, g in zip(model.parameters(), full))
    assert ds.KDWarmup(0).factor(0) == 1.0  # warmup_epochs=0: none


def test_warmup_keeps_a_confident_teachers_first_steps_small(tmp_path):
    """The failure it prevents: T^2-scaled KD gradients of a confident teacher are several times those of
    cross-entropy at the start, and the warm-up's first step moves the student by a fraction of it."""
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=2)
    with torch.no_grad():  # a confident teacher, as a trained one is: top-1 margins of ~20
        teacher.classifier.fc3.weight.mul_(20.0)
    x, y = bundle.tensors("train")
    logits = ds.teacher_logits(teacher, x, torch.device("cpu"))
    torch.manual_seed(0)
    student = get_registry().build_model("lenet5", bundle.input_shape, 4, width=0.25)

    def grad_norm(loss_value):
        student.zero_grad()
        loss_value.backward()
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in student.parameters())))

    kd = ds.CachedKDLoss(logits, temperature=4.0, alpha=0.9)
    kd.on_batch(student, 0, torch.arange(64))
    kd_norm = grad_norm(kd(student, x[:64], y[:64])[0])
    ce_norm = grad_norm(F.cross_entropy(student(x[:64]), y[:64]))
    assert kd_norm > 2 * ce_norm
    warmup = ds.KDWarmup(10)
    grad_norm(kd(student, x[:64], y[:64])[0])
    warmup.after_backward(student, 0)
    scaled = float(torch.sqrt(sum((p.grad ** 2).sum() for p in student.parameters())))
    assert scaled == pytest.approx(kd_norm / 10, rel=1e-5)


def test_augmented_data_runs_the_teacher_on_every_batch(tmp_path, monkeypatch):
    """With augmentation on, nothing is cached: the teacher sees each augmented batch the student sees."""
    bundle = DataBundle("synthetic", load_synthetic("128x1x8x8@4", 0), seed=0, augment=True)
    teacher = make_teacher(bundle, seed=2)
    teacher_inputs = []
    teacher.register_forward_hook(lambda m, i, o: teacher_inputs.append(i[0].detach().clone()))
    student_inputs = []
    real_online = ds.OnlineKDLoss.__call__

    def spy(self, model, inputs, labels):
        student_inputs.append(inputs.detach().clone())
        return real_online(self, model, inputs, labels)

    monkeypatch.setattr(ds.OnlineKDLoss, "__call__", spy)
    ctx = make_ctx(tmp_path, bundle, epochs=1, teacher=teacher)
    ds.Distill().apply(teacher, ctx, opts(student="lenet5", width=0.5))
    assert ctx.results["teacher_logits_cached"] is False
    assert isinstance(ctx._trainer.calls[0]["loss"], ds.OnlineKDLoss)
    assert len(student_inputs) == 2  # 115 train examples, batches of 64
    assert all(torch.equal(s, t) for s, t in zip(student_inputs, teacher_inputs[:2]))
    x = bundle.tensors("train")[0]
    for s in student_inputs:  # random crops: most rows are shifted, so not equal to any raw example
        unchanged = torch.cdist(s.flatten(1), x.flatten(1)).min(1).values < 1e-4
        assert unchanged.float().mean() < 0.5


# --------------------------------------------------------------------------- hints

def test_hint_stage_trains_lower_part_and_regressor(tmp_path):
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=4)
    ctx = make_ctx(tmp_path, bundle, epochs=2, teacher=teacher)
    torch.manual_seed(0)
    student = get_registry().build_model("lenet5", SHAPE, 4, width=0.5)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    info = ds.Distill()._hint_stage(student, teacher, ctx, opts(loss="hints", hint_epochs=3), epochs=2, lr=0.05)
    assert info["hint_layer"] == "features.conv2" and info["guided_layer"] == "features.conv2"
    assert info["regressor"].startswith("conv1x1 8->16")
    assert len(info["hint_mse"]) == 3
    assert info["hint_mse"][-1] < info["hint_mse"][0]
    assert info["hint_mse_after"] < info["hint_mse_before"] and info["hint_target_std"] > 0
    after = student.state_dict()
    # the layers up to the hint moved, the classifier above it did not
    assert not torch.equal(before["features.conv1.weight"], after["features.conv1.weight"])
    assert not torch.equal(before["features.conv2.weight"], after["features.conv2.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("classifier."))


def test_hint_loss_is_mse_to_the_unit_scaled_teacher_feature():
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=4)
    torch.manual_seed(1)
    student = get_registry().build_model("lenet5", SHAPE, 4, width=0.5)
    x = bundle.tensors("train")[0][:32]
    with torch.no_grad():
        t_feat = teacher.features.conv2(teacher.features.pool1(teacher.features.relu1(teacher.features.conv1(x))))
        s_feat = student.features.conv2(student.features.pool1(student.features.relu1(student.features.conv1(x))))
    reg = ds.HintRegressor(s_feat.shape[1:], t_feat.shape[1:])
    sigma = ds.target_std(teacher, "features.conv2", reg, x)
    assert sigma == pytest.approx(float(t_feat.std()), rel=1e-5)
    net = ds.HintNet(student, "features.conv2", reg)
    value, logits = ds.hint_loss(teacher, "features.conv2", reg, sigma)(net, x, None)
    assert logits is None
    with torch.no_grad():
        expected = ((reg.regressor(s_feat) - t_feat / sigma) ** 2).mean()
    assert float(value.detach()) == pytest.approx(float(expected), rel=1e-5)
    # only the student's layers up to the hint (conv1, conv2) and nothing above feed the hint
    lower = {id(p) for p in ds.lower_params(student, "features.conv2", x[:2])}
    named = {n for n, p in student.named_parameters() if id(p) in lower}
    assert named == {"features.conv1.weight", "features.conv1.bias", "features.conv2.weight", "features.conv2.bias"}


def test_hints_end_to_end_then_kd(tmp_path):
    bundle = make_bundle()
    teacher = make_teacher(bundle, seed=4)
    ctx = make_ctx(tmp_path, bundle, epochs=1, teacher=teacher)
    ds.Distill().apply(teacher, ctx, opts(loss="hints", student="lenet300", width=0.25, hint_layer="classifier.fc2",
                                          guided_layer="features.pool1", hint_epochs=1))
    labels = [c["label"] for c in ctx._trainer.calls]
    assert labels == ["distill-hints", "distill"]
    assert isinstance(ctx._trainer.calls[1]["loss"], ds.CachedKDLoss)
    # a linear student layer onto a conv teacher map: the map is flattened, a Linear regresses onto it
    assert ctx.results["regressor"] == "linear 25->96"  # lenet5 pool1 on 8x8: 6 x 4 x 4
    assert 0.0 <= ctx.results["student_accuracy"] <= 1.0


def test_regressor_shapes_and_default_layers():
    reg = ds.HintRegressor((4, 14, 14), (16, 7, 7))  # student larger: pooled before the 1x1 conv
    out = reg(torch.randn(2, 4, 14, 14))
    assert out.shape == (2, 16, 7, 7) and reg.target(torch.randn(2, 16, 7, 7)).shape == (2, 16, 7, 7)
    reg = ds.HintRegressor((4, 4, 4), (16, 8, 8))  # teacher larger: the target is pooled
    assert reg(torch.randn(2, 4, 4, 4)).shape == reg.target(torch.randn(2, 16, 8, 8)).shape == (2, 16, 4, 4)
    reg = ds.HintRegressor((4, 7, 7), (300,))
    assert isinstance(reg.regressor, nn.Linear) and reg.regressor.in_features == 196
    reg = ds.HintRegressor((64, 32, 32), (10,))  # too large to flatten: global average pooled
    assert reg.regressor.in_features == 64 and reg(torch.randn(2, 64, 32, 32)).shape == (2, 10)
    build = get_registry().build_model
    assert ds.default_layer(build("lenet5", (1, 28, 28), 10)) == "features.conv2"
    assert ds.default_layer(build("lenet300", (1, 28, 28), 10)) == "classifier.fc1"
    assert ds.default_layer(build("vgg11", (3, 32, 32), 10, width=0.125)) == "features.block3"
    assert ds.default_layer(build("resnet20", (3, 32, 32), 10, width=0.25)) == "layer2"


# --------------------------------------------------------------------------- checks

def test_check_refusals(tmp_path):
    m = ds.Distill()
    model = get_registry().build_model("lenet5", SHAPE, 4)
    with pytest.raises(UserError, match=r"unknown student 'lenet7'.*lenet300.*lenet5"):
        m.check(model, opts(student="lenet7"))
    with pytest.raises(UserError, match=r"width=0.0 is out of range"):
        m.check(model, opts(width=0.0))
    with pytest.raises(UserError, match=r"out of range"):
        opts(width=1.5)
    with pytest.raises(UserError, match=r"student=input .* width"):
        m.check(model, opts(student="input", width=0.5))
    with pytest.raises(UserError, match=r"hint_layer='features.block9' is not a layer of the student"):
        m.check(model, opts(loss="hints", width=0.5, hint_layer="features.block9"))
    with pytest.raises(UserError, match=r"only apply to loss=hints"):
        m.check(model, opts(loss="hinton", guided_layer="features.conv2"))
    with pytest.raises(UserError, match=r"expected one of hinton, function-matching, hints"):
        opts(loss="fitnet")
    m.check(model, opts(loss="hints", width=0.5, hint_layer="features.conv1"))  # fine
    m.check(model, opts(student="lenet300", width=0.1, baseline=True))  # fine
    # a zoo student's hint layer and the teacher's guided layer: refused when the stage starts
    bundle = make_bundle()
    ctx = make_ctx(tmp_path, bundle, teacher=make_teacher(bundle))
    with pytest.raises(UserError, match=r"guided_layer='nope' is not a layer of the teacher"):
        m.apply(model, ctx, opts(loss="hints", student="lenet300", guided_layer="nope"))
    ctx = make_ctx(tmp_path, bundle, teacher=make_teacher(bundle), model_name="/tmp/some/model.slim")
    with pytest.raises(UserError, match=r"not a registered model name"):
        m.apply(model, ctx, opts(width=0.5))
    assert ctx._trainer.calls == []  # refused before any training


def test_cli_refuses_before_training(tmp_path, capsys):
    code = cli("compress", "--data", "synthetic", "--model", "lenet5", "--method", "distill", "--set", "student=nonet",
               "--epochs", "1", "--baseline-epochs", "1", "--quiet", "--no-latency", "--out", tmp_path / "out")
    assert code == 2
    assert "unknown student 'nonet'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- CLI end to end

def test_hinton_cli_end_to_end(tmp_path, monkeypatch):
    calls = spy_kd_loss(monkeypatch)
    out = tmp_path / "out"
    code = cli("compress", "--data", "synthetic:256x1x8x8", "--model", "lenet5", "--method", "distill",
               "--set", "student=lenet5", "--set", "width=0.5", "--set", "baseline=true",
               "--epochs", "2", "--baseline-epochs", "1", "--quiet", "--no-latency", "--out", out)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    st = report["stages"][0]
    assert st["method"] == "distill" and st["loss"] == "hinton" and st["student"] == "lenet5(width=0.5)"
    for key in ("teacher_accuracy", "student_accuracy", "labels_only_accuracy"):
        assert 0.0 <= st[key] <= 1.0
    assert st["teacher_accuracy"] == pytest.approx(report["baseline"]["accuracy"])
    assert st["student_accuracy"] == pytest.approx(report["final"]["accuracy"])  # the artifact is the student
    assert st["student_params"] == report["final"]["params"] < st["teacher_params"] == report["baseline"]["params"]
    assert st["teacher_logits_cached"] is True and st["temperature"] == 2.0 and st["alpha"] == 0.9
    assert st["warmup_steps"] == 4  # one epoch: 230 train examples at batch 64
    assert calls and all(c["labels"] is not None and c["alpha"] == 0.9 for c in calls)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    kd_epochs = [m for m in metrics if m["stage"] == "distill"]
    assert len(kd_epochs) == 2 and all(0.0 <= m["train_accuracy"] <= 1.0 for m in kd_epochs)
    assert len([m for m in metrics if m["stage"] == "distill-labels-only"]) == 2
