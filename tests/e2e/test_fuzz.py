"""A bounded schemathesis run against the real gateway (demo stack): valid and invalid requests generated from
the gateway's own OpenAPI, not one answered with a 5xx, every status one the document lists."""
from __future__ import annotations

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 20  # per mode (valid, invalid): a few hundred requests in all
SKIPPED = {"/metrics"}  # read by other tests; its text changes with every request


def operations(schema):
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in SKIPPED:
            yield operation


def fuzz(operation, mode, base_url: str, session: requests.Session) -> tuple[int, list[str]]:
    """Calls the operation with generated requests; (requests made, what went wrong)."""
    documented = {int(status) for status in operation.definition.raw["responses"] if status.isdigit()}
    failures, calls = [], 0

    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case):
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, session=session, timeout=120)
        if response.status_code >= 500 or response.status_code not in documented | {200}:
            failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}) → {response.status_code}: "
                            f"{response.text[:300]}\n  {case.as_curl_command()}")

    try:
        call()
    except Unsatisfiable:  # no parameters to make invalid (GET /health in negative mode)
        assert mode == GenerationMode.NEGATIVE
    return calls, failures


def test_fuzzed_requests_never_get_a_server_error(ingot_stack):
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{ingot_stack.base_url}/openapi.json")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {ingot_stack.api_key}"
    failures, calls = [], 0
    for operation in operations(schema):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            made, failed = fuzz(operation, mode, ingot_stack.base_url, session)
            calls, failures = calls + made, failures + failed
    assert calls >= 150, f"only {calls} requests were made"
    assert not failures, f"{len(failures)} of {calls} fuzzed requests:\n" + "\n".join(failures[:10])
