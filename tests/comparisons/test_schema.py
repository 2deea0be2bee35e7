"""The results.json schema ships inside the package (a clone validates without ../shared),
and that copy is the contract of DESIGN.md section 3, ``../shared/results.schema.json``, with
one section more: ``calibration``, where the contract allows other top-level keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from comparisons import results_schema, validate_results

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "results.schema.json"


def test_the_shipped_schema_is_the_contract():
    if not CONTRACT.is_file():  # a user's clone alone; CI checks ../shared out beside it
        pytest.skip(reason=f"the contract {CONTRACT} is not beside this clone")
    contract = json.loads(CONTRACT.read_text())
    shipped = json.loads(json.dumps(results_schema()))
    # The section zoo calibrate adds (issue 14): a key the contract leaves open.
    assert "calibration" not in contract["properties"]
    assert contract.get("additionalProperties", True) is not False
    assert shipped["properties"].pop("calibration")["type"] == "object"
    assert shipped == contract


def test_validate_results_rejects_what_the_schema_does():
    jsonschema.Draft202012Validator.check_schema(results_schema())
    with pytest.raises(jsonschema.ValidationError):
        validate_results({"schema": 1})


def test_every_method_name_a_model_offers_is_one_the_schema_accepts():
    from zoo import MODELS

    pattern = re.compile(results_schema()["properties"]["methods"]["propertyNames"]["pattern"])
    names = {name for spec in MODELS.values() for name in spec.method_names}
    assert {"nuts", "nuts_pyro"} <= names
    assert [n for n in sorted(names) if not pattern.match(n)] == []
