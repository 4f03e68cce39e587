"""The plugin author's API: what a compression method declares and what it receives.

A method is a :class:`Method` subclass with a ``name``, a one-line ``summary``, the
paper it implements, typed :class:`Option` declarations and an :meth:`Method.apply`
that takes a model and a :class:`StageContext` and returns the compressed model::

    from slimkit import hookimpl
    from slimkit.api import Method, Option

    class Halve(Method):
        name = "halve"
        summary = "Multiply every weight by a factor (a toy)."
        options = [Option("factor", float, 0.5, "scale", min=0.0, max=1.0)]

        def apply(self, model, ctx, opts):
            for p in model.parameters():
                p.data.mul_(opts["factor"])
            ctx.train(model, epochs=opts["epochs"], lr=opts["lr"])  # common options
            return model

    @hookimpl
    def register_methods(register):
        register(Halve())

Register the module under the entry-point group ``slimkit`` in your package's
metadata and slimkit finds it; docs/plugins.md walks through a whole package.

Every method also has the engine's :data:`COMMON_OPTIONS` (``epochs``, ``lr``): they are
declared here once, listed by ``slimkit methods`` and validated like the method's own,
and arrive in ``opts`` of every method. A method gives one a default of its own with
:attr:`Method.common_defaults`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from slimkit.config import DEFAULT_LR
from slimkit.errors import UserError

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Option:
    """A typed option of a method, set by the user as ``--set name=value``.

    ``choices`` limits a value to a set; ``min``/``max`` bound numbers (inclusive).
    ``default=None`` means "not set" (the method decides, e.g. the run's epochs);
    ``unset`` says what it then means, and is shown with the help while the default is None.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    unset: str | None = None

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        kind = f"an {name}" if name[0] in "aeiou" else f"a {name}"
        if self.min is not None and self.max is not None:
            return f"{kind} in [{self.min}, {self.max}]"
        if self.min is not None:
            return f"{kind} >= {self.min}"
        if self.max is not None:
            return f"{kind} <= {self.max}"
        return kind

    def parse(self, value: Any, method: str) -> Any:
        """Convert ``value`` (text from the command line, or a TOML value) and validate it."""
        where = f"option {method}.{self.name}={value!r}"
        if value is None:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                low = value.strip().lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                parsed = low in ("1", "true", "yes", "on")
            elif self.type is bool:
                if not isinstance(value, (bool, int)):
                    raise ValueError
                parsed = bool(value)
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                parsed = int(value)
            else:
                parsed = self.type(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{where} is invalid: expected {self.allowed()}") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):  # nan < min is False: check it by name
            raise UserError(f"{where} is invalid: expected a finite number, {self.allowed()}")
        if self.choices is not None and parsed not in self.choices:
            raise UserError(f"{where} is invalid: expected {self.allowed()}")
        if self.min is not None and parsed < self.min:
            raise UserError(f"{where} is out of range: expected {self.allowed()}")
        if self.max is not None and parsed > self.max:
            raise UserError(f"{where} is out of range: expected {self.allowed()}")
        return parsed

    def describe(self) -> dict:
        unset = f" (unset = {self.unset})" if self.default is None and self.unset else ""
        return {
            "name": self.name,
            "type": _TYPE_NAMES.get(self.type, self.type.__name__),
            "default": self.default,
            "help": self.help + unset,
            "allowed": self.allowed(),
        }


#: Options every method has, declared once by the engine (see :meth:`Method.all_options`).
#: Every built-in method trains, and so does nearly any other; one that does not ignores them.
COMMON_OPTIONS: tuple[Option, ...] = (
    Option("epochs", int, None, "training epochs of this stage", min=0, unset="the run's --epochs"),
    Option("lr", float, None, "learning rate of this stage", min=0.0,
           unset="a fifth of the run's learning rate: --lr, else the optimizer's default"),
)


class Method:
    """Base class of a compression method. Subclass it and register an instance.

    Class attributes: ``name`` (unique, used in ``--method``), ``summary`` (one line),
    ``paper`` (citation), ``options`` (list of :class:`Option`: the method's own; the
    engine adds :data:`COMMON_OPTIONS`), ``common_defaults`` (a default of this method's
    own for a common option, e.g. ``{"lr": 5e-4}``; unset ones mean the run's value) and
    ``common_unset`` (what an unset common option means for this method, when that is not
    the run's value, e.g. ``{"lr": "half the run's base rate"}``).
    """

    name: str = ""
    summary: str = ""
    paper: str = ""
    options: Sequence[Option] = ()
    common_defaults: Mapping[str, Any] = {}
    common_unset: Mapping[str, str] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in ("common_defaults", "common_unset"):
            unknown = set(getattr(cls, attr)) - {o.name for o in COMMON_OPTIONS}
            if unknown:  # at the plugin's import, which plugin loading reports
                raise TypeError(f"{cls.__name__}.{attr} names no common option: {', '.join(sorted(unknown))}")

    @classmethod
    def all_options(cls) -> list[Option]:
        """Every option of the method: its own :attr:`options`, then each of
        :data:`COMMON_OPTIONS` with the method's :attr:`common_defaults`. A method that
        declares an option of a common name itself keeps its own declaration."""
        own = list(cls.options)
        names = {o.name for o in own}
        common = [replace(o, default=cls.common_defaults.get(o.name, o.default),
                          unset=cls.common_unset.get(o.name, o.unset))
                  for o in COMMON_OPTIONS if o.name not in names]
        return own + common

    def check(self, model, opts: dict) -> None:
        """Raise :class:`slimkit.errors.UserError` if this method cannot apply to ``model``.

        Called for every stage before any training starts, so that a bad chain or grid
        fails early. The default accepts every model.
        """

    def apply(self, model, ctx: "StageContext", opts: dict):
        """Compress ``model`` and return the compressed model (it may be a new object)."""
        raise NotImplementedError

    # Optional: one layer at a time (``slimkit sensitivity``, ``allocation=sensitivity``).
    # A method that implements both hooks can be analysed layer by layer and given
    # per-layer budgets; the engine never needs to know how it compresses.
    def sensitivity_layers(self, model, opts: dict) -> dict[str, int] | None:
        """The layers this method can compress one at a time, as ``{name: weights}`` in
        forward order, ``weights`` being what a level is a fraction of (the layer's weight
        count). ``None`` (the default): the method has no per-layer levels."""
        return None

    def compress_layer(self, model, layer: str, level: float, opts: dict):
        """Compress only ``layer`` (a name from :meth:`sensitivity_layers`) to ``level`` in
        (0, 1), the fraction of the layer removed (``prune``: of its weights; ``lowrank``: of
        its rank), with no training; return the model. The engine passes a copy, so it may
        be changed in place."""
        raise NotImplementedError(f"method {self.name!r} cannot compress a single layer")

    def collapse_hint(self, opts: dict, ctx: "StageContext") -> str | None:
        """The likely cause of a collapse of this stage, and what to try, in one sentence; or None.

        Called after :meth:`apply` when the stage lost more accuracy than the run's
        collapse threshold (``RunConfig.collapse_threshold``, 5 points by default);
        ``ctx.results`` holds what the stage recorded. The engine shows the hint in
        red in the summary and records it in report.json's ``warnings``. The default
        has no method-specific hint (the engine then names generic causes).
        """
        return None

    def parse_options(self, raw: dict) -> dict:
        """Validate user-given options against :meth:`all_options`; fill in defaults."""
        known = {o.name: o for o in self.all_options()}
        for key in raw:
            if key not in known:
                allowed = ", ".join(sorted(known)) or "(none)"
                raise UserError(f"method {self.name!r} has no option {key!r}; its options are: {allowed}")
        return {name: (o.parse(raw[name], self.name) if name in raw else o.default) for name, o in known.items()}

    def describe(self) -> dict:
        """What ``slimkit methods`` shows; ``common`` marks the engine's options."""
        own, common = {o.name for o in self.options}, {o.name for o in COMMON_OPTIONS}
        return {
            "name": self.name,
            "summary": self.summary,
            "paper": self.paper,
            "options": [{**o.describe(), "common": o.name in common and o.name not in own}
                        for o in self.all_options()],
        }


class TrainCallback:
    """Hooks into the one training loop. Override what you need; all are no-ops.

    Order within a step: ``on_batch`` -> ``on_step_begin`` -> forward/loss -> backward ->
    ``after_backward`` (edit gradients, e.g. mask or group them) -> optimizer step ->
    ``after_step`` (edit weights, e.g. re-apply masks).

    ``step`` is the global optimizer step of this ``ctx.train`` call, counted from 0;
    after ``--resume`` it continues where the interrupted run stopped, so a schedule
    that is a function of ``step`` (and of state kept in the model's buffers) resumes
    exactly. In ``on_epoch_end``, setting ``metrics["checkpoint_ok"] = False`` keeps that
    epoch from being restored as the best one at the end (e.g. while a pruning schedule
    is still raising sparsity).
    """

    def on_train_begin(self, model, total_steps: int) -> None: ...

    def on_batch(self, model, step: int, indices) -> None:
        """``indices`` (int64, on the CPU) are the positions in the train split of this step's
        examples, in the order of the batch: the key to per-example data a loss keeps
        itself, such as cached teacher logits (the loss's targets are always the labels)."""

    def on_step_begin(self, model, step: int) -> None: ...

    def after_backward(self, model, step: int) -> None: ...

    def after_step(self, model, step: int) -> None: ...

    def on_epoch_end(self, model, epoch: int, metrics: dict) -> None:
        """May add keys to ``metrics`` (they go to metrics.jsonl and the plots)."""


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class StageContext:
    """What a method's :meth:`Method.apply` receives from the engine.

    Use :meth:`train` for every training a method needs (it is the one loop that
    baselines use too), :meth:`evaluate` for accuracies, :meth:`record` to put
    figures into this stage's entry of report.json.

    ``data`` is a :class:`slimkit.data.DataBundle`: ``input_shape`` (one example, no
    batch dimension), ``num_classes``, ``size(split)``, ``batches(split, batch_size,
    ...)``, ``tensors(split)``. Counting helpers for reports are public in
    :mod:`slimkit.models` (``count_params``, ``count_nonzero``, ``count_macs``). When
    ``dist.enabled``, ``torch.distributed`` is initialised before ``apply`` runs.
    """

    stage: str
    data: Any  # slimkit.data.DataBundle
    device: Any  # torch.device
    dist: DistInfo
    out_dir: Any  # pathlib.Path
    seed: int
    epochs: int
    lr: float | None
    batch_size: int
    optimizer: str
    teacher: Any = None  # the chain's input model (or --teacher), eval mode, frozen
    model_name: str = ""
    epochs_set: bool = True  # False: ``epochs`` is the engine's default, which stage_epochs may raise
    log: Callable[[str], None] = print
    _trainer: Any = None
    _registry: Any = None
    _budgets: Any = None  # the engine's per-layer allocation (slimkit.allocation.budgets_for_stage)
    results: dict = field(default_factory=dict)

    def train(self, model, *, epochs: int | None = None, lr: float | None = None, loss=None,
              callbacks: Sequence[TrainCallback] = (), params=None, optimizer: str | None = None,
              label: str | None = None, data=None, evaluate: bool = True) -> list[dict]:
        """Train ``model`` in place with the engine's loop; returns the per-epoch metrics.

        ``loss(model, inputs, targets) -> (loss_tensor, logits)`` replaces cross-entropy
        (``logits`` may be None when the loss has none, e.g. feature matching).
        ``params`` restricts the trained parameters (default: all with requires_grad).
        ``data`` replaces the bundle (e.g. a distillation set). The best epoch by
        validation accuracy is restored at the end when ``evaluate`` is True.
        """
        return self._trainer.fit(
            model, self, epochs=self.epochs if epochs is None else epochs, lr=lr, loss=loss,
            callbacks=callbacks, params=params, optimizer=optimizer or self.optimizer,
            label=label or self.stage, data=data or self.data, evaluate=evaluate,
        )

    def steps_per_epoch(self, data=None) -> int:
        """Optimizer steps of one epoch of :meth:`train` on ``data`` (default: the run's bundle): a
        method that needs a number of steps rather than of epochs sizes its epochs with this."""
        world = max(self.dist.world_size, 1)
        per_rank = max(1, self.batch_size // world)
        return max(1, math.ceil((data or self.data).size("train") / (per_rank * world)))

    def stage_epochs(self, epochs: int | None, min_steps: int = 0) -> int:
        """A stage's epochs: ``epochs`` when the method's option gives them, else the run's; when
        the user gave the run none (``epochs_set`` False), the default raised to at least
        ``min_steps`` optimizer steps on this data set (see :func:`epochs_for_steps`)."""
        if epochs is None and self.epochs_set:
            return self.epochs
        return epochs_for_steps(self.epochs, epochs, min_steps, self.steps_per_epoch())

    @property
    def base_lr(self) -> float:
        """The run's base learning rate: ``--lr``, else the optimizer's default (0.1 SGD, 1e-3 Adam).
        :meth:`train` with ``lr=None`` uses a fifth of it; a method may choose another fraction."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def evaluate(self, model, split: str = "test") -> float:
        """Top-1 accuracy (a fraction in [0, 1]) of ``model`` on ``split`` ('val' or 'test')."""
        return self._trainer.evaluate(model, self.data, split)

    def short_finetune(self, model, steps: int, lr: float | None = None):
        """``steps`` optimizer steps of training at a constant ``lr`` (None: a fifth of the base
        rate) in place, with no evaluation or checkpoint, the same batch order every call:
        NetAdapt's short-term fine-tuning of a proposal before it is measured."""
        return self._trainer.short_finetune(model, self.data, steps, lr, self.optimizer)

    def record(self, **values) -> None:
        """Add figures to this stage's entry in report.json (JSON-serialisable values)."""
        self.results.update(values)

    def build_model(self, name: str, **options):
        """Build a registered model for this run's input shape and classes (e.g. a student)."""
        return self._registry.build_model(name, self.data.input_shape, self.data.num_classes, **options).to(self.device)

    def layer_budgets(self, model, method: "Method", opts: dict, target: float, *,
                      sensitivity_file: str | None = None, reached=None, finetune_steps: int = 0,
                      finetune_lr: float | None = None) -> dict[str, float]:
        """Per-layer levels for ``method`` that remove at least ``target`` of the weights of
        its :meth:`Method.sensitivity_layers` with the least predicted accuracy loss
        (:mod:`slimkit.allocation`), from a sensitivity analysis of ``model`` on the
        validation split or from ``sensitivity_file`` (a sensitivity.json). The choice and
        the sensitivity go into this stage's report as ``allocation``. With ``reached``
        (``{layer: level} -> bool``, the method's own budget such as MACs) ``target`` is not
        used: the levels are AIMET's greedy selection, the smallest per-layer loss threshold
        whose levels meet ``reached``. ``finetune_steps`` > 0: every measured copy (and the
        uncompressed reference) is first fine-tuned for that many steps at ``finetune_lr``
        (:meth:`short_finetune`; NetAdapt's short-term fine-tuning)."""
        if self._budgets is None:
            raise UserError(f"stage {self.stage}: per-layer allocation is not available outside a compress run")
        return self._budgets(self, model, method, opts, target, sensitivity_file, reached,
                             finetune_steps=finetune_steps, finetune_lr=finetune_lr)

    def plot_path(self, name: str):
        """Where to write a figure; None on ranks other than 0 (only rank 0 writes files)."""
        return (self.out_dir / name) if self.dist.is_main else None


def epochs_for_steps(run_epochs: int, epochs: int | None, min_steps: int, per_epoch: int) -> int:
    """``epochs`` when given; else ``run_epochs`` raised to ``ceil(min_steps / per_epoch)``.

    A run of 0 epochs (no training asked for) stays at 0, as does ``min_steps`` 0.
    """
    if epochs is not None:
        return epochs
    if run_epochs <= 0 or min_steps <= 0:
        return run_epochs
    return max(run_epochs, math.ceil(min_steps / max(per_epoch, 1)))


def model_names() -> list[str]:
    """Names of every registered model (the zoo and plugins' models), for validating a
    method's options in :meth:`Method.check`, which runs before a context exists."""
    from slimkit.plugins import get_registry

    return sorted(get_registry().models)
