"""Every hook a slimkit plugin can implement, in one place.

A plugin is a module (or object) with functions marked ``@slimkit.hookimpl`` whose
names match the specs below. slimkit finds plugins through the entry-point group
``slimkit``; the built-in methods in ``plugins/`` are registered the same way.

Registration hooks receive a ``register`` callback (the pattern of llm's
``register_models``) and return nothing: call ``register(...)`` once per thing you
contribute. Event hooks are called on every plugin that implements them, on the
rank-0 process only, and their return values are ignored.
"""
import pluggy

hookspec = pluggy.HookspecMarker("slimkit")


@hookspec
def register_methods(register):
    """Called once at start-up to collect compression methods.

    Call ``register(method)`` with an instance of a :class:`slimkit.api.Method`
    subclass. Method names must be unique across all plugins.
    """


@hookspec
def register_models(register):
    """Called once at start-up to collect model architectures.

    Call ``register(name, factory, summary)`` where ``factory(input_shape,
    num_classes, **options) -> torch.nn.Module``. ``input_shape`` is the shape of one
    example without the batch dimension, e.g. ``(1, 28, 28)``.
    """


@hookspec
def register_datasets(register):
    """Called once at start-up to collect data sets.

    Call ``register(name, loader, summary)`` where ``loader(argument, seed)`` returns
    a :class:`slimkit.data.RawData`; ``argument`` is the text after ``name:`` in
    ``--data name:argument`` (``None`` when absent). Loaders never download.
    """


@hookspec
def register_modules(register):
    """Called once at start-up to collect module classes that may appear in a saved model.

    Call ``register(cls)`` for each ``torch.nn.Module`` subclass your methods put into
    models (for example a factorized layer). A ``.slim`` file names its modules by
    these registered names, and loading never instantiates anything else.
    The class must be decorated with :func:`slimkit.nn.serializable` or be a
    supported torch built-in. A class that moved lists its former names in a
    ``slimkit_type_aliases`` class attribute so older files still load.
    """


@hookspec
def register_channel_rules(register):
    """Called once at start-up to collect how channels flow through your layer types.

    Structured pruning (:mod:`slimkit.nn.depgraph`) follows channels through every
    layer and op it has a rule for, and refuses a model where prunable channels reach
    anything else. Call ``register(LayerClass, propagate, resize)`` for a module type
    (it then stays one node when the model is traced), or ``register("op_name",
    propagate)`` for a function or tensor method. ``propagate(call)`` receives a
    :class:`slimkit.nn.depgraph.Call` and returns the output's
    :class:`~slimkit.nn.depgraph.Labels`, labelling the layer's tensors with
    ``call.param(name, dim, labels, role)``; ``resize(old_layer, tensors)`` returns a
    layer sized for the sliced ``tensors`` (name -> tensor), which the surgery then
    installs. :mod:`slimkit.nn.channel_rules` has the built-in rules as examples.
    """


@hookspec
def register_executors(register):
    """Called once at start-up to collect sweep executors (``slimkit sweep --executor NAME[:ARG]``).

    Call ``register(name, factory, summary)`` where ``factory(argument)`` returns a
    :class:`slimkit.sweep.executors.Executor`; ``argument`` is the text after ``name:``
    (``None`` when absent). A cluster scheduler (Slurm over submitit, say) is a plugin.
    """


@hookspec
def stage_started(stage, options, context):
    """Called when a pipeline stage starts (a baseline training or a method).

    ``stage`` is the stage name (``"baseline"`` or a method name), ``options`` its
    validated options, ``context`` the :class:`slimkit.api.StageContext`.
    """


@hookspec
def epoch_finished(stage, epoch, metrics):
    """Called at the end of every training epoch of every stage.

    ``metrics`` is a dict with at least ``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_accuracy``, ``lr`` and ``seconds``; methods may add their own keys
    (for example ``sparsity``).
    """


@hookspec
def stage_finished(stage, result):
    """Called when a stage ends, with its result dict (accuracy, seconds, extras)."""
