"""Knowledge distillation: Hinton KD, function matching (Beyer et al. 2022) and FitNets hints.

The teacher is ``ctx.teacher``, the stage's input model as a frozen eval-mode copy of
the baseline (or ``--teacher``). The student is one of

* ``student=NAME``: a fresh zoo model (``ctx.build_model(NAME)``, with ``width=W`` when
  ``width`` is also given), e.g. ``--set student=lenet5 --set width=0.25``;
* ``width=W`` alone: the run's ``--model`` architecture shrunk by the zoo's ``width``
  option (``ctx.build_model(ctx.model_name, width=W)``; ``--model`` must be a zoo
  name). ``W`` is the zoo option itself, not relative to a ``--model-opt width``;
* ``student=input`` (the default when neither ``student`` nor ``width`` is given):
  the model coming in from the previous stage of a chain, trained on with its
  weights kept, e.g. ``--method prune --method distill`` recovers a pruned model's accuracy
  with the dense baseline as teacher. As the first stage of a run that model *is*
  the baseline, so ``distill`` alone with the default student is a KD fine-tune of
  the teacher itself (no compression); the stage logs a note when that happens.

Fresh students are built under a seed derived from the run's seed, and every
training of this stage runs under its own derived seed, so that the labels-only
control of ``baseline=true`` starts from the identical initialisation, sees the same
batches in the same order and differs from the distilled student only in its loss.

Losses
------
``hinton`` (G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531, 2015), with student logits ``s``, teacher logits ``t``,
labels ``y`` and temperature ``T``::

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

computed by the fused :func:`slimkit.ops.kd_loss`. The ``T^2`` keeps the soft term's
gradient scale independent of ``T``; the soft term's gradient per logit is
``alpha * T * (softmax(s/T) - softmax(t/T))``, up to ``T`` times that of cross-entropy,
so with a confident teacher a small student can lose its ReLUs in the first steps
and stay near chance where the same learning rate trains it on labels.

Defaults that cannot wreck the student (issue 10). Measured on the MNIST split, seed
1, LeNet-5 teacher (98.15 %) into LeNet-5 x0.25, 5 epochs at the method-stage rate
(SGD 0.02, Nesterov 0.9): at T=4 the loss started at ~27 (``alpha T^2 KL`` of a
near-uniform student against a teacher whose T=4 softmax is still peaked), the
gradient norm was 5-8 in the first steps, momentum carried it to 34 and 74 at steps
7-8, and right after it fell to ~1 while the loss stayed at 27-29 for 40 more steps:
the step had switched off most of the student's units (2 and 4 conv channels). The
student ended at 92.3 % (another run of the same seed at 36.75 %) against 96.05 % on
labels alone. Three defaults address it:

* a linear **learning-rate warm-up** over the first ``warmup_epochs`` (1) epoch of
  steps (:class:`KDWarmup`, a gradient scale after the backward pass), given to the
  labels-only control as well so that the two still differ only in their loss; with it
  the same seed at T=4 trained smoothly (95.95 %);
* **gradient-norm clipping at 5** (``clip_grad_norm``, :class:`ClipGradNorm`), also
  for the control. The warm-up alone proved fragile: once baselines were trained with the
  engine's warm-up (a teacher of 99.0 % instead of 98.15 %), seed 1 fell to 95.25 % against
  97.15 % on labels; seeds 0-2 gave uplifts of +0.10, -1.90, +1.55 points. Clipping at 5
  caps the spikes and left the ordinary steps alone: +0.60, +0.45, +1.65 (at 1 it slowed
  both trainings: -0.30, +0.10, -1.05);
* **T = 2** (was 4): the bound ``alpha * T`` on the soft gradient halves, and Hinton et
  al. report that a much smaller student does better at lower temperatures (the
  paper's MNIST nets with 30 units a layer did best at T 2.5-4). With both, the seed
  reached 97.15 % against 96.20 % for its control; docs/BENCHMARKS.md has the three seeds.

The stage still records a ``warning`` when the student ends near chance while the
teacher does not, and the engine flags any stage that loses more than its collapse
threshold.

``function-matching`` (L. Beyer, X. Zhai, A. Royer, L. Markeeva, R. Anil,
A. Kolesnikov, "Knowledge distillation: A good teacher is patient and consistent",
CVPR 2022): distillation is treated as matching the teacher's *function*, not its
outputs on the training set. Labels are not used at all. Teacher and student see the
identical, aggressively augmented batch ("consistent"): for image data a random
crop with padding (and a horizontal flip where the data set allows flips) from
:func:`slimkit.data.augment_images`, then mixup ``x <- lam * x + (1 - lam) * x[perm]``
with one ``lam ~ Beta(mixup_alpha, mixup_alpha)`` per batch and a random pairing
``perm``; the loss is the KL term alone (``kd_loss(s, t, labels=None, T)``). Because
every batch is a new point of the input space the teacher's logits cannot be
cached: the teacher runs on each augmented batch under ``no_grad``. The paper's
point is that this needs *long* schedules ("patient": thousands of epochs on small
data sets); on a short schedule it usually trails Hinton KD, which also gets the
labels. The augmentation is seeded by (run seed, rank, optimizer step), so a run is
repeatable and ``--resume`` replays the same views.

``hints`` (A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio,
"FitNets: Hints for Thin Deep Nets", ICLR 2015): two stages. First, the student up to
its *hint layer* plus a regressor ``r`` is trained to predict the output of the
teacher's *guided layer*::

    L_hint = mean over elements of (r(student_hint(x)) - teacher_guided(x) / sigma)^2

``sigma`` is the standard deviation of the teacher's guided-layer output (its target
form, below) over a probe batch of up to 256 training examples, a constant of the
run. This is the MSE of FitNets with the target brought to unit scale: the loss is
scale-free (1.0 is what predicting the mean gives), so one learning rate suits any
guided layer, and the regressor needs no large gain. (Raw feature scales vary by
orders of magnitude between layers and models. Unscaled, SGD at the students'
learning rate diverged; dividing the loss by ``sigma^2`` instead made the student
blow up its own hint features -- on MNIST the conv2 output of LeNet-5 x0.25 grew
6x in 3 hint epochs -- and the KD stage that follows then started from huge logits
and lost the student's ReLUs.) Only the parameters that the hint layer's output depends on (found by autograd on a
probe batch) and the regressor are trained; the forward stops at the hint layer.
Second, the whole student is trained with Hinton KD as above; the regressor is
dropped. The regressor depends on the feature shapes (per example, batch excluded):

* both ``[C, H, W]``: a 1x1 ``nn.Conv2d(C_s, C_t)``. Where the spatial sizes differ,
  the larger map is average-pooled (``adaptive_avg_pool2d``) down to the smaller
  size, per dimension, before the regressor (student) or as the target (teacher).
  (FitNets picks a convolution kernel that shrinks the student map instead; pooling
  keeps the regressor 1x1 and never needs the teacher to be the larger one.)
* otherwise (e.g. a conv student hinting a linear teacher layer): each side is
  flattened to ``[C*H*W]`` (a map with more than ``MAX_FLAT`` elements is globally
  average-pooled to ``[C]`` first) and the regressor is an ``nn.Linear``.

Default layers (``hint_layer`` / ``guided_layer`` unset): the middle convolution
block of each model, i.e. of the children of ``model.features`` (or of the model
itself) that contain a convolution, the one at index ``(n - 1) // 2``
(``features.block3`` of a 5-block VGG, ``layer2`` of a ResNet); for models without
such blocks, the middle one, at index ``(n - 1) // 2``, of the conv/linear layers
without the last (classifier) layer (``features.conv2`` of LeNet-5,
``classifier.fc1`` of LeNet-300-100). Layers are named as in
``model.named_modules()``.

Cached teacher logits
---------------------
When the training batches are not augmented (``ctx.data.augment`` is False: digits,
MNIST, synthetic and vector data by default) the teacher sees every training example
unchanged in every epoch, so Hinton KD (and the second stage of hints) computes
``teacher(x)`` for the whole train split once (``ctx.data.tensors("train")``, batches
of 512, ``no_grad``) and keeps the ``[N, classes]`` logits for the run. The loss is
also a training callback: the loop tells it each batch's example indices
(``TrainCallback.on_batch``), by which it looks up the batch's teacher logits; its
targets are the batch's labels, as for any loss, so shuffling, sharding across ranks
and the loop's ``train_accuracy`` are those of every other training. With
augmentation on, the teacher runs on every augmented batch instead.

Report
------
``teacher_accuracy``, ``student_accuracy`` (test split), ``teacher_params``,
``student_params``, ``loss`` and its settings, ``teacher_logits_cached``; with
``baseline=true`` also ``labels_only_accuracy``: the same student (same build seed,
same epochs, same learning rate, same batch order) trained on the labels alone with
the engine's cross-entropy, and ``kd_uplift = student_accuracy - labels_only_accuracy``.
For ``hints`` the labels-only control trains for the KD stage's ``epochs`` (the
hint stage's ``hint_epochs`` come on top for the distilled student), and the stage
records ``hint_layer``, ``guided_layer``, ``regressor``, ``hint_target_std``
(``sigma``), ``hint_mse`` (the normalised hint loss, mean of each hint epoch) and
``hint_mse_before``/``hint_mse_after`` (on the probe batch, eval mode, before and
after the hint stage).
"""
from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit import hookimpl
from slimkit.api import Method, Option, TrainCallback, model_names
from slimkit.data import augment_images, derive_seed
from slimkit.distillation import CachedKDLoss, ClipGradNorm, KDWarmup, OnlineKDLoss, teacher_logits
from slimkit.nn.surgery import capture
from slimkit.errors import UserError
from slimkit.models import count_params
from slimkit.ops import kd_loss

__all__ = [
    "Distill", "LOSSES", "MAX_FLAT", "KDWarmup", "teacher_logits", "CachedKDLoss", "OnlineKDLoss",
    "FunctionMatchingLoss", "HintRegressor", "HintNet", "capture", "hint_loss", "target_std", "lower_params",
    "default_layer", "layer_names",
]

LOSSES = ("hinton", "function-matching", "hints")
#: Hints: a feature map with more elements than this is globally average-pooled, not flattened,
#: before a linear regressor.
MAX_FLAT = 8192


# --------------------------------------------------------------------------- helpers

@contextlib.contextmanager
def _rng(ctx, purpose: str):
    """Run the body with torch's generators seeded from (run seed, purpose), restoring them after."""
    devices = [ctx.device.index or 0] if getattr(ctx.device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(ctx.seed, "distill", purpose))
        yield


def layer_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.conv._ConvNd) for x in m.modules())


def default_layer(model: nn.Module) -> str:
    """The middle conv block of ``model`` (see the module docstring), by qualified name."""
    features = getattr(model, "features", None)
    root, prefix = (features, "features.") if isinstance(features, nn.Sequential) else (model, "")
    blocks = [prefix + n for n, m in root.named_children() if len(list(m.children())) and _has_conv(m)]
    if len(blocks) >= 2:
        return blocks[(len(blocks) - 1) // 2]
    layers = [n for n, m in model.named_modules()
              if n and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and not list(m.children())]
    if len(layers) >= 2:
        layers = layers[:-1]  # the classifier's output layer carries no hint
    if not layers:
        raise UserError(f"distill: {type(model).__name__} has no conv or linear layer to take a hint from; "
                        f"name one with hint_layer/guided_layer")
    return layers[(len(layers) - 1) // 2]


def _check_layer(model: nn.Module, name: str, option: str, whose: str) -> None:
    if name not in dict(model.named_modules()) or not name:
        names = layer_names(model)
        shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
        raise UserError(f"distill: {option}={name!r} is not a layer of the {whose} ({type(model).__name__}); "
                        f"its layers: {shown}")


# --------------------------------------------------------------------------- losses

class FunctionMatchingLoss(TrainCallback):
    """Beyer et al.'s function matching: KL on a shared, freshly augmented + mixed-up batch; labels unused.

    The views of step ``t`` on rank ``r`` come from generators seeded by
    ``(seed, r, t)``; as a callback it learns ``t`` from ``on_step_begin``.
    """

    def __init__(self, teacher: nn.Module, temperature: float, mixup_alpha: float, *, image: bool,
                 flip: bool = False, fill: torch.Tensor | None = None, seed: int = 0, rank: int = 0):
        self.teacher = teacher
        self.temperature = float(temperature)
        self.mixup_alpha = float(mixup_alpha)
        self.image, self.flip, self.fill = image, flip, fill
        self.seed, self.rank = int(seed), int(rank)
        self.step = 0

    def on_step_begin(self, model, step: int) -> None:
        self.step = int(step)

    @torch.no_grad()
    def augment(self, x: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """The view of batch ``x`` that teacher and student both see at ``step``."""
        step = self.step if step is None else int(step)
        g = torch.Generator().manual_seed(derive_seed(self.seed, "function-matching", self.rank, step))
        device = x.device
        out = x.detach().cpu()
        if self.image and out.dim() == 4:
            fill = self.fill.cpu() if self.fill is not None else None
            out = augment_images(out, g, flip=self.flip, fill=fill)
        if self.mixup_alpha > 0 and out.shape[0] > 1:
            rng = np.random.default_rng(derive_seed(self.seed, "function-matching-mixup", self.rank, step))
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            perm = torch.randperm(out.shape[0], generator=g)
            out = lam * out + (1.0 - lam) * out[perm]
        return out.to(device)

    def __call__(self, model, inputs, _labels):
        view = self.augment(inputs)
        s = model(view)
        with torch.no_grad():
            t = self.teacher(view).to(s.dtype)
        return kd_loss(s.contiguous(), t.contiguous(), None, self.temperature), None


# --------------------------------------------------------------------------- hints

class HintRegressor(nn.Module):
    """Maps the student's hint feature to the teacher's guided feature (see the module docstring).

    ``student_shape``/``teacher_shape`` are per-example feature shapes (no batch dim).
    :meth:`forward` takes the student feature, :meth:`target` turns the teacher
    feature into the regression target (pooling/flattening only, no parameters).
    """

    def __init__(self, student_shape, teacher_shape):
        super().__init__()
        s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
        self.student_shape, self.teacher_shape = s, t
        self.spatial = len(s) == 3 and len(t) == 3
        if self.spatial:
            size = (min(s[1], t[1]), min(s[2], t[2]))
            self.student_pool = size if s[1:] != size else None
            self.teacher_pool = size if t[1:] != size else None
            self.regressor = nn.Conv2d(s[0], t[0], 1)
            self.kind = f"conv1x1 {s[0]}->{t[0]} at {size[0]}x{size[1]}"
        else:
            self.student_gap = len(s) == 3 and math.prod(s) > MAX_FLAT
            self.teacher_gap = len(t) == 3 and math.prod(t) > MAX_FLAT
            fs = s[0] if self.student_gap else math.prod(s)
            ft = t[0] if self.teacher_gap else math.prod(t)
            self.regressor = nn.Linear(fs, ft)
            self.kind = f"linear {fs}->{ft}"

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            if self.student_pool is not None:
                f = F.adaptive_avg_pool2d(f, self.student_pool)
            return self.regressor(f)
        if self.student_gap:
            f = f.mean(dim=(2, 3))
        return self.regressor(f.flatten(1))

    def target(self, f: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return F.adaptive_avg_pool2d(f, self.teacher_pool) if self.teacher_pool is not None else f
        if self.teacher_gap:
            f = f.mean(dim=(2, 3))
        return f.flatten(1)


class HintNet(nn.Module):
    """The student up to its hint layer, then the regressor: what the hint stage trains.

    A module of its own so that the engine's loop (and DDP, which wraps it) sees the
    regressor's parameters; the forward pass stops at the hint layer.
    """

    def __init__(self, student: nn.Module, hint_layer: str, regressor: HintRegressor):
        super().__init__()
        self.student = student
        self.regressor = regressor
        self.hint_layer = hint_layer

    def forward(self, x):
        return self.regressor(capture(self.student, self.hint_layer, x))


def hint_loss(teacher: nn.Module, guided_layer: str, regressor: HintRegressor, sigma: float = 1.0):
    """The hint stage's loss ``(model, x, y) -> (mse(pred, target / sigma), None)``; ``model`` is the
    (possibly wrapped) HintNet."""

    def loss(model, inputs, _targets):
        pred = model(inputs)
        with torch.no_grad():
            target = regressor.target(capture(teacher, guided_layer, inputs)).to(pred.dtype)
        return F.mse_loss(pred, target / sigma), None

    return loss


@torch.no_grad()
def target_std(teacher: nn.Module, guided_layer: str, regressor: HintRegressor, x: torch.Tensor) -> float:
    """Standard deviation of the regression targets over the batch ``x`` (all elements): the hint target's unit."""
    return max(float(regressor.target(capture(teacher, guided_layer, x)).float().std()), 1e-6)


def lower_params(student: nn.Module, hint_layer: str, x: torch.Tensor) -> list[nn.Parameter]:
    """The trainable parameters that the output of ``hint_layer`` depends on (by autograd on ``x``)."""
    params = [p for p in student.parameters() if p.requires_grad]
    was = student.training
    student.eval()
    try:
        with torch.enable_grad():
            f = capture(student, hint_layer, x)
            grads = torch.autograd.grad(f.float().sum(), params, allow_unused=True) if f.requires_grad else \
                [None] * len(params)
    finally:
        student.train(was)
    return [p for p, g in zip(params, grads) if g is not None]


@torch.no_grad()
def _probe_mse(net: HintNet, teacher, guided_layer, x, sigma: float) -> float:
    was = net.training
    net.eval()
    try:
        pred = net(x)
        target = net.regressor.target(capture(teacher, guided_layer, x)).to(pred.dtype)
        return float(F.mse_loss(pred, target / sigma))
    finally:
        net.train(was)


# --------------------------------------------------------------------------- method

class Distill(Method):
    name = "distill"
    summary = "Knowledge distillation into a smaller student: Hinton KD, function matching or FitNets hints."
    paper = ("G. Hinton, O. Vinyals, J. Dean. Distilling the Knowledge in a Neural Network. arXiv:1503.02531, "
             "2015 (hinton); L. Beyer et al. Knowledge distillation: A good teacher is patient and consistent. "
             "CVPR 2022 (function-matching); A. Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015 (hints).")
    options = [
        Option("student", str, None, "the student: a registered model name (built fresh, seeded), or 'input' "
               "(the stage's input model, weights kept). Unset: 'input' unless width is given"),
        Option("width", float, None, "width multiplier in (0, 1] (the zoo's width option): with student=NAME the "
               "student's width; alone, the student is --model's architecture at this width", min=0.0, max=1.0),
        Option("loss", str, "hinton", "hinton: alpha*T^2*KL + (1-alpha)*CE; function-matching: KL only on "
               "shared mixup+crop views, no labels (for long schedules); hints: FitNets hint stage, then hinton",
               choices=LOSSES),
        Option("temperature", float, 2.0, "softmax temperature T of the KL term (the soft term's gradient per "
               "logit is up to alpha*T times that of cross-entropy: a higher T suits a large student and a "
               "longer schedule)", min=0.05, max=100.0),
        Option("alpha", float, 0.9, "hinton/hints: weight of the KL term (1 - alpha weighs the label "
               "cross-entropy)", min=0.0, max=1.0),
        Option("mixup_alpha", float, 1.0, "function-matching: mixup lam ~ Beta(a, a) per batch (0 = no mixup)",
               min=0.0, max=100.0),
        Option("hint_layer", str, None, "hints: the student layer whose output gives the hint (qualified name, "
               "e.g. features.block2; unset: the student's middle conv block)"),
        Option("guided_layer", str, None, "hints: the teacher layer the hint regresses onto (unset: the "
               "teacher's middle conv block)"),
        Option("hint_epochs", int, None, "hints: epochs of the hint stage, before the KD epochs "
               "(unset: max(1, epochs // 4))", min=0),
        Option("warmup_epochs", float, 1.0, "linear learning-rate warm-up over this many epochs' optimizer steps "
               "(KD and its labels-only control alike): the T^2-scaled KD gradients of a confident teacher are "
               "up to T times those of cross-entropy and can kill a small student's units in the first steps; "
               "0 = none", min=0.0, max=1000.0),
        Option("clip_grad_norm", float, 5.0, "clip the gradient's L2 norm to this after each backward pass (KD and "
               "its labels-only control alike); caps the early spikes a confident teacher causes in a small "
               "student; 0 = off", min=0.0, max=1e6),
        Option("baseline", bool, False, "also train the same student on labels alone (same seed, epochs, lr) "
               "and report labels_only_accuracy"),
    ]

    # ------------------------------------------------------------------ checks
    def check(self, model, opts: dict) -> None:
        student, width, loss = opts.get("student"), opts.get("width"), opts.get("loss", "hinton")
        if width is not None and not width > 0:
            raise UserError(f"distill: width={width} is out of range: expected a number in (0, 1]")
        if opts.get("lr") is not None and not opts["lr"] > 0:
            raise UserError(f"distill: lr={opts['lr']} is invalid: expected a positive number")
        if student == "input" and width is not None:
            raise UserError("distill: student=input keeps the incoming model; it cannot also be shrunk by width. "
                            "Drop width, or give student=NAME (a zoo model) with width")
        if student not in (None, "input"):
            names = model_names()
            if student not in names:
                raise UserError(f"distill: unknown student {student!r}; give a registered model ("
                                f"{', '.join(names)}) or 'input'")
        if loss != "hints":
            given = [k for k in ("hint_layer", "guided_layer", "hint_epochs") if opts.get(k) is not None]
            if given:
                raise UserError(f"distill: {', '.join(given)} only apply to loss=hints (this run has loss={loss})")
        elif opts.get("hint_layer") is not None and student in (None, "input"):
            # the student is the input model or --model's architecture at a smaller width:
            # either way it has the probe's layer names. (A zoo student by name and the
            # guided layer, which belongs to the teacher -- --teacher may be another
            # model than the probe -- are checked when the stage starts, before training.)
            _check_layer(model, opts["hint_layer"], "hint_layer", "student")

    # ------------------------------------------------------------------ student
    def _student(self, model, ctx, opts):
        """-> (student, description, fresh, rebuild) where rebuild() makes an identical untrained student."""
        student, width = opts["student"], opts["width"]
        if student in (None, "input") and width is None:
            return model, "input", False, None
        if student in (None, "input"):
            if ctx.model_name not in model_names():
                raise UserError(f"distill: width={width} shrinks --model's architecture, but --model is "
                                f"{ctx.model_name!r}, not a registered model name; give student=NAME "
                                f"with width instead")
            name = ctx.model_name
        else:
            name = student
        kwargs = {} if width is None else {"width": width}

        def build():
            with _rng(ctx, "student"):
                return ctx.build_model(name, **kwargs)

        desc = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
        return build(), desc, True, build

    # ------------------------------------------------------------------ apply
    def apply(self, model, ctx, opts: dict):
        self.check(model, opts)
        teacher = ctx.teacher
        if teacher is None:
            raise UserError("distill: this stage has no teacher (ctx.teacher is None)")
        teacher.eval().requires_grad_(False)
        loss_name = opts["loss"]
        epochs = ctx.epochs if opts["epochs"] is None else opts["epochs"]
        T, alpha, lr = opts["temperature"], opts["alpha"], opts["lr"]

        student, desc, fresh, rebuild = self._student(model, ctx, opts)
        if not fresh and opts["student"] is None:
            ctx.log("distill: no student or width given: distilling into the stage's input model (student=input)")
        student.to(ctx.device)
        # the labels-only control: the identical untrained student (or the input model as it comes in)
        control = None
        if opts["baseline"]:
            control = rebuild() if fresh else copy.deepcopy(student)

        hints_info: dict = {}
        if loss_name == "hints":
            hints_info = self._hint_stage(student, teacher, ctx, opts, epochs, lr)

        cached = not ctx.data.augment and loss_name in ("hinton", "hints")
        warmup = KDWarmup(round(opts["warmup_epochs"] * ctx.steps_per_epoch()))
        steady = [ClipGradNorm(opts["clip_grad_norm"]), warmup]  # the student's and the control's alike
        weights = f"mixup_alpha={opts['mixup_alpha']:g}" if loss_name == "function-matching" else f"alpha={alpha:g}"
        ctx.log(f"distill: {loss_name} from {type(teacher).__name__} ({count_params(teacher):,} params) into "
                f"{desc} ({count_params(student):,} params), {epochs} epoch(s), T={T:g}, {weights}"
                + ("; teacher logits cached" if cached else ""))
        with _rng(ctx, "train"):
            if loss_name == "function-matching":
                fm = self._fm_loss(teacher, ctx, opts)
                data = ctx.data.with_split("train", *ctx.data.tensors("train"))
                data.augment = False  # the loss makes its own views; no second crop from the bundle
                ctx.train(student, epochs=epochs, lr=lr, loss=fm, callbacks=[fm, *steady], data=data)
            elif cached:
                kd = CachedKDLoss(teacher_logits(teacher, ctx.data.tensors("train")[0], ctx.device), T, alpha)
                ctx.train(student, epochs=epochs, lr=lr, loss=kd, callbacks=[kd, *steady])
            else:
                ctx.train(student, epochs=epochs, lr=lr, loss=OnlineKDLoss(teacher, T, alpha), callbacks=steady)

        result = {
            "loss": loss_name, "student": desc, "epochs": epochs, "temperature": T,
            "teacher_accuracy": ctx.evaluate(teacher, "test"),
            "student_accuracy": ctx.evaluate(student, "test"),
            "teacher_params": count_params(teacher), "student_params": count_params(student),
            "teacher_logits_cached": cached, "warmup_steps": warmup.steps,
            "clip_grad_norm": opts["clip_grad_norm"],
        }
        result["param_ratio"] = result["teacher_params"] / max(result["student_params"], 1)
        if loss_name == "function-matching":
            result["mixup_alpha"] = opts["mixup_alpha"]
        else:
            result["alpha"] = alpha
        result.update(hints_info)
        chance = 1.0 / max(ctx.data.num_classes, 1)
        if result["student_accuracy"] < 1.5 * chance < result["teacher_accuracy"]:
            result["warning"] = (f"the student stayed near chance ({result['student_accuracy']:.3f}): with a confident "
                                 f"teacher, T^2-scaled KD gradients can kill a small student's units early in "
                                 f"training; lower lr or temperature, or warm up longer (warmup_epochs)")
            ctx.log(f"distill: WARNING {result['warning']}")

        if control is not None:
            control.to(ctx.device)
            with _rng(ctx, "train"):
                ctx.train(control, epochs=epochs, lr=lr, label=f"{ctx.stage}-labels-only", callbacks=steady)
            result["labels_only_accuracy"] = ctx.evaluate(control, "test")
            result["kd_uplift"] = result["student_accuracy"] - result["labels_only_accuracy"]
            ctx.log(f"distill: student {result['student_accuracy']:.4f} with {loss_name}, "
                    f"{result['labels_only_accuracy']:.4f} on labels alone (teacher {result['teacher_accuracy']:.4f})")
        ctx.record(**result)
        return student

    def collapse_hint(self, opts: dict, ctx) -> str:
        if opts.get("loss") == "function-matching":
            return ("likely cause: function matching needs long schedules (the paper trains for thousands of "
                    "epochs); try loss=hinton, or far more --epochs")
        return (f"likely cause: a student much smaller than its teacher, trained {ctx.results.get('epochs')} "
                f"epoch(s), or T^2-scaled KD gradients (T={opts.get('temperature')}) that switched off its units "
                f"in the first steps; try more --epochs, a lower --lr or temperature, or a longer warm-up "
                f"(--set warmup_epochs=2)")

    def _fm_loss(self, teacher, ctx, opts) -> FunctionMatchingLoss:
        data = ctx.data
        image = data.kind == "image"
        fill = (-data.mean / data.std) if image else None  # a black pixel after normalisation
        return FunctionMatchingLoss(teacher, opts["temperature"], opts["mixup_alpha"], image=image,
                                    flip=bool(data.flip), fill=fill, seed=ctx.seed, rank=ctx.dist.rank)

    def _hint_stage(self, student, teacher, ctx, opts, epochs, lr) -> dict:
        hint = opts["hint_layer"] or default_layer(student)
        guided = opts["guided_layer"] or default_layer(teacher)
        _check_layer(student, hint, "hint_layer", "student")
        _check_layer(teacher, guided, "guided_layer", "teacher")
        hint_epochs = opts["hint_epochs"] if opts["hint_epochs"] is not None else max(1, epochs // 4)
        x_all = ctx.data.tensors("train")[0]
        probe = x_all[:min(256, x_all.shape[0])].to(ctx.device)
        was = student.training
        student.eval()
        with torch.no_grad():
            s_feat = capture(student, hint, probe[:2])
            t_feat = capture(teacher, guided, probe[:2])
        student.train(was)
        regressor = HintRegressor(s_feat.shape[1:], t_feat.shape[1:]).to(ctx.device)
        lower = lower_params(student, hint, probe[:2])
        if not lower:
            raise UserError(f"distill: the output of hint_layer={hint!r} depends on no trainable parameter")
        net = HintNet(student, hint, regressor)
        sigma = target_std(teacher, guided, regressor, probe)
        before = _probe_mse(net, teacher, guided, probe, sigma)
        ctx.log(f"distill: hint stage, {hint} -> {guided} via {regressor.kind}, {hint_epochs} epoch(s), "
                f"{sum(p.numel() for p in lower):,} student params + regressor")
        with _rng(ctx, "hints"):
            history = ctx.train(net, epochs=hint_epochs, lr=lr, loss=hint_loss(teacher, guided, regressor, sigma),
                                params=lower + list(regressor.parameters()), label=f"{ctx.stage}-hints",
                                evaluate=False)
        after = _probe_mse(net, teacher, guided, probe, sigma)
        return {"hint_layer": hint, "guided_layer": guided, "hint_epochs": hint_epochs, "regressor": regressor.kind,
                "hint_target_std": sigma, "hint_mse": [h["train_loss"] for h in history],
                "hint_mse_before": before, "hint_mse_after": after}


@hookimpl
def register_methods(register):
    register(Distill())
