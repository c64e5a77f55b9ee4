"""No input makes the sidecar answer 5xx: schemathesis generates requests for every operation of
the app's own OpenAPI document (schema-valid and schema-violating bodies, params and headers), as a
tenant and as the admin, and checks every answer."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from semcache.server.app import create_app
from semcache.server.config import ServerConfig
from tests._sidecar import ADMIN, TENANT_A, auth, server_config

#: Examples per operation, mode and token: enough to find the usual suspects, bounded for 2 cores.
EXAMPLES = 40

# the operations, read from the document itself (building an app does no I/O)
_PATHS = create_app(ServerConfig()).openapi()["paths"]
OPERATIONS = [(method.upper(), path) for path, item in _PATHS.items() for method in item]


def _upstream(request: httpx.Request) -> httpx.Response:
    """A well-behaved upstream: a completion for a request naming a model, a 400 otherwise."""
    try:
        model = str(json.loads(request.content)["model"])
    except (ValueError, KeyError, TypeError):
        return httpx.Response(
            400, json={"error": {"message": "bad request", "type": "invalid_request_error"}}
        )
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        },
    )


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("property")
    cfg = server_config(tmp, upstream_url="http://upstream.test/v1", max_body_bytes=64 * 1024)
    app = create_app(cfg, upstream_transport=httpx.MockTransport(_upstream))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    # schemathesis keeps an ASGI app's lifespan running for the whole process: close the cache now
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


@pytest.mark.parametrize("token", [TENANT_A, ADMIN], ids=["tenant", "admin"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_input_gives_a_server_error(api_schema, method: str, path: str, token: str) -> None:
    op = api_schema[path][method]
    strategies = [op.as_strategy(GenerationMode.POSITIVE)]
    try:
        strategies.append(op.as_strategy(GenerationMode.NEGATIVE))
    except Exception:  # noqa: BLE001,S110 - an operation with nothing to violate (no parameters, no body)
        pass

    @given(case=st.one_of(strategies))
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(case: schemathesis.Case) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        response = case.call(headers={**headers, **auth(token)})
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text

    check()
