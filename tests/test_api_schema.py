"""Schemathesis against the server's own OpenAPI schema: every route gets generated valid and invalid inputs
(query strings, path parameters, multipart uploads); no answer may be a 5xx, and every answer must match the
schema (status codes, content types, bodies and headers it documents).

The number of examples is bounded so that CI stays fast, and derandomized so that every run sends the same
requests; search harder locally with ``VSEKIT_SCHEMATHESIS_EXAMPLES=500``.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="vsekit serve needs the 'serve' extra")
schemathesis = pytest.importorskip("schemathesis", reason="the API schema test needs schemathesis (dev extra)")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from vsekit.serving import create_app  # noqa: E402

from .test_serve import scene_collection  # noqa: E402

EXAMPLES = int(os.environ.get("VSEKIT_SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def app(tmp_path_factory, learning_seed):
    scenes = scene_collection(tmp_path_factory, learning_seed)
    return create_app(scenes["index"])


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(app):
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Host": "localhost"})
    loaded.config.update(base_url="http://localhost")  # the server answers only the names it serves
    return loaded


def stated_outside_the_schema(case, response) -> bool:
    """The two rules of the API that its OpenAPI schema cannot state, so a request that the schema allows may still
    be refused (with a JSON 422 or 415 that the schema documents): ``GET /api/search`` takes exactly one of ``q``
    and ``item``, and ``POST /api/search`` needs an upload that decodes as an image."""
    if case.operation.label == "GET /api/search":
        query = case.query or {}
        return ("q" in query) == ("item" in query) and response.status_code == 422
    return case.operation.label == "POST /api/search" and response.status_code == 415


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_every_route_answers_as_its_schema_says(case):
    response = case.call()
    assert response.status_code < 500, (case.operation.label, response.status_code, response.text[:300])
    excluded = [positive_data_acceptance] if stated_outside_the_schema(case, response) else []
    case.validate_response(response, excluded_checks=excluded)
