"""The params reference, generated from the config sections: every key of ``params.yaml`` with its
type, default, allowed range or names, and one line of meaning (the comment written beside the key
in ``sections.py``, or the comment block just above it). Nothing here is typed twice, so the
reference cannot drift from what the loader accepts: ``python -m pipeline params`` prints it, and
``docs/params.md`` is this module's output (a test compares them).
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pipeline.config import sections
from pipeline.config.sections import GeneConfig, OperatorConfig, StudyConfig

REQUIRED = "required"
DEFAULT_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


@dataclass(frozen=True)
class ParamRow:
    key: str  # dotted, as in params.yaml
    type: str
    default: str
    allowed: str
    meaning: str


def params_reference(params_file: Path = DEFAULT_PARAMS) -> list[ParamRow]:
    """Every key of a study's ``params.yaml``, in the sections' order (a nested section's keys
    after the section's own row). A key's meaning is the comment beside it in ``sections.py``, else
    the comment beside it in ``params_file`` (the repository's ``params.yaml``), else the section's
    docstring."""
    yaml_comments = _yaml_comments(params_file.read_text()) if params_file.is_file() else {}
    return [row if row.meaning else replace(row, meaning=yaml_comments.get(_plain_key(row.key), ""))
            for row in _rows(StudyConfig, "")]  # fmt: skip


def missing_meanings(params_file: Path = DEFAULT_PARAMS) -> list[str]:
    """Keys with no comment to explain them, in ``sections.py`` or ``params_file``."""
    return [row.key for row in params_reference(params_file) if not row.meaning]


def _plain_key(key: str) -> str:
    return key.split(".<name>")[0]


def _yaml_comments(text: str) -> dict[str, str]:
    """``dotted.key -> the comment on its line`` of a YAML file of nested mappings (as params.yaml is)."""
    comments: dict[str, str] = {}
    path: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = _YAML_KEY.match(line)
        if not match:
            continue
        indent, key, comment = len(match["indent"]), match["key"], (match["comment"] or "").strip()
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key))
        if comment:
            comments[".".join(k for _, k in path)] = comment
    return comments


_YAML_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?:[^#]*?)(?:#\s*(?P<comment>.*))?$")


def render_markdown(rows: list[ParamRow]) -> str:
    lines = [
        "# params.yaml reference",
        "",
        "Generated from `pipeline/config/sections.py` by `python -m pipeline params --markdown`; do not edit by hand.",
        "Every key is checked when `params.yaml` is read, before any training: a wrong one is refused with its",
        "dotted name. A gene (`space.genes.<name>`) is `{type: float, low, high, log}`, `{type: int, low, high, log}` or",
        "`{type: choice, values}`.",
        "",
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"`{row.key}`", row.type, row.default, row.allowed, row.meaning]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def render_text(rows: list[ParamRow]) -> str:
    width = max(len(row.key) for row in rows)
    lines = []
    for row in rows:
        facts = ", ".join(part for part in (row.type, f"default {row.default}", row.allowed) if part)
        lines.append(f"{row.key:<{width}}  {facts}\n{'':<{width}}  {row.meaning}")
    return "\n".join(lines) + "\n"


# -- walking the sections ----------------------------------------------------------------------------------------------


def _rows(model: type[BaseModel], prefix: str) -> typing.Iterator[ParamRow]:
    comments = _field_comments(model)
    for name, field in model.model_fields.items():
        if name == "type" and model in _GENE_MODELS:
            continue  # the gene's kind: in the key of its rows
        key = f"{prefix}{name}"
        annotation = field.annotation
        nested = _section_of(annotation)
        kind, allowed = _describe(annotation, field.metadata)
        meaning = comments.get(name, "") or (_first_sentence(nested.__doc__) if nested is not None else "")
        yield ParamRow(key, kind, _default(field), allowed, meaning)
        if nested is OperatorConfig:
            continue  # its settings are the named operator's (``pipeline.operators``), listed there
        if nested is not None:
            yield from _rows(nested, f"{key}.")
        elif name == "genes" and model is sections.SpaceConfig:
            for gene in _GENE_MODELS:
                (kind,) = typing.get_args(gene.model_fields["type"].annotation)
                for row in _rows(gene, f"{key}.<name>."):
                    yield replace(row, type=f"{kind} gene: {row.type}")


_GENE_MODELS = typing.get_args(typing.get_args(GeneConfig)[0])  # Annotated[Union[...], discriminator]


def _first_sentence(docstring: str | None) -> str:
    text = " ".join((docstring or "").split())
    head, dot, _ = text.partition(". ")
    return head + ("." if dot else "")


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The section model a key holds (alone or as ``| None``), if any."""
    candidates = [annotation, *typing.get_args(annotation)] if _is_union(annotation) else [annotation]
    for candidate in candidates:
        if inspect.isclass(candidate) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return REQUIRED
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return json.dumps(value)  # as YAML reads it: null, true, [1, 2], "name"


def _describe(annotation: Any, metadata: list[Any] = ()) -> tuple[str, str]:
    """(type, allowed) in words: ``int``, ``list of float``, ``null or ...``; ``> 0, <= 1000``,
    ``one of: a, b``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        inner, *extra = args
        return _describe(inner, [*metadata, *extra])
    bounds = _bounds(metadata)
    if _is_union(annotation):
        parts = [_describe(a) for a in args if a is not type(None)]
        kind = " or ".join(k for k, _ in parts)
        allowed = "; ".join(a for _, a in parts if a)
        if type(None) in args:
            kind = f"null or {kind}"
        return kind, _join(allowed, bounds)
    if origin is Literal:
        return "name" if all(isinstance(a, str) for a in args) else "value", _join(
            "one of: " + ", ".join(str(a) for a in args), bounds
        )
    if origin is list:
        item_kind, item_allowed = _describe(args[0])
        return f"list of {item_kind}", _join(f"each {item_allowed}" if item_allowed else "", bounds)
    if origin is dict:
        return "mapping of name to gene", bounds
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section", bounds
    kind = getattr(annotation, "__name__", str(annotation))
    if kind == "str":  # a length limit of a string counts characters
        bounds = bounds.replace("at least 1 item", "not empty").replace(" items", " characters")
    return kind, bounds


def _bounds(metadata: list[Any]) -> str:
    words, lengths = [], {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            words.append(_bounds(item.metadata))
            continue
        for kind, sign, attribute in ((Gt, ">", "gt"), (Ge, ">=", "ge"), (Lt, "<", "lt"), (Le, "<=", "le")):
            if isinstance(item, kind):
                words.append(f"{sign} {_number(getattr(item, attribute))}")
        if isinstance(item, MinLen):
            lengths["min"] = item.min_length
        if isinstance(item, MaxLen):
            lengths["max"] = item.max_length
        if getattr(item, "pattern", None):
            words.append(f"matching `{item.pattern}`")
    if lengths.get("min") is not None and lengths.get("min") == lengths.get("max"):
        words.append(f"exactly {lengths['min']} items")  # both ends equal: a fixed length
    else:
        if "min" in lengths:
            words.append(f"at least {lengths['min']} {'item' if lengths['min'] == 1 else 'items'}")
        if "max" in lengths:
            words.append(f"at most {lengths['max']} items")
    return ", ".join(w for w in words if w)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


# -- the comments beside each key -----------------------------------------------------------------------------------


def _comments_of(source: str) -> dict[int, str]:
    """A source's comments by line (1-based), tool markers (``# type: ignore[...]``, ``# fmt: skip``,
    ``# noqa``) left out: they are not meanings, the text after them is."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        words = [part.strip() for part in token.string.split("#")[1:]]
        meaning = " ".join(w for w in words if w and not w.startswith(_MARKERS))
        if meaning:
            comments[token.start[0]] = meaning
    return comments


_MARKERS = ("type:", "fmt:", "noqa")


@cache
def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's meaning: its trailing comment, else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(model))
    comments, lines = _comments_of(source), source.splitlines()
    node = ast.parse(source).body[0]
    meanings = {}
    for statement in node.body:
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        trailing = comments.get(statement.end_lineno or statement.lineno, "")
        above, line = [], statement.lineno - 1
        while line in comments and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        meanings[statement.target.id] = trailing or " ".join(above)
    return meanings
