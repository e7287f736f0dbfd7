"""GA operators by role, in registries from the name used in ``params.yaml`` to the function.

Every operator is a pure function: it draws randomness only from the ``numpy.random.Generator`` it
is given and returns new genomes or indices, never changing its inputs. Its settings are
keyword-only, their ranges declared beside it (``@declare``), and bound once, validated where they
are bound (``bind_operator``). A new operator is a function in its role's module plus its entry in
that module's registry dict; nothing else changes.
"""

from __future__ import annotations

import difflib
import functools
import math
from typing import Any, Callable

from pipeline.operators.crossover import CROSSOVERS
from pipeline.operators.mutation import MUTATIONS
from pipeline.operators.selection import SELECTIONS
from pipeline.operators.settings import Choice, Real, _is_real, declared_settings, keyword_defaults

REGISTRIES: dict[str, dict[str, Callable[..., Any]]] = {
    "selection": SELECTIONS,
    "crossover": CROSSOVERS,
    "mutation": MUTATIONS,
}

# Settings beside an operator's name that the GA loop reads itself rather than the operator:
# the crossover probability, and how the layer lists of architecture genomes are crossed.
LOOP_SETTINGS: dict[str, dict[str, tuple[Real | Choice, Any]]] = {
    "crossover": {
        "probability": (Real(0, 1), 1.0),
        "layers": (Choice(("mix", "cut_splice")), "mix"),
    },
}


def split_settings(role: str, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the operator's own settings, the loop's settings with defaults filled in) of ``ga.<role>``.

    Raises ``ValueError`` with ``args == (message, key)`` for a bad loop setting.
    """
    loop_rules = LOOP_SETTINGS.get(role, {})
    own = {k: v for k, v in settings.items() if k not in loop_rules}
    loop = {}
    for key, (rule, default) in loop_rules.items():
        value = settings.get(key, default)
        if not rule.accepts(value):
            wanted = f"a number {rule.describe()}" if isinstance(rule, Real) else rule.describe()
            raise ValueError(f"{key} must be {wanted}, got {value!r}", key)
        loop[key] = value
    return own, loop


def bind_operator(role: str, name: str, settings: dict[str, Any]) -> Callable[..., Any]:
    """The operator ``name`` of ``role`` with its settings bound, checked against its declaration.

    Raises ``KeyError``/``TypeError``/``ValueError`` with ``args == (message, key)``, ``key`` being
    the offending key under ``ga.<role>`` (``name`` or the setting).
    """
    registry = REGISTRIES[role]
    if name not in registry:
        raise KeyError(f"unknown {role} operator {name!r}; choose one of {sorted(registry)}", "name")
    function = registry[name]
    declared = declared_settings(function)
    bound = {}
    for key, value in settings.items():
        if key not in declared:
            hint = f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, declared, n=1)) else ""
            raise TypeError(f"unknown setting {key!r} of {name}{hint}; {name} takes {sorted(declared) or 'none'}", key)
        rule = declared[key]
        if isinstance(rule, Real) and not _is_real(value):
            raise TypeError(f"{name}.{key}: expected a number, got {value!r}", key)
        if isinstance(rule, Real) and not math.isfinite(value):
            raise ValueError(f"{name}.{key} must be finite, got {value!r}", key)
        if not rule.accepts(value):
            raise ValueError(f"{name}.{key} must be {rule.describe()}, got {value!r}", key)
        bound[key] = rule.convert(value)
    check = getattr(function, "combination_check", None)
    if check is not None:
        problem = check(**(keyword_defaults(function) | bound))
        if problem is not None:
            message, key = problem
            raise ValueError(f"{name}.{message}", key)
    return functools.partial(function, **bound)
