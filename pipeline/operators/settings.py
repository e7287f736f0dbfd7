"""How an operator declares its settings, beside its function (as pymoo's operators do).

``@declare(fraction=Real(0, 1, low_open=True))`` states each keyword-only setting's range; the
defaults stay in the function's signature. ``bind_operator`` and the config validate through the
declaration, so a new operator with a new setting needs no other file.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Real:
    """A number in ``[low, high]`` (either end open, either end absent); ``integer``: whole numbers only."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        if self.integer and self.high is None:
            return f"an integer {'>' if self.low_open else '>='} {self.low}"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'<' if self.high_open else '<='} {self.high}"

    def accepts(self, value: Any) -> bool:
        if not _is_real(value) or not math.isfinite(value):
            return False
        if self.integer and not float(value).is_integer():
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def convert(self, value: Any) -> Any:
        return int(value) if self.integer else value


@dataclass(frozen=True)
class Choice:
    """One of ``values``."""

    values: tuple[Any, ...]

    def describe(self) -> str:
        return " or ".join(repr(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def convert(self, value: Any) -> Any:
        return value


Setting = Real | Choice


def declare(
    *,
    combination_check: Callable[..., tuple[str, str] | None] | None = None,
    per_gene_rate: Callable[..., float] | None = None,
    **settings: Setting,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach the settings' ranges to an operator function.

    ``combination_check(**effective_settings)`` returns ``(message, key)`` for a bad combination,
    or None. ``per_gene_rate(diversity, **effective_settings)`` (mutation only) gives the per-gene rate the operator
    applies at a population diversity; it is logged per generation and used for architecture
    genomes' layer genes. Raises ``TypeError`` at import when the declaration and the function's
    keyword-only parameters disagree: the two cannot drift apart.
    """

    def attach(function: Callable[..., Any]) -> Callable[..., Any]:
        declared, signature = set(settings), set(keyword_defaults(function))
        if declared != signature:
            raise TypeError(
                f"{function.__name__}: declared settings {sorted(declared)} != keyword-only {sorted(signature)}"
            )
        function.settings = dict(settings)  # type: ignore[attr-defined]
        function.combination_check = combination_check  # type: ignore[attr-defined]
        function.per_gene_rate = per_gene_rate  # type: ignore[attr-defined]
        return function

    return attach


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """A function's keyword-only parameters and their defaults."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def declared_settings(function: Callable[..., Any]) -> Mapping[str, Setting]:
    return getattr(function, "settings", {})
