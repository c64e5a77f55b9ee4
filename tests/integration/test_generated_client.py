"""A client generated from the sidecar's OpenAPI document works: ``openapi-python-client``
(offline, on the app's own ``/openapi.json``) generates a package with typed bodies and
responses for every operation, without a warning; the package is imported and its lookup,
store, explain and chat calls (streamed and not) run against a live sidecar (real uvicorn,
a stand-in upstream), an upstream's 429 included."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from semcache.server.app import create_app
from tests._sidecar import TENANT_A, SidecarThread, server_config
from tests.upstream import StandInUpstream

PACKAGE = "semcache_generated_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory):
    """The generated package (its directory on ``sys.path`` while the module runs)."""
    tmp: Path = tmp_path_factory.mktemp("generated")
    doc = tmp / "openapi.json"
    doc.write_text(json.dumps(create_app(server_config(tmp)).openapi()), encoding="utf-8")
    config = tmp / "config.json"  # JSON is YAML: no formatter run, a package name of our own
    config.write_text(json.dumps({"package_name_override": PACKAGE, "post_hooks": []}))
    out = tmp / "client"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(doc),
            "--config",
            str(config),
            "--meta",
            "none",
            "--output-path",
            str(out),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    sys.path.insert(0, str(out.parent))
    try:
        # --meta none writes the package itself at the output path
        out.rename(out.parent / PACKAGE)
        yield importlib.import_module(PACKAGE), out.parent / PACKAGE
    finally:
        sys.path.remove(str(out.parent))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _api(pkg: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{pkg.__name__}.api.{name}")


def _model(pkg: ModuleType, name: str) -> Any:
    return getattr(importlib.import_module(f"{pkg.__name__}.models"), name)


@pytest.mark.parametrize(
    ("module", "body"),
    [
        ("cache/lookup.py", "LookupRequest"),
        ("cache/store.py", "StoreRequest"),
        ("cache/explain.py", "ExplainRequest"),
        ("cache/feedback.py", "FeedbackRequest"),
        ("entries/invalidate.py", "InvalidateRequest"),
        ("openai/chat_completions.py", "ChatCompletionBody"),
    ],
)
def test_bodies_are_typed(generated, module: str, body: str) -> None:
    _, root = generated
    code = _code(root, module)
    assert "body:Any" not in code
    assert f"body:{body}," in code


def test_operations_have_readable_names(generated) -> None:
    pkg, _ = generated
    for module in (
        "cache.lookup",
        "cache.store",
        "cache.explain",
        "cache.feedback",
        "entries.invalidate",
        "entries.list_entries",
        "entries.get_entry",
        "entries.delete_entry",
        "admin.stats",
        "admin.rebuild_index",
        "admin.check_index",
        "openai.chat_completions",
        "openai.list_models",
        "health.healthz",
    ):
        assert hasattr(_api(pkg, module), "sync_detailed"), module


def _code(root: Path, module: str) -> str:
    """A generated module, without whitespace (it is not run through a formatter)."""
    return "".join((root / "api" / module).read_text(encoding="utf-8").split())


def test_responses_are_typed(generated) -> None:
    _, root = generated
    explain = _code(root, "cache/explain.py")
    assert "ExplainResponse.from_dict(response.json())" in explain
    stats = _code(root, "admin/stats.py")
    assert "StatsResponse.from_dict(response.json())" in stats
    chat = _code(root, "openai/chat_completions.py")
    # a 200 is read as text (right for the event stream and for JSON); errors as ErrorBody
    assert re.search(r"response_200=(cast\(Any,)?response\.text\)?return", chat), chat
    assert "response_429=ErrorBody.from_dict(response.json())" in chat


def test_a_generated_client_against_a_live_sidecar(generated, tmp_path: Path) -> None:
    pkg, _ = generated
    lookup, store, explain, chat = (
        _api(pkg, n) for n in ("cache.lookup", "cache.store", "cache.explain", "openai.chat_completions")
    )
    with StandInUpstream(delay_seconds=0, chunk_delay_seconds=0) as upstream:
        cfg = server_config(tmp_path, upstream_url=upstream.base_url)
        with SidecarThread(create_app(cfg)) as sc:
            client = pkg.AuthenticatedClient(
                base_url=sc.url, token=TENANT_A, raise_on_unexpected_status=True
            )
            prompt, model = "How do I reset my password?", "gpt-4o-mini"

            r = store.sync_detailed(
                client=client,
                body=_model(pkg, "StoreRequest").from_dict(
                    {"prompt": prompt, "value": "Click Forgot password.", "model": model, "tags": ["faq"]}
                ),
            )
            assert r.status_code == 201
            stored = r.parsed
            assert isinstance(stored, _model(pkg, "StoreResponse"))
            assert stored.namespace == "tenant-a"

            found = lookup.sync(
                client=client, body=_model(pkg, "LookupRequest").from_dict({"prompt": prompt, "model": model})
            )
            assert isinstance(found, _model(pkg, "LookupResponse"))
            assert found.hit is True and found.entry_id == stored.entry_id
            assert found.value == "Click Forgot password."

            # a body breaking the "exactly one of prompt and messages" rule: the documented 422
            bad = lookup.sync_detailed(
                client=client, body=_model(pkg, "LookupRequest").from_dict({"model": model})
            )
            assert bad.status_code == 422
            assert isinstance(bad.parsed, _model(pkg, "ErrorBody"))
            assert "exactly one" in bad.parsed.error.message

            why = explain.sync(
                client=client, body=_model(pkg, "ExplainRequest").from_dict({"prompt": prompt, "model": model})
            )
            assert isinstance(why, _model(pkg, "ExplainResponse"))
            assert why.decision.value == "hit" and why.entry_id == stored.entry_id

            body = {"model": "stand-in-1", "messages": [{"role": "user", "content": "hello there"}]}
            Chat = _model(pkg, "ChatCompletionBody")
            streamed = chat.sync_detailed(client=client, body=Chat.from_dict({**body, "stream": True}))
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            assert streamed.headers["x-semcache"] == "miss"
            events = [line for line in streamed.parsed.splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            text = "".join(
                (json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                for e in events[:-1]
            )
            assert text == "answer 1: hello there"

            again = chat.sync_detailed(client=client, body=Chat.from_dict(body))  # not streamed
            assert again.status_code == 200 and again.headers["x-semcache"] == "hit"
            completion = json.loads(again.parsed)
            assert completion["choices"][0]["message"]["content"] == "answer 1: hello there"
            assert upstream.calls == 1

            # an upstream's rate limit is a documented status: an ErrorBody, not UnexpectedStatus
            limited = chat.sync_detailed(
                client=client,
                body=Chat.from_dict(
                    {"model": "stand-in-1", "messages": [{"role": "user", "content": "[[error:429]]"}]}
                ),
            )
            assert limited.status_code == 429
            assert isinstance(limited.parsed, _model(pkg, "ErrorBody"))
            assert limited.parsed.error.message == "stand-in error 429"
