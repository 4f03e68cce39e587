"""``slimkit sweep GRID.toml``: every combination of a grid, each as a normal compress run.

A grid (TOML; docs/sweep.md has the full format) names models, data sets, seeds, one
method chain and lists of option values. The sweep runs the cartesian product: for
every (model, model options, data, seed) a *baseline cell* (the chain left empty: the
trained model as it is) and then one *method cell* per combination of the option
lists. Each cell is an ordinary :class:`slimkit.pipeline.Run` writing into
``OUT/cells/<cell-id>/`` (its ``report.json``, ``metrics.jsonl``, ``model.slim``...);
cells of the same model, data and seed share the cached baseline, which the baseline
cell trains first.

Everything is validated before any training: grid keys and types, non-empty lists,
models, data sets, method names, every cell's options (``Method.parse_options``) and
whether every method applies to the model (``Method.check`` on an untrained
instance). A mistake is a :class:`UserError` naming the cell and the key.

Resuming: a cell whose ``report.json`` is present (written last, by an atomic rename)
and whose ``cell.json`` matches the grid's settings is skipped; an unfinished cell
continues from its own checkpoints (the run is made with ``resume=True``); a cell
whose settings changed runs again from scratch. A cell that fails is recorded
(``status=failed``, the message in ``results.csv`` and the traceback in its
``error.txt``) and the sweep goes on; the command then ends with one line naming the
failed cells and exit status 2.
SIGINT/SIGTERM stop the sweep after writing the results gathered so far (exit 130);
running the same command again resumes it.

Outputs in ``OUT/``: ``results.csv`` (one row per cell), ``results.md`` (accuracy
tables: rows the first swept option, columns the other swept options; plus the rate
of convergence and a table of every cell), ``accuracy.png`` (bar per cell),
``convergence.png`` (validation accuracy per epoch of each cell's last stage, one
panel per combination of the swept options after the first, one line per value of
the first), ``accuracy_vs_nonzero_params.png`` and ``accuracy_vs_file_size.png`` (test accuracy
against the result's non-zero parameters and against its file's bytes).

Under torchrun every rank runs the same cells in the same order (rank 0's decision of
which cells to skip is broadcast); only rank 0 writes files. One process group serves
the whole sweep (``Run.execute(teardown=False)``): re-initialising it after a teardown
hangs under torchrun.

``--executor`` chooses where cells run (:mod:`~slimkit.sweep.executors`): ``local`` (this process,
in order: the above), ``local:N`` (worker processes), ``ray[:ADDRESS]`` or a plugin's executor
(hook ``register_executors``). A cell's result depends only on its spec
(:func:`slimkit.sweep.cell.run_cell`); with parallel executors the driver trains the baselines
before any method cell starts.

The package: :mod:`~slimkit.sweep.grid` (reading, checking, expanding a grid),
:mod:`~slimkit.sweep.run` (the driver: which cells, resume, failures, signals),
:mod:`~slimkit.sweep.cell` (one cell, anywhere), :mod:`~slimkit.sweep.executors` (where cells run),
:mod:`~slimkit.sweep.progress` (the grid's live bar or status lines),
:mod:`~slimkit.sweep.report` (results.csv, results.md) and :mod:`~slimkit.sweep.plots`
(the figures).
"""
from slimkit.measure import epochs_to_fraction
from slimkit.sweep.grid import GRID_KEYS, Cell, Grid, expand, read_grid, validate
from slimkit.sweep.plots import plots
from slimkit.sweep.report import CONVERGENCE_FRACTION, collect, last_stage_curve, markdown, write_results
from slimkit.sweep.run import run_sweep

__all__ = ["CONVERGENCE_FRACTION", "GRID_KEYS", "Cell", "Grid", "collect", "epochs_to_fraction", "expand",
           "last_stage_curve", "markdown", "plots", "read_grid", "run_sweep", "validate", "write_results"]
