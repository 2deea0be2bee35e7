"""The JSON Schema of results.json, shipped with the package (DESIGN.md section 3).

``../shared/results.schema.json`` is the contract; this copy is what a user's clone and the
tests validate with, and a test keeps it satisfying the contract. Validation needs the
``jsonschema`` package (``pip install jsonschema``, or the ``test`` extra)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "results.schema.json"


@cache
def results_schema() -> dict[str, Any]:
    """The schema of results.json (JSON Schema 2020-12), as a dict."""
    return json.loads(resources.files("comparisons").joinpath(SCHEMA_FILE).read_text())


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` where ``results`` (a parsed results.json) breaks
    the schema; ImportError, saying what to install, where jsonschema is missing."""
    try:
        import jsonschema
    except ImportError:
        raise ImportError(
            "validating results.json needs jsonschema: pip install jsonschema"
        ) from None
    jsonschema.Draft202012Validator(results_schema()).validate(results)
