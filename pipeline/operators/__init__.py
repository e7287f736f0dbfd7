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
    "max_rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "target_diversity": (lambda v: 0 < v <= 1, "in (0, 1]"),
}

# Settings beside an operator's name that the GA loop reads itself rather than the operator:
# the crossover probability, and how the layer lists of architecture genomes are crossed.
LOOP_SETTINGS: dict[str, dict[str, tuple[Callable[[Any], bool], str, Any]]] = {
    "crossover": {
        "probability": (lambda v: _is_real(v) and 0 <= v <= 1, "a number in [0, 1]", 1.0),
        "layers": (lambda v: v in ("mix", "cut_splice"), "'mix' or 'cut_splice'", "mix"),
    },
}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def split_settings(role: str, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the operator's own settings, the loop's settings with defaults filled in) of ``ga.<role>``.

    Raises ``ValueError`` with ``args == (message, key)`` for a bad loop setting.
    """
    loop_rules = LOOP_SETTINGS.get(role, {})
    own = {k: v for k, v in settings.items() if k not in loop_rules}
    loop = {}
    for key, (check, wanted, default) in loop_rules.items():
        value = settings.get(key, default)
        if not check(value):
            raise ValueError(f"{key} must be {wanted}, got {value!r}", key)
        loop[key] = value
    return own, loop


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
    effective = {key: p.default for key, p in accepted.items()} | settings
    if "max_rate" in effective and effective["max_rate"] < effective["rate"]:
        raise ValueError(
            f"{name}.max_rate ({effective['max_rate']}) must be at least rate ({effective['rate']})", "max_rate"
        )
    return functools.partial(function, **settings)
