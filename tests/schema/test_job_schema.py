"""The published schemas (schemas/*.v1.schema.json, generated from the worker's types by
`pva-worker schema`) checked with python-jsonschema, Draft 2020-12, with format assertion on.

tests/data/jobs/cases.json holds jobs with the verdict the worker must give; the Rust test
`job::validate::tests::shared_cases_agree_with_the_schema` checks the worker's parser against the
same list, so the schema the CMS team validates with and the worker cannot drift apart.
tests/data/events/examples.json holds one event of each kind, as the worker writes them (the Rust
test `job::schema::tests::the_event_examples_are_what_the_types_write` reads them back).
"""

import json
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {
    name: json.loads((ROOT / f"schemas/{name}.v1.schema.json").read_text())
    for name in ("job", "result", "event")
}
CASES = json.loads((ROOT / "tests/data/jobs/cases.json").read_text())
EVENTS = json.loads((ROOT / "tests/data/events/examples.json").read_text())


def validator(name):
    schema = SCHEMAS[name]
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_formats_are_asserted():
    # Without rfc3339-validator installed, jsonschema silently passes every date-time.
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers
    assert not checker.conforms("tomorrow", "date-time")
    assert checker.conforms("2030-01-01T00:00:00Z", "date-time")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_each_schema_is_a_valid_draft_2020_12_schema(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])
    assert SCHEMAS[name]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMAS[name]["$id"].endswith(f"/{name}.v1.schema.json")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_schema_verdict_matches_the_worker(case):
    errors = list(validator("job").iter_errors(case["job"]))
    assert (not errors) == case["valid"], [e.message for e in errors]


def test_the_bundled_examples_validate():
    for path in ("examples/job.json", "examples/demo-job.json"):
        job = json.loads((ROOT / path).read_text())
        validator("job").validate(job)


@pytest.mark.parametrize("event", EVENTS, ids=[e["event"] for e in EVENTS])
def test_the_event_examples_validate(event):
    validator("event").validate(event)
    if event["event"] in ("succeeded", "failed"):
        validator("result").validate(event)


@pytest.mark.parametrize(
    "patch",
    [
        {"event": "paused"},
        {"sequence": 0},
        {"delivery": "1"},
        {"timestamp": "yesterday"},
        {"schema_version": 2},
    ],
    ids=lambda p: next(iter(p)),
)
def test_a_malformed_event_is_refused(patch):
    event = {**EVENTS[0], **patch}
    assert list(validator("event").iter_errors(event))


def test_a_progress_event_needs_its_steps():
    progress = next(e for e in EVENTS if e["event"] == "progress")
    event = {k: v for k, v in progress.items() if k != "steps"}
    assert list(validator("event").iter_errors(event))
    assert list(validator("event").iter_errors({**progress, "stage": "upload"}))
