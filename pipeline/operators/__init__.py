"""GA operators by role, in registries from the name used in ``params.yaml`` to the function.

Every operator is a pure function: it draws randomness only from the ``numpy.random.Generator`` it
is given and returns new genomes or indices, never changing its inputs. Settings are keyword-only
and bound once, validated where they are bound (``bind_operator``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import numbers
from typing import Any, Callable

from pipeline.operators.crossover import CROSSOVERS
from pipeline.operators.mutation import MUTATIONS
from pipeline.operators.selection import SELECTIONS

REGISTRIES: dict[str, dict[str, Callable[..., Any]]] = {
    "selection": SELECTIONS,
    "crossover": CROSSOVERS,
    "mutation": MUTATIONS,
}

# Range checks shared by every operator that takes a setting of this name.
_SETTING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "swap_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "size": (lambda v: v >= 2 and float(v).is_integer(), "an integer >= 2"),
    "alpha": (lambda v: v >= 0, ">= 0"),
    "sigma": (lambda v: v > 0, "> 0"),
}


def bind_operator(role: str, name: str, settings: dict[str, Any]) -> Callable[..., Any]:
    """The operator ``name`` of ``role`` with its settings bound.

    Raises ``KeyError``/``TypeError``/``ValueError`` with ``args == (message, key)``, ``key`` being
    the offending key under ``ga.<role>`` (``name`` or the setting).
    """
    registry = REGISTRIES[role]
    if name not in registry:
        raise KeyError(f"unknown {role} operator {name!r}; choose one of {sorted(registry)}", "name")
    function = registry[name]
    accepted = {
        p.name: p for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY
    }
    for key, value in settings.items():
        if key not in accepted:
            hint = f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, accepted, n=1)) else ""
            raise TypeError(f"unknown setting {key!r} of {name}{hint}; {name} takes {sorted(accepted) or 'none'}", key)
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name}.{key}: expected a number, got {value!r}", key)
        if not math.isfinite(value):
            raise ValueError(f"{name}.{key} must be finite, got {value!r}", key)
        check, wanted = _SETTING_RANGES[key]
        if not check(value):
            raise ValueError(f"{name}.{key} must be {wanted}, got {value!r}", key)
    if "size" in settings:
        settings = {**settings, "size": int(settings["size"])}
    return functools.partial(function, **settings)
