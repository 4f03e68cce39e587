"""Imported once by the fork server that ``local:N`` forks its workers from (never by anything
else): importing it does the slow part of a worker's start-up there, once, before any worker
exists, so that every worker is forked with it done.

It imports torch, the pipeline and the plotting module, loads the plugins and the grid's data sets
named in ``$SLIMKIT_SWEEP_PRELOAD`` (JSON ``[[data spec, seed], ...]``, set by the driver for the
fork server only): their modules (scikit-learn for ``digits``...) stay imported. The registry
itself is dropped again: each worker loads it anew with the driver's environment and import path
(the modules are imported by then, so that takes a fraction of a second). No torch operation
on more than one thread runs here: a process forked after one would hang in its first parallel
operation (GNU OpenMP is not fork-safe).
"""
import json
import os

import torch

torch.set_num_threads(1)  # no thread pool in the fork server: workers set their own number of threads

import slimkit.pipeline  # noqa: F401 - torch and the engine
import slimkit.plots  # noqa: F401 - matplotlib (Agg)
from slimkit.sweep.executors import PRELOAD_ENV


def _preload(data_sets: list) -> None:
    from slimkit.data import load_data
    from slimkit.plugins import get_registry, set_registry

    try:
        registry = get_registry()
        for data, seed in data_sets:
            load_data(data, registry.datasets, seed=seed)
    except Exception:  # noqa: BLE001 - a worker's cell meets the same error and reports it
        pass
    finally:
        set_registry(None)


_preload(json.loads(os.environ.get(PRELOAD_ENV) or "[]"))
