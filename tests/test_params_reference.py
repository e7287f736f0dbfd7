"""The params reference is generated from the config sections: every key has a type, a default,
its allowed values and a meaning; docs/params.md is its output; the command line prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pytest
import yaml
from pydantic import Field

from pipeline.__main__ import main
from pipeline.config.reference import _rows, missing_meanings, params_reference, render_markdown
from pipeline.config.sections import StudyConfig, _Section

ROOT = Path(__file__).resolve().parents[1]
OPERATORS = ("ga.selection.", "ga.crossover.", "ga.mutation.")  # their settings are the named operator's


def test_every_key_has_a_meaning():
    assert missing_meanings() == []


def test_docs_params_page_is_the_generated_reference():
    page = (ROOT / "docs" / "params.md").read_text()
    assert page == render_markdown(params_reference()), "run: python -m pipeline params --markdown > docs/params.md"


def flat_keys(mapping: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if prefix == "space." and key == "genes":
            for gene in value.values():
                keys |= {f"space.genes.<name>.{field}" for field in gene if field != "type"}
        elif isinstance(value, dict):
            keys |= flat_keys(value, f"{dotted}.")
    return keys


@pytest.mark.parametrize(
    "params_file",
    [
        "params.yaml",
        "studies/diabetes_regression/params.yaml",
        "studies/fashion_mnist_architecture/params.yaml",
        "examples/tabular/params.yaml",
    ],
)
def test_every_key_of_a_committed_params_file_is_in_the_reference(params_file):
    used = flat_keys(yaml.safe_load((ROOT / params_file).read_text()))
    listed = {row.key for row in params_reference()}
    assert {k for k in used if not k.startswith(OPERATORS)} - listed == set()


def test_the_reference_lists_every_field_of_every_section():
    def fields(model, prefix=""):
        for name, field in model.model_fields.items():
            yield f"{prefix}{name}"
            nested = field.annotation if isinstance(field.annotation, type) else None
            for candidate in getattr(field.annotation, "__args__", ()):
                if isinstance(candidate, type) and issubclass(candidate, _Section):
                    nested = candidate
            if nested is not None and issubclass(nested, _Section) and not f"{prefix}{name}.".startswith(OPERATORS):
                yield from fields(nested, f"{prefix}{name}.")

    assert set(fields(StudyConfig)) - {row.key for row in params_reference()} == set()


class Demo(_Section):
    """A section of a test."""

    rate: Annotated[float, Field(ge=0, le=1)] = 0.5  # share of something
    # Which way:
    # the longer explanation.
    mode: Literal["up", "down"] = "up"
    count: Annotated[int, Field(gt=0)]
    names: Annotated[list[str], Field(min_length=2, max_length=2)] = ["a", "b"]


def test_a_section_key_gets_its_type_default_range_and_comment():
    rows = {row.key: row for row in _rows(Demo, "demo.")}
    rate = rows["demo.rate"]
    assert (rate.type, rate.default, rate.allowed, rate.meaning) == ("float", "0.5", ">= 0, <= 1", "share of something")
    assert rows["demo.mode"].allowed == "one of: up, down"
    assert rows["demo.mode"].meaning == "Which way: the longer explanation."
    assert (rows["demo.count"].default, rows["demo.count"].allowed, rows["demo.count"].meaning) == (
        "required",
        "> 0",
        "",
    )
    assert rows["demo.names"].allowed == "exactly 2 items" and rows["demo.names"].default == '["a", "b"]'


def test_the_command_line_prints_the_keys_asked_for(capsys):
    main(["params", "fidelity.eta"])
    out = capsys.readouterr().out
    assert out.startswith("fidelity.eta") and "default 3, >= 2, <= 100" in out and "promoted" in out
    with pytest.raises(SystemExit):
        main(["params", "fidelity.nope"])
    assert "no params.yaml key starts with 'fidelity.nope'" in capsys.readouterr().err
