"""Built-in methods `prune` (magnitude, one-shot / Zhu & Gupta gradual) and `filter-prune` (Li et al. L1 filters).

Training runs through the engine's real loop (slimkit.train.Trainer behind a real
StageContext) on a small synthetic data set.
"""
import os

import pluggy
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from conftest import stage_context
from slimkit import hookspecs
from slimkit.api import DistInfo, TrainCallback
from slimkit.data import DataBundle
from slimkit.data.synthetic import load_synthetic
from slimkit.errors import UserError
from slimkit.models import count_macs as zoo_count_macs
from slimkit.models import zoo
from slimkit.nn import MaskedConv2d, MaskedLinear, MaskedMixin, to_masked
from slimkit.progress import Reporter
from slimkit.train import Trainer
from slimkit_plugins import filter_prune as fp
from slimkit_plugins import prune as pr

SHAPE = (3, 8, 8)


# --------------------------------------------------------------------------- helpers

def make_ctx(tmp_path, epochs=2, trainer=None, shape=SHAPE, n=256, dist=None):
    raw = load_synthetic(f"{n}x{'x'.join(map(str, shape))}@4", 0)
    return stage_context("prune", DataBundle("synthetic", raw, seed=0), tmp_path, epochs=epochs, dist=dist,
                         trainer=trainer)


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))


def opts_for(method, **raw):
    return method.parse_options(raw)


def masked(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedMixin)]


def zeros_of(m):
    return int((m.weight == 0).sum())


# --------------------------------------------------------------------------- exact counts

def test_num_to_prune_is_exact_ceiling():
    assert pr.num_to_prune(100, 0.9) == 90  # 0.9 * 100 is 90.00000000000001 in floats
    assert pr.num_to_prune(10, 0.3) == 3  # 3.0000000000000004
    assert pr.num_to_prune(5, 0.5) == 3  # never below the target: 3/5 >= 0.5
    assert pr.num_to_prune(216, 0.95) == 206
    assert pr.num_to_prune(7, 0.0) == 0
    for n in (1, 3, 17, 216, 1152):
        for s in (0.1, 0.5, 0.9, 0.95, 0.99):
            k = pr.num_to_prune(n, s)
            assert k / n >= s and (k - 1) / n < s


def test_ties_are_broken_deterministically():
    layer = to_masked(nn.Sequential(nn.Linear(10, 10, bias=False)))[0]
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.weight[0, :3] = 0.1
    keep = pr.magnitude_masks([layer], 0.45, "layer")[0]
    pruned = (~keep).reshape(-1).nonzero().flatten().tolist()
    assert len(pruned) == 45
    assert pruned == list(range(45))  # the three small ones, then the earliest of the tied 0.5s


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_oneshot_exact_zero_count(tmp_path, scope, sparsity):
    model = small_cnn()
    original = {n: m.weight.detach().abs().clone() for n, m in model.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))}
    method = pr.MagnitudePrune()
    ctx = make_ctx(tmp_path, epochs=1)
    out = method.apply(model, ctx, opts_for(method, sparsity=sparsity, schedule="oneshot", scope=scope))
    layers = masked(out)
    assert len(layers) == 4
    sizes = {n: m.weight.numel() for n, m in layers}
    total = sum(sizes.values())
    if scope == "layer":
        for n, m in layers:
            assert zeros_of(m) == pr.num_to_prune(sizes[n], sparsity), n
            assert int((m.weight_mask == 0).sum()) == pr.num_to_prune(sizes[n], sparsity)
    else:
        assert sum(zeros_of(m) for _, m in layers) == pr.num_to_prune(total, sparsity)
        # one threshold: every pruned magnitude is <= every kept one, across layers
        pruned = torch.cat([original[n][m.weight_mask == 0] for n, m in layers])
        kept = torch.cat([original[n][m.weight_mask == 1] for n, m in layers])
        assert pruned.max() <= kept.min()
        assert len({round(zeros_of(m) / sizes[n], 3) for n, m in layers}) > 1  # layers differ
    res = ctx.results
    assert res["zeros"] == sum(zeros_of(m) for _, m in layers)
    assert res["sparsity"] >= sparsity
    assert [r["name"] for r in res["layers"]] == [n for n, _ in layers]
    assert all(r["zeros"] == zeros_of(m) for r, (_, m) in zip(res["layers"], layers))
    assert "val_accuracy_before_finetune" in res
    # the masks were computed on the weights as they were before fine-tuning (magnitude)
    if scope == "layer":
        for n, m in layers:
            assert original[n][m.weight_mask == 0].max() <= original[n][m.weight_mask == 1].min()


@pytest.mark.parametrize("keep_first,keep_last", [(True, False), (False, True), (True, True)])
def test_keep_first_and_last_stay_dense(tmp_path, keep_first, keep_last):
    model = small_cnn()
    method = pr.MagnitudePrune()
    ctx = make_ctx(tmp_path, epochs=1)
    out = method.apply(model, ctx, opts_for(method, sparsity=0.9, schedule="oneshot", scope="global",
                                            keep_first=keep_first, keep_last=keep_last))
    layers = masked(out)
    dense = ([0] if keep_first else []) + ([len(layers) - 1] if keep_last else [])
    targets = [m for i, (_, m) in enumerate(layers) if i not in dense]
    for i in dense:
        m = layers[i][1]
        assert bool((m.weight_mask == 1).all()) and zeros_of(m) == 0
    total = sum(m.weight.numel() for m in targets)
    assert sum(zeros_of(m) for m in targets) == pr.num_to_prune(total, 0.9)
    rows = ctx.results["layers"]
    assert [r["pruned"] for r in rows] == [i not in dense for i in range(len(layers))]
    assert ctx.results["overall_sparsity"] < ctx.results["sparsity"]


def test_check_refuses(tmp_path):
    method = pr.MagnitudePrune()
    with pytest.raises(UserError, match="no prunable layers"):
        method.check(nn.Sequential(nn.BatchNorm1d(4), nn.ReLU()), opts_for(method))
    with pytest.raises(UserError, match="keep_first/keep_last"):
        method.check(nn.Sequential(nn.Linear(4, 2)), opts_for(method, keep_first=True))
    with pytest.raises(UserError, match="initial_sparsity"):
        method.check(small_cnn(), opts_for(method, sparsity=0.5, initial_sparsity=0.6))
    with pytest.raises(UserError):
        opts_for(method, sparsity=1.0)
    with pytest.raises(UserError):
        opts_for(method, schedule="cubic")


def test_biases_and_batchnorm_are_not_pruned(tmp_path):
    model = small_cnn()
    with torch.no_grad():  # tiny biases and BN parameters: they would be pruned first if they were candidates
        for name, p in model.named_parameters():
            if not (name.endswith("weight") and p.dim() > 1):
                p.uniform_(1e-6, 2e-6)
    others = {n: p.clone() for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)}
    method = pr.MagnitudePrune()
    out = method.apply(model, make_ctx(tmp_path, epochs=0), opts_for(method, sparsity=0.95, schedule="oneshot",
                                                                      scope="global"))
    after = dict(out.named_parameters())
    for n, p in others.items():
        assert torch.equal(after[n], p), n
    assert ctx_free_zeros(out) == pr.num_to_prune(sum(m.weight.numel() for _, m in masked(out)), 0.95)


def ctx_free_zeros(model):
    return sum(zeros_of(m) for _, m in masked(model))


# --------------------------------------------------------------------------- gradual schedule

def test_zhu_gupta_formula_values():
    s_i, s_f, t0, dt, n = 0.1, 0.9, 5, 10, 4
    for j in range(n + 1):
        t = t0 + j * dt
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert pr.zhu_gupta_sparsity(t, s_i, s_f, t0, dt, n) == pytest.approx(expected, abs=1e-15)
    assert pr.zhu_gupta_sparsity(t0, s_i, s_f, t0, dt, n) == pytest.approx(s_i)
    assert pr.zhu_gupta_sparsity(t0 + 2 * dt, s_i, s_f, t0, dt, n) == pytest.approx(0.9 - 0.8 * 0.125)
    assert pr.zhu_gupta_sparsity(t0 + n * dt + 100, s_i, s_f, t0, dt, n) == pytest.approx(s_f)

    sched = pr.GradualSchedule(s_i, s_f, t0, dt, n, total_steps=100)
    assert [t for t, _ in sched.steps] == [5, 15, 25, 35, 45]
    assert sched.steps[-1][1] == 0.9  # exactly the target
    values = [s for _, s in sched.steps]
    assert values == sorted(values)
    assert sched.prune_at(15) == pytest.approx(values[1]) and sched.prune_at(16) is None
    assert sched.current(3) == 0.0 and sched.current(24) == values[1] and sched.current(99) == 0.9


def test_schedule_planning():
    s = pr.GradualSchedule.plan(0.0, 0.9, total_steps=1000, epochs=10)
    assert s.end <= 0.7 * 1000 and s.end > 0.6 * 1000
    assert s.dt == 25 and s.n >= 10  # 4 updates per epoch of 100 steps
    s = pr.GradualSchedule.plan(0.0, 0.9, total_steps=12, epochs=3)
    assert s.dt == 1 and s.end <= 11
    s = pr.GradualSchedule.plan(0.0, 0.9, total_steps=100, epochs=2, prune_steps=5)
    assert s.n == 5 and s.end <= 70
    s = pr.GradualSchedule.plan(0.0, 0.9, total_steps=100, epochs=2, frequency=7)
    assert s.dt == 7 and s.end <= 70
    with pytest.raises(UserError, match="does not fit"):
        pr.GradualSchedule.plan(0.0, 0.9, total_steps=100, epochs=2, prune_steps=50, frequency=3)
    with pytest.raises(UserError, match="at least 2"):
        pr.GradualSchedule.plan(0.0, 0.9, total_steps=1, epochs=1)


class MaskWatcher(TrainCallback):
    """Records every layer's mask after each step and asserts masks only grow."""

    def __init__(self, layers):
        self.layers = layers
        self.masks = None
        self.counts = []

    def after_step(self, model, step):
        now = [m.weight_mask.clone() for m in self.layers]
        if self.masks is not None:
            for old, new in zip(self.masks, now):
                assert bool((new <= old).all()), f"a pruned weight came back at step {step}"
        self.masks = now
        self.counts.append(sum(int((m == 0).sum()) for m in now))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_through_the_engine(tmp_path, scope):
    model = to_masked(small_cnn())
    _, targets = pr.select_layers(model)
    layers = [m for _, m in targets]
    ctx = make_ctx(tmp_path, epochs=4)
    cb = pr.GradualPruning(layers, final=0.9, initial=0.1, scope=scope, epochs=4)
    watch = MaskWatcher(layers)
    history = ctx.train(model, epochs=4, callbacks=[cb, watch])
    sched = cb.schedule
    total = sched.total_steps
    assert sched.end <= 0.7 * total
    # the mask updates happened exactly at the schedule's steps, to the schedule's values
    assert [t for t, _, _ in cb.history] == [t for t, _ in sched.steps]
    sizes = [m.weight.numel() for m in layers]
    for (t, target, achieved), (_, s) in zip(cb.history, sched.steps):
        assert target == s
        if scope == "layer":
            expect = sum(pr.num_to_prune(n, s) for n in sizes)
        else:
            expect = pr.num_to_prune(sum(sizes), s)
        assert watch.counts[t] == expect
        assert achieved >= s
    assert watch.counts == sorted(watch.counts)
    # ends exactly at the target (exact zeros)
    final = sum(zeros_of(m) for m in layers)
    if scope == "layer":
        assert [zeros_of(m) for m in layers] == [pr.num_to_prune(n, 0.9) for n in sizes]
    else:
        assert final == pr.num_to_prune(sum(sizes), 0.9)
    # per-epoch metrics carry the schedule, and epochs before its end are never restored
    assert [h["target_sparsity"] for h in history] == [sched.current(h["step"] - 1) for h in history]
    assert all("sparsity" in h for h in history)
    assert history[-1]["target_sparsity"] == 0.9 and history[-1]["sparsity"] >= 0.9
    ends = [h["step"] - 1 >= sched.end for h in history]
    assert [h.get("checkpoint_ok", True) for h in history] == ends
    assert history[0]["sparsity"] < history[-1]["sparsity"]


def test_gradual_method_records_schedule(tmp_path):
    model = small_cnn()
    method = pr.MagnitudePrune()
    ctx = make_ctx(tmp_path, epochs=3)
    out = method.apply(model, ctx, opts_for(method, sparsity=0.8, schedule="gradual", keep_last=True))
    res = ctx.results
    d = res["schedule_details"]
    assert d["t0"] == 0 and d["frequency"] >= 1 and d["prune_steps"] >= 1
    assert d["end_step"] == d["t0"] + d["prune_steps"] * d["frequency"] < d["total_steps"]
    assert d["steps"][-1] == [d["end_step"], 0.8] and len(d["steps"]) == d["prune_steps"] + 1
    layers = masked(out)
    for _, m in layers[:-1]:
        assert zeros_of(m) == pr.num_to_prune(m.weight.numel(), 0.8)
    assert zeros_of(layers[-1][1]) == 0
    assert "masks_completed_after_training" not in res


def _gradual_then_check_pruned_weights(tmp_path, monkeypatch, callback_cls):
    # The engine's own zeroing is switched off: the plugin alone must keep pruned weights at 0.
    monkeypatch.setattr("slimkit.train.zero_pruned", lambda model: None)
    model = to_masked(small_cnn())
    _, targets = pr.select_layers(model)
    layers = [m for _, m in targets]
    ctx = make_ctx(tmp_path, epochs=3)
    before = [m.weight.detach().clone() for m in layers]
    cb = callback_cls(layers, final=0.9, epochs=3)
    ctx.train(model, epochs=3, lr=0.1, callbacks=[cb])  # SGD, Nesterov momentum 0.9, weight decay 5e-4
    assert any(not torch.equal(b, m.weight) for b, m in zip(before, layers))  # it did train
    return [m.weight[m.weight_mask == 0] for m in layers]


def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay(tmp_path, monkeypatch):
    for w in _gradual_then_check_pruned_weights(tmp_path, monkeypatch, pr.GradualPruning):
        assert w.numel() > 0 and bool((w == 0).all())


def test_pruned_weights_would_move_without_the_callbacks_zeroing(tmp_path, monkeypatch):
    class NoZeroing(pr.GradualPruning):
        def after_step(self, model, step):
            self.t = step + 1

    moved = _gradual_then_check_pruned_weights(tmp_path, monkeypatch, NoZeroing)
    assert any(bool((w != 0).any()) for w in moved)  # so the test above can fail


def test_masks_completed_if_the_loop_restores_an_earlier_epoch(tmp_path):
    class RestoresFirstEpoch(Trainer):
        """A loop that ignores checkpoint_ok and restores epoch 1."""

        def fit(self, model, ctx, **kw):
            snap = {}

            class Snap(TrainCallback):
                def on_epoch_end(self, model, epoch, metrics):
                    if epoch == 1:
                        snap.update({k: v.clone() for k, v in model.state_dict().items()})

            kw["callbacks"] = list(kw["callbacks"]) + [Snap()]
            history = super().fit(model, ctx, **kw)
            model.load_state_dict(snap)
            return history

    trainer = RestoresFirstEpoch(device=torch.device("cpu"), dist=DistInfo(), seed=0, batch_size=64,
                                 reporter=Reporter(False))
    ctx = make_ctx(tmp_path, epochs=3, trainer=trainer)
    method = pr.MagnitudePrune()
    out = method.apply(small_cnn(), ctx, opts_for(method, sparsity=0.9, schedule="gradual"))
    assert ctx.results["masks_completed_after_training"] is True
    assert any("WARNING" in line for line in ctx.logs)
    for _, m in masked(out):
        assert zeros_of(m) == pr.num_to_prune(m.weight.numel(), 0.9)


def test_gradual_needs_training(tmp_path):
    method = pr.MagnitudePrune()
    with pytest.raises(UserError, match="oneshot"):
        method.apply(small_cnn(), make_ctx(tmp_path, epochs=0), opts_for(method, schedule="gradual"))


def test_existing_masks_are_kept(tmp_path):
    """A model pruned by an earlier stage: nothing it pruned comes back."""
    model = to_masked(small_cnn())
    layers = [m for _, m in pr.select_layers(model)[1]]
    pr._set_masks(layers, pr.magnitude_masks(layers, 0.5, "layer"))
    old = [m.weight_mask.clone() for m in layers]
    with torch.no_grad():  # make the pruned positions the largest magnitudes
        for m in layers:
            m.weight.add_((1 - m.weight_mask) * 100.0)
    new = pr.magnitude_masks(layers, 0.7, "global")
    for o, n in zip(old, new):
        assert bool((n.float() <= o).all())
    assert sum(int((~n).sum()) for n in new) == pr.num_to_prune(sum(m.weight.numel() for m in layers), 0.7)
    assert sum(int((~n).sum()) for n in pr.magnitude_masks(layers, 0.2, "layer")) == \
        sum(int((o == 0).sum()) for o in old)  # lower target: masks do not shrink


# --------------------------------------------------------------------------- distributed

def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = to_masked(small_cnn(seed=0))
        if rank == 1:  # make the local masks differ from rank 0's
            torch.manual_seed(123)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
        layers = [m for _, m in pr.select_layers(model)[1]]
        local = [k.clone() for k in pr.magnitude_masks(layers, 0.6, "global")]
        cb = pr.GradualPruning(layers, final=0.6, scope="global", epochs=1, sync=True)
        cb.on_train_begin(model, 10)
        for step in range(10):
            cb.on_step_begin(model, step)
            cb.after_step(model, step)
        vgg = VGGLike(seed=0)
        if rank == 1:
            with torch.no_grad():
                for p in vgg.parameters():
                    p.add_(torch.randn_like(p))
        vgg = fp.prune_channels(vgg, (3, 16, 16), ratio=0.5, sync=True)
        torch.save({"masks": [m.weight_mask.clone() for m in layers], "local": local,
                    "vgg": {k: v.shape for k, v in vgg.state_dict().items()},
                    "vgg_rows": [m.weight.shape for m in vgg.modules() if isinstance(m, nn.Conv2d)]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_masks_are_broadcast_from_rank_0(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert any(not torch.equal(a.float(), b.float()) for a, b in zip(r0["local"], r1["local"]))
    for a, b, local0 in zip(r0["masks"], r1["masks"], r0["local"]):
        assert torch.equal(a, b)
        assert torch.equal(a, local0.float())  # everyone has rank 0's masks
    assert r0["vgg"] == r1["vgg"]


# --------------------------------------------------------------------------- filter pruning

class VGGLike(nn.Module):
    """VGG-style: features of conv blocks, flatten with spatial > 1, a two-layer classifier."""

    def __init__(self, seed=0, bias=True):
        super().__init__()
        torch.manual_seed(seed)

        def block(cin, cout, pool=True):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias), nn.BatchNorm2d(cout), nn.ReLU()]
            return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))

        self.features = nn.Sequential(block(3, 8), block(8, 16), nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1),
            nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2)))
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(12 * 1 * 1 * 4, 20), nn.ReLU(), nn.Linear(20, 4))
        with torch.no_grad():  # non-trivial BN statistics
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-1, 1)
                    m.running_var.uniform_(0.5, 2)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def convs_of(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_filters_to_remove():
    assert fp.filters_to_remove(8, 0.5) == 4
    assert fp.filters_to_remove(10, 0.25) == 3  # 2.5 rounds half up
    assert fp.filters_to_remove(3, 0.95) == 2  # at least one left
    assert fp.filters_to_remove(64, 0.0) == 0


# filter-prune on the channel graph: tests/test_filter_prune.py


# --------------------------------------------------------------------------- registration

def test_plugins_register_their_methods():
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    pm.register(pr, "prune")
    pm.register(fp, "filter-prune")
    found = {}
    pm.hook.register_methods(register=lambda m: found.setdefault(m.name, m))
    assert set(found) == {"prune", "filter-prune"}
    for m in found.values():
        assert m.summary and m.paper and all(o.help for o in m.all_options())
    assert {o.name for o in found["prune"].all_options()} == {
        "sparsity", "schedule", "scope", "keep_first", "keep_last", "initial_sparsity", "prune_steps",
        "frequency", "epochs", "min_steps", "lr", "allocation", "sensitivity", "sensitivity_finetune_steps"}
