"""The one training loop. Baselines and every method train through :class:`Trainer`.

Per epoch: a seeded shuffle of the train split (sharded across ranks under torchrun),
SGD (momentum 0.9, weight decay 5e-4) or Adam, a learning rate that rises linearly over the
first steps (:func:`warmup_steps`) and then follows a cosine over the rest, evaluation on the validation split, one line in metrics.jsonl, and a checkpoint
that ``--resume`` continues from. At the end the best epoch by validation accuracy is
restored (callbacks can mark an epoch ineligible, e.g. while a pruning schedule is
still raising sparsity). Reported accuracies come from the test split.
"""
from __future__ import annotations

import copy
import io
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit import atomic, distributed
from slimkit.api import DistInfo
from slimkit.config import DEFAULT_LR
from slimkit.errors import TrainingDiverged, UserError
from slimkit.nn import zero_pruned

FINETUNE_LR_FACTOR = 0.2  # methods fine-tune from a fifth of the baseline's rate unless told otherwise
WARMUP_FRACTION = 0.05  # of a run's steps, at most one epoch
COLLAPSE_FRACTION = 0.5  # an epoch below half the best validation accuracy so far has collapsed
MAX_RECOVERIES = 3


def warmup_steps(total_steps: int, steps_per_epoch: int) -> int:
    """Steps of linear learning-rate warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD"):
    5 % of the run, at most one epoch. Without it, deep BatchNorm ResNets diverge in their first
    steps at SGD's 0.1: resnet56 on the MNIST split went to loss 5.8 by step 10 and stayed at
    chance (12 % after two epochs); with it the loss was 0.25 by step 60."""
    return max(1, min(steps_per_epoch, int(total_steps * WARMUP_FRACTION)))


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """The schedule's multiplier of the base rate at ``step``: linear warm-up, then cosine to 0."""
    step = min(step, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint for ``--resume`` is on disk."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cross_entropy_loss(model, inputs, targets):
    logits = model(inputs)
    return F.cross_entropy(logits, targets), logits


class Trainer:
    def __init__(self, *, device, dist: DistInfo, seed: int, batch_size: int, reporter, registry=None,
                 checkpoint_dir: Path | None = None, metrics_path: Path | None = None, resume: bool = False,
                 base_lr: float | None = None):
        self.device = device
        self.dist = dist
        self.seed = seed
        self.batch_size = batch_size
        self.reporter = reporter
        self.registry = registry
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.resume = resume
        self.base_lr = base_lr
        self._calls: dict[str, int] = {}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data, split: str = "test", batch_size: int = 512) -> float:
        was_training = model.training
        model.eval()
        correct = total = 0
        for x, y in data.batches(split, batch_size, shuffle=False, augment=False):
            x, y = x.to(self.device), y.to(self.device)
            correct += int((model(x).argmax(1) == y).sum())
            total += int(y.numel())
        model.train(was_training)
        if total == 0:
            raise UserError(f"the {split} split of {data.name} is empty")
        return correct / total

    # ------------------------------------------------------------------ training
    def _default_lr(self, optimizer: str, *, fine_tune: bool) -> float:
        """The rate when none is given: the run's base rate (or the optimizer's default), a fifth of it
        for training that starts from a trained network."""
        base = self.base_lr if self.base_lr is not None else DEFAULT_LR[optimizer]
        return base * FINETUNE_LR_FACTOR if fine_tune else base

    def _recover(self, model, opt, sched, best_state: dict, best_acc: float, metrics: dict, history: list):
        """A collapsed epoch (validation accuracy below half the best so far, e.g. LeNet-5 at SGD's
        0.1 on the MNIST split, 1 thread: 89.8 % after epoch 1, then loss 3.95 and 10.4 % for the
        other 19 epochs) is rolled back: the best weights come back, momentum is cleared and the
        rest of the schedule runs at half the rate. This is the usual manual remedy, automated
        for baselines, which every later stage and every comparison stands on; a method stage
        that collapses is flagged in the report instead (its losses are the method's own)."""
        done = sum(1 for h in history if h.get("recovered"))
        if done >= MAX_RECOVERIES:
            raise TrainingDiverged(
                f"stage {metrics['stage']}: validation accuracy collapsed {done + 1} times (now "
                f"{metrics['val_accuracy']:.4f}, best {best_acc:.4f}); try a lower --lr")
        model.load_state_dict(best_state)
        opt.state.clear()
        sched.base_lrs = [lr / 2 for lr in sched.base_lrs]
        for group, factor_lr in zip(opt.param_groups, sched.get_last_lr()):
            group["lr"] = factor_lr / 2
        message = (f"{metrics['stage']}: validation accuracy collapsed at epoch {metrics['epoch']} "
                   f"({metrics['val_accuracy']:.4f} after a best of {best_acc:.4f}); the best epoch's weights "
                   f"were restored and the learning rate halved for the rest of the schedule")
        metrics["recovered"] = {"kind": "recovered", "stage": metrics["stage"], "epoch": metrics["epoch"],
                                "val_accuracy": metrics["val_accuracy"], "best_val_accuracy": best_acc,
                                "message": message}
        self.reporter.log(f"[yellow]{message}[/yellow]")

    def _optimizer(self, name: str, params, lr: float):
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr)
        raise UserError(f"unknown optimizer {name!r}; expected sgd or adam")

    def _emit(self, hook, **kwargs):
        if self.registry is not None and self.dist.is_main:
            self.registry.emit(hook, **kwargs)

    def fit(self, model: nn.Module, ctx, *, epochs: int, lr: float | None, loss=None,
            callbacks=(), params=None, optimizer: str = "sgd", label: str = "train", data=None,
            evaluate: bool = True, recover: bool | None = None) -> list[dict]:
        """Train ``model`` for ``epochs``; the best epoch by validation accuracy is restored at the end.
        ``recover`` (default: for baselines only) handles a collapse (see :meth:`_recover`)."""
        data = data or ctx.data
        if recover is None:
            recover = label == "baseline"
        callbacks = list(callbacks)
        call = self._calls.get(label, 0)
        self._calls[label] = call + 1
        key = f"{label}-{call}"
        if lr is None:
            lr = self._default_lr(optimizer, fine_tune=label != "baseline")
        epochs = int(epochs)
        if epochs < 0:
            raise UserError(f"epochs must be >= 0, got {epochs}")
        model.to(self.device)
        trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        if not trainable and epochs > 0:
            raise UserError(f"stage {label}: nothing to train (no parameter requires a gradient)")
        per_rank_batch = max(1, self.batch_size // self.dist.world_size)
        steps_per_epoch = math.ceil(data.size("train") / (per_rank_batch * self.dist.world_size))
        total_steps = max(1, epochs * steps_per_epoch)
        opt = self._optimizer(optimizer, trainable, lr) if trainable else None
        warmup = warmup_steps(total_steps, steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total_steps, warmup)) if opt else None

        history: list[dict] = []
        start_epoch, step = 0, 0
        best_state, best_acc = None, -1.0
        ckpt = self.checkpoint_dir / f"{key}.pt" if self.checkpoint_dir else None
        if self.resume and ckpt is not None and ckpt.exists():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                required = ("model", "epoch", "step", "history", "best_acc", "rng")
                if not isinstance(state, dict) or any(k not in state for k in required):
                    raise ValueError("not a slimkit training checkpoint")
            except Exception as exc:  # truncated, corrupt, or not ours: never guess
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UserError(f"--resume: checkpoint {ckpt} is unreadable ({first}); delete it to redo that "
                                "stage, or run without --resume") from None
            model.load_state_dict(state["model"])
            if opt is not None and state.get("optimizer"):
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
            start_epoch, step = state["epoch"], state["step"]
            history = json.loads(state["history"])
            best_acc = state["best_acc"]
            best_state = state.get("best_state") or None
            torch.set_rng_state(state["rng"])
            self._forget_metrics_after(label, call, start_epoch)
            if start_epoch >= epochs:
                self.reporter.log(f"[dim]{label}: finished earlier, restored from {ckpt.name}[/dim]")
                if best_state is not None and evaluate:
                    model.load_state_dict(best_state)
                return history
            self.reporter.log(f"[dim]{label}: resuming after epoch {start_epoch} of {epochs}[/dim]")

        ddp = None
        forward_model = model
        if self.dist.enabled and trainable:
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=loss is not None)
            forward_model = ddp
        loss_fn = loss or cross_entropy_loss

        for cb in callbacks:
            cb.on_train_begin(model, total_steps)

        def save_checkpoint(epoch_done: int):
            if ckpt is None or not self.dist.is_main:
                return
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            # serialised in memory: torch.save's C++ writer fails with an opaque error on a full
            # disk; the atomic writer turns that into one line and leaves no partial file
            buffer = io.BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict() if opt else None,
                        "scheduler": sched.state_dict() if sched else None, "epoch": epoch_done, "step": step,
                        "history": json.dumps(history), "best_acc": best_acc, "best_state": best_state or {},
                        "rng": torch.get_rng_state()}, buffer)
            atomic.write_bytes(ckpt, buffer.getvalue())

        try:
            if start_epoch == 0:
                save_checkpoint(0)
            with self.reporter.bar(label, total=(epochs - start_epoch) * steps_per_epoch) as bar:
                for epoch in range(start_epoch, epochs):
                    model.train()
                    t0 = time.perf_counter()
                    loss_sum = correct = seen = 0.0
                    batches = data.batches("train", per_rank_batch, shuffle=True, epoch=epoch, seed=self.seed,
                                           rank=self.dist.rank, world_size=self.dist.world_size)
                    for index, x, y in batches.indexed():
                        x, y = x.to(self.device), y.to(self.device)
                        for cb in callbacks:
                            cb.on_batch(model, step, index)
                        for cb in callbacks:
                            cb.on_step_begin(model, step)
                        value, logits = loss_fn(forward_model, x, y)
                        if not torch.isfinite(value):
                            raise TrainingDiverged(
                                f"stage {label}: loss became {float(value)} at epoch {epoch + 1}, step {step}; "
                                f"the last good checkpoint is kept in {ckpt or 'memory'}; try a lower --lr")
                        opt.zero_grad(set_to_none=True)
                        value.backward()
                        for cb in callbacks:
                            cb.after_backward(model, step)
                        opt.step()
                        sched.step()
                        zero_pruned(model)
                        for cb in callbacks:
                            cb.after_step(model, step)
                        step += 1
                        n = y.numel()
                        value = value.detach()
                        loss_sum += float(value) * n
                        seen += n
                        if logits is not None:
                            correct += float((logits.argmax(1) == y).sum())
                        bar.advance(1, status=f"epoch {epoch + 1}/{epochs} loss {float(value):.4f}")
                    loss_sum, correct, seen = distributed.all_reduce_sum(self.dist, [loss_sum, correct, seen])
                    metrics = {"stage": label, "call": call, "epoch": epoch + 1, "step": step,
                               "train_loss": loss_sum / max(seen, 1),
                               "train_accuracy": correct / max(seen, 1) if correct else None,
                               "lr": sched.get_last_lr()[0] if sched else 0.0}
                    if evaluate:
                        metrics["val_accuracy"] = self.evaluate(model, data, "val")
                    metrics["seconds"] = time.perf_counter() - t0
                    for cb in callbacks:
                        cb.on_epoch_end(model, epoch + 1, metrics)
                    history.append(metrics)
                    eligible = metrics.get("checkpoint_ok", True)
                    if recover and evaluate and best_state is not None and \
                            metrics["val_accuracy"] < COLLAPSE_FRACTION * best_acc:
                        self._recover(model, opt, sched, best_state, best_acc, metrics, history)
                    elif evaluate and eligible and metrics["val_accuracy"] > best_acc:
                        best_acc = metrics["val_accuracy"]
                        best_state = copy.deepcopy(model.state_dict())
                    self._write_metrics(metrics)
                    self._emit("epoch_finished", stage=label, epoch=epoch + 1, metrics=metrics)
                    val = f" val {metrics['val_accuracy']:.4f}" if evaluate else ""
                    bar.advance(0, status=f"epoch {epoch + 1}/{epochs} loss {metrics['train_loss']:.4f}{val}")
                    bar.epoch_done(epoch + 1, epochs, metrics["train_loss"], metrics.get("val_accuracy"),
                                   metrics["seconds"])
                    save_checkpoint(epoch + 1)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted during {label}; checkpoint in {ckpt.parent if ckpt else '(none)'}; "
                              "run the same command with --resume to continue") from None
        if evaluate and best_state is not None:
            model.load_state_dict(best_state)
        return history

    def short_finetune(self, model: nn.Module, data, steps: int, lr: float | None = None,
                       optimizer: str = "sgd", after_step=None) -> nn.Module:
        """``steps`` optimizer steps of cross-entropy training at a constant rate, in place: the
        short-term fine-tuning NetAdapt (Yang et al., ECCV 2018) gives every proposal before
        measuring it. The batch order is the run seed's (epoch 0, 1, ... of the train split),
        the same for every model fine-tuned, so two proposals differ only in what was
        compressed. No evaluation, checkpoint, metrics line or best-epoch restore; pruned
        weights stay zero. ``lr`` None: the engine's fine-tuning rate. ``after_step(steps_done)``
        is called after every step (e.g. to measure at several lengths in one pass; the model
        is in train mode). Runs on this rank alone."""
        if steps <= 0:
            return model
        if lr is None:
            lr = self._default_lr(optimizer, fine_tune=True)
        if data.size("train") == 0:
            raise UserError(f"the train split of {data.name} is empty; nothing to fine-tune on")
        model.to(self.device).train()
        opt = self._optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr)
        done, epoch = 0, 0
        while done < steps:
            for x, y in data.batches("train", self.batch_size, shuffle=True, epoch=epoch, seed=self.seed):
                value, _ = cross_entropy_loss(model, x.to(self.device), y.to(self.device))
                if not torch.isfinite(value):
                    raise TrainingDiverged(f"short fine-tuning: loss became {float(value)} at step {done}; "
                                           "try a lower learning rate")
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                zero_pruned(model)
                done += 1
                if after_step is not None:
                    after_step(done)
                if done == steps:
                    break
            epoch += 1
        model.eval()
        return model

    def _forget_metrics_after(self, label: str, call: int, epoch: int) -> None:
        """On resume, drop metrics lines of epochs after the checkpoint: they run again."""
        if self.metrics_path is None or not self.dist.is_main or not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if not _is_after(json.loads(line), label, call, epoch)]
        atomic.write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def _write_metrics(self, metrics: dict) -> None:
        if self.metrics_path is None or not self.dist.is_main:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")


def _is_after(row: dict, label: str, call: int, epoch: int) -> bool:
    return row.get("stage") == label and row.get("call", 0) == call and row.get("epoch", 0) > epoch
