"""The published job schema (schemas/job.v1.schema.json) against the shared case list.

tests/data/jobs/cases.json holds jobs with the verdict the worker must give; the Rust test
`job::tests::shared_cases_agree_with_the_schema` checks the worker's parser against the same list,
so the schema the CMS team validates with and the worker cannot drift apart.
"""

import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas/job.v1.schema.json").read_text())
CASES = json.loads((ROOT / "tests/data/jobs/cases.json").read_text())


def test_the_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_schema_verdict_matches_the_worker(case):
    errors = list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(case["job"]))
    assert (not errors) == case["valid"], [e.message for e in errors]


def test_the_bundled_example_validates():
    job = json.loads((ROOT / "examples/job.json").read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(job)
