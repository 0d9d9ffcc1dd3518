"""README.md's table "Supported and refused parameters" is true: every example it lists is sent to a running
stack, and the outcome it states (supported: 200; refused: 400 naming the parameter) is checked. The table
is read from README.md, so changing what the gateway accepts means changing the table."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

HEADING = "### Supported and refused parameters"
ROUTES = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "Hello"}]},
          "/v1/completions": {"prompt": "Hello"}}
OUTCOMES = ("supported", "refused", "—")


@dataclass(frozen=True)
class Case:
    parameter: str  # the first parameter the row names: the one a refusal must name
    example: dict
    route: str
    outcome: str

    def __str__(self) -> str:
        return f"{self.route} {json.dumps(self.example)} {self.outcome}"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def readme_table() -> list[Case]:
    text = (ROOT / "README.md").read_text()
    assert HEADING in text, f"README.md lost its section {HEADING!r}"
    lines = [line for line in text.split(HEADING, 1)[1].splitlines() if line.strip()]
    table = []
    for line in lines[next(i for i, line in enumerate(lines) if line.startswith("|")):]:
        if not line.startswith("|"):
            break
        table.append(cells(line))
    header, rows = table[0], table[2:]
    routes = [name.strip("`") for name in header[2:4]]
    assert header[:2] == ["parameter", "example"] and routes == list(ROUTES), header
    cases = []
    for row in rows:
        parameter = re.findall(r"`([^`]+)`", row[0])[0]
        example = json.loads(row[1].strip("`"))
        for route, outcome in zip(routes, row[2:4], strict=True):
            assert outcome in OUTCOMES, f"{row[0]}: {outcome!r} is none of {OUTCOMES}"
            if outcome != "—":
                cases.append(Case(parameter, example, route, outcome))
    return cases


CASES = readme_table()


def test_the_table_covers_the_refusals_and_both_routes():
    assert {case.outcome for case in CASES} == {"supported", "refused"}
    assert {case.route for case in CASES} == set(ROUTES)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_gateway_does_what_the_readme_says(ingot_stack, case: Case):
    body = {"model": ingot_stack.model, "max_tokens": 4, **ROUTES[case.route], **case.example}
    headers = {"Authorization": f"Bearer {ingot_stack.api_key}"}
    with httpx.stream("POST", f"{ingot_stack.base_url}{case.route}", json=body, headers=headers,
                      timeout=120) as response:
        content = response.read().decode()
    if case.outcome == "supported":
        assert response.status_code == 200, content
        if body.get("stream"):
            assert content.rstrip().endswith("data: [DONE]"), content
        else:
            assert json.loads(content)["choices"], content
    else:
        assert response.status_code == 400, content
        error = json.loads(content)["error"]
        assert error["param"] == case.parameter and error["type"] == "invalid_request_error", error
