"""The search methods, by the name the stages, results files and report use.

A method is one strategy module of this package that declares its ``METHOD``
(``pipeline.search.protocol.Method``), and its name in ``BUILT_IN`` below (a plugin or a test may
``register`` one of its own). Its ``<name>_search`` stage in ``dvc.yaml``, and in every study's, is
written from this registry (``python studies/sync_dvc.py``); ``study.methods`` in ``params.yaml``
says which of them a study runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.config.loading import invalid
from pipeline.search.protocol import Method

if TYPE_CHECKING:
    from pipeline.config.sections import StudyConfig

# The built-in methods, by their module in this package, in the report's row order.
BUILT_IN = ("ga", "grid", "random", "tpe", "pbt", "cmaes")

__all__ = ["METHODS", "Method", "get_method", "method_names", "own_training", "register", "study_methods",
           "table_method_names", "unregister"]  # fmt: skip

METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a search method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise KeyError(f"unknown search method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    """Registered methods in registration order (the report's row order)."""
    return list(METHODS)


def study_methods(config: StudyConfig, source: str = "params.yaml") -> list[str]:
    """The methods a study runs (``study.methods``; every registered one when null), in the report's
    row order. A name no method is registered by is a ``ConfigError`` naming the key: every search
    stage, the champion and the report ask this first (the config sections cannot read the registry,
    whose strategies import them)."""
    chosen = config.study.methods
    unknown = [name for name in chosen or [] if name not in METHODS]
    if unknown:
        raise invalid(source, [f"study.methods: unknown method(s) {unknown}; registered: {list(METHODS)} "
                               "(python -m pipeline methods)"])  # fmt: skip
    return [name for name in METHODS if chosen is None or name in chosen]


def own_training(method: str, config: StudyConfig) -> StudyConfig:
    """The config a method trains with: one whose proposals are intervals of longer trainings (PBT)
    schedules them itself, so no rungs are scheduled over them and no early stopping cuts an interval
    short (its next interval starts where this one was to end). Its search and its champion's replay
    both train so."""
    if not get_method(method).trains_in_intervals:
        return config
    return config.model_copy(update={
        "fidelity": config.fidelity.model_copy(update={"rungs": None}),
        "train": config.train.model_copy(update={"early_stopping": None}),
    })  # fmt: skip


def table_method_names() -> list[str]:
    """The methods a benchmark table (lookups, no training) can compare: all but those that train in intervals."""
    return [name for name, method in METHODS.items() if not method.trains_in_intervals]


for _module in BUILT_IN:
    register(importlib.import_module(f"pipeline.search.{_module}").METHOD)
