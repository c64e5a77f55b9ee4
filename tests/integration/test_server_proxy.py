"""The OpenAI-compatible proxy in process: the real ``openai`` client (AsyncOpenAI over
httpx.ASGITransport) against the sidecar, with the stand-in upstream on a loopback port."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from semcache.server.app import create_app
from tests._sidecar import ADMIN, TENANT_A, TENANT_B, auth, in_process, server_config
from tests.upstream import StandInUpstream

Q = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def upstream():
    with StandInUpstream(delay_seconds=0.05, chunk_delay_seconds=0.001) as up:
        yield up


@pytest.fixture
async def sidecar(tmp_path, upstream):
    upstream.reset()
    cfg = server_config(
        tmp_path,
        upstream_url=upstream.base_url,
        upstream_api_key="sk-upstream",
        prices={"stand-in-1": (1.0, 2.0)},
    )
    async with in_process(create_app(cfg)) as client:
        yield client


def oai(client: httpx.AsyncClient, token: str = TENANT_A) -> openai.AsyncOpenAI:
    """The official client, changed only in base_url (and its transport, to stay in process)."""
    return openai.AsyncOpenAI(
        base_url="http://sidecar/v1", api_key=token, http_client=client, max_retries=0
    )


async def create(client, messages=Q, token=TENANT_A, **kw):
    raw = await oai(client, token).chat.completions.with_raw_response.create(
        model="stand-in-1", messages=messages, **kw
    )
    return raw.headers, raw.parse()


async def test_miss_then_exact_then_semantic_hit(sidecar, upstream):
    h, first = await create(sidecar)
    assert h["x-semcache"] == "miss" and upstream.calls == 1
    assert first.choices[0].message.content == "answer 1: What is the capital of France?"
    h, again = await create(sidecar)
    assert (
        h["x-semcache"] == "hit"
        and h["x-semcache-kind"] == "exact"
        and h["x-semcache-similarity"] == "1.0000"
    )
    assert h["x-semcache-tier"] == "l1" and h["x-semcache-entry-id"]
    assert (
        again.choices[0].message.content == first.choices[0].message.content and upstream.calls == 1
    )
    h, near = await create(sidecar, [{"role": "user", "content": "what is the capital of france"}])
    assert h["x-semcache"] == "hit" and h["x-semcache-kind"] == "semantic"
    assert 0.8 <= float(h["x-semcache-similarity"]) < 1.0
    assert (
        near.choices[0].message.content == first.choices[0].message.content and upstream.calls == 1
    )
    # the upstream got the configured key's request, unchanged
    assert upstream.requests[0]["messages"] == Q and upstream.requests[0]["model"] == "stand-in-1"


async def test_scope_fields_split_the_cache(sidecar, upstream):
    await create(sidecar)
    h, _ = await create(sidecar, temperature=0.5)
    assert h["x-semcache"] == "miss"
    h, _ = await create(sidecar, [{"role": "system", "content": "Answer in French."}, *Q])
    assert h["x-semcache"] == "miss"
    assert upstream.calls == 3


async def test_streaming_miss_is_stored_and_replayed(sidecar, upstream):
    client = oai(sidecar)
    stream = await client.chat.completions.create(model="stand-in-1", messages=Q, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "answer 1: What is the capital of France?" and upstream.calls == 1
    # replayed as a stream...
    raw = await client.chat.completions.with_raw_response.create(
        model="stand-in-1", messages=Q, stream=True
    )
    assert raw.headers["x-semcache"] == "hit"
    replay = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert replay == text
    # ...and as a plain completion: a streamed and an unstreamed call share the entry
    h, plain = await create(sidecar)
    assert h["x-semcache"] == "hit" and plain.choices[0].message.content == text
    assert plain.choices[0].finish_reason == "stop"
    assert upstream.calls == 1


async def test_stream_with_usage_counts_saved_tokens(sidecar, upstream):
    client = oai(sidecar)
    stream = await client.chat.completions.create(
        model="stand-in-1", messages=Q, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    await create(sidecar)
    stats = (await sidecar.get("/v1/stats", headers=auth(ADMIN))).json()
    assert stats["saved_tokens"] == chunks[-1].usage.total_tokens
    assert stats["saved_cost_usd"] > 0


async def test_upstream_error_passes_through_and_is_not_stored(sidecar, upstream):
    bad = [{"role": "user", "content": "please fail [[error:429]]"}]
    for expected_calls in (1, 2):
        with pytest.raises(openai.RateLimitError) as exc:
            await create(sidecar, bad)
        assert exc.value.status_code == 429 and "stand-in error 429" in exc.value.message
        assert upstream.calls == expected_calls
    with pytest.raises(openai.InternalServerError):
        await create(sidecar, [{"role": "user", "content": "[[error:500]]"}])
    assert (await sidecar.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"] == []


async def test_streamed_upstream_error_status_passes_through(sidecar, upstream):
    with pytest.raises(openai.APIStatusError) as exc:
        await oai(sidecar).chat.completions.create(
            model="stand-in-1",
            messages=[{"role": "user", "content": "x [[error:503]]"}],
            stream=True,
        )
    assert exc.value.status_code == 503


async def test_uncacheable_answers_are_not_stored(sidecar, upstream):
    for marker in ("[[filter]]", "[[empty]]"):
        msgs = [{"role": "user", "content": f"question {marker}"}]
        await create(sidecar, msgs)
        h, _ = await create(sidecar, msgs)
        assert h["x-semcache"] == "miss", marker
    assert upstream.calls == 4


async def test_broken_stream_is_not_stored(sidecar, upstream):
    msgs = [{"role": "user", "content": "tell me a long story please [[cut]]"}]
    stream = await oai(sidecar).chat.completions.create(
        model="stand-in-1", messages=msgs, stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    entries = (await sidecar.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"]
    assert entries == []


async def test_concurrent_identical_misses_make_one_upstream_call(sidecar, upstream):
    upstream.delay_seconds = 0.3
    try:
        results = await asyncio.gather(*(create(sidecar) for _ in range(6)))
    finally:
        upstream.delay_seconds = 0.05
    assert upstream.calls == 1
    texts = {r.choices[0].message.content for _, r in results}
    assert texts == {"answer 1: What is the capital of France?"}
    assert sum(1 for h, _ in results if h.get("x-semcache-shared") == "1") == 5


async def test_tenants_never_share_answers(sidecar, upstream):
    await create(sidecar, token=TENANT_A)
    h, b = await create(sidecar, token=TENANT_B)
    assert h["x-semcache"] == "miss" and b.choices[0].message.content.startswith("answer 2")
    with pytest.raises(openai.AuthenticationError):
        await create(sidecar, token="not-a-token")


async def test_cache_control_headers(sidecar, upstream):
    no_store = {"cache-control": "no-store"}
    h, _ = await create(sidecar, extra_headers=no_store)
    assert h["x-semcache"] == "miss"
    h, _ = await create(sidecar)
    assert h["x-semcache"] == "miss" and upstream.calls == 2  # nothing was stored the first time
    h, _ = await create(sidecar, extra_headers={"cache-control": "no-cache"})
    assert h["x-semcache"] == "bypass" and upstream.calls == 3
    # tags and TTL for what is stored
    msgs = [{"role": "user", "content": "tagged question"}]
    await create(sidecar, msgs, extra_headers={"x-semcache-tags": "faq,v2", "x-semcache-ttl": "60"})
    entries = (
        await sidecar.get("/v1/entries", params={"tag": "faq"}, headers=auth(TENANT_A))
    ).json()["entries"]
    assert (
        len(entries) == 1
        and entries[0]["tags"] == ["faq", "v2"]
        and entries[0]["ttl_seconds_left"] <= 60
    )
    with pytest.raises(openai.UnprocessableEntityError):
        await create(sidecar, msgs, extra_headers={"x-semcache-ttl": "soon"})


async def test_invalid_request_is_422(sidecar, upstream):
    r = await sidecar.post("/v1/chat/completions", json={"model": "m"}, headers=auth(TENANT_A))
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.calls == 0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "stand-in-1", "messages": [{"role": "system", "content": "x"}]},
        {"model": "stand-in-1", "messages": [{"role": "user", "content": "  "}]},
        {
            "model": "stand-in-1",
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        {"model": "m" * 300, "messages": [{"role": "user", "content": "x"}]},
    ],
)
async def test_requests_the_cache_cannot_key_go_upstream_uncached(sidecar, upstream, body):
    for stream in (False, True):
        r = await sidecar.post(
            "/v1/chat/completions", json={**body, "stream": stream}, headers=auth(TENANT_A)
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-semcache"] == "bypass"
        assert ("data: [DONE]" in r.text) == stream
    assert upstream.calls == 2
    assert (await sidecar.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"] == []


async def test_requests_the_cache_cannot_key_are_a_miss_without_an_upstream(tmp_path):
    # a valid OpenAI request that cannot be cached is never in the cache: cache-only, it is
    # the documented 404 miss (not a 422 the schema does not announce), saying why
    async with in_process(create_app(server_config(tmp_path))) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "system", "content": "x"}]},
            headers=auth(TENANT_A),
        )
        assert r.status_code == 404, r.text
        assert r.headers["x-semcache"] == "bypass"
        error = r.json()["error"]
        assert error["type"] == "cache_miss" and "user turn" in error["message"]


async def test_no_upstream_means_cache_only(tmp_path):
    async with in_process(create_app(server_config(tmp_path))) as client:
        with pytest.raises(openai.NotFoundError) as exc:
            await create(client)
        assert "no upstream" in exc.value.message
        body = {
            "messages": Q,
            "model": "stand-in-1",
            "value": "Paris (stored through the JSON API)",
        }
        assert (
            await client.post("/v1/entries", json=body, headers=auth(TENANT_A))
        ).status_code == 201
        h, resp = await create(client)
        assert (
            h["x-semcache"] == "hit"
            and resp.choices[0].message.content == "Paris (stored through the JSON API)"
        )


async def test_upstream_key_configured_or_the_callers(tmp_path):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    cfg = server_config(
        tmp_path, upstream_url="http://upstream.test/v1", upstream_api_key="sk-configured"
    )
    async with in_process(
        create_app(cfg, upstream_transport=httpx.MockTransport(handler))
    ) as client:
        await create(client, [{"role": "user", "content": "one"}])
        assert seen[-1].headers["authorization"] == "Bearer sk-configured"
        assert str(seen[-1].url) == "http://upstream.test/v1/chat/completions"

    (tmp_path / "b").mkdir()
    cfg = server_config(tmp_path / "b", upstream_url="http://upstream.test/v1")
    async with in_process(
        create_app(cfg, upstream_transport=httpx.MockTransport(handler))
    ) as client:
        # the semcache token in Authorization is never sent upstream
        await create(client, [{"role": "user", "content": "two"}])
        assert "authorization" not in seen[-1].headers
        # with the token in X-Semcache-Token, Authorization carries the caller's own key
        own = openai.AsyncOpenAI(
            base_url="http://sidecar/v1",
            api_key="sk-callers-own",
            http_client=client,
            max_retries=0,
            default_headers={"x-semcache-token": TENANT_A},
        )
        await own.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "three"}]
        )
        assert seen[-1].headers["authorization"] == "Bearer sk-callers-own"


async def test_unreachable_upstream_is_502_and_nothing_stored(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    async with in_process(
        create_app(cfg, upstream_transport=httpx.MockTransport(handler))
    ) as client:
        with pytest.raises(openai.APIStatusError) as exc:
            await create(client)
        assert exc.value.status_code == 502
        assert (await client.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"] == []
        metrics = (await client.get("/metrics")).text
        assert 'semcache_upstream_requests_total{status="0"} 1.0' in metrics


def _credential_upstream(seen: list[str | None]) -> httpx.MockTransport:
    """An upstream that answers only the key ``sk-good``, slowly enough for calls to overlap."""

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        await asyncio.sleep(0.3)
        if request.headers.get("authorization") != "Bearer sk-good":
            return httpx.Response(401, json={"error": {"message": "Incorrect API key"}})
        body = json.loads(request.content)
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    return httpx.MockTransport(handler)


async def test_single_flight_never_shares_across_upstream_credentials(tmp_path):
    seen: list[str | None] = []
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_credential_upstream(seen))
    body = {"model": "m", "messages": [{"role": "user", "content": "q1"}]}
    bad = {"x-semcache-token": TENANT_A, "authorization": "Bearer sk-bad"}
    good = {"x-semcache-token": TENANT_A, "authorization": "Bearer sk-good"}
    async with in_process(app) as client:

        async def later(headers):
            await asyncio.sleep(0.05)
            return await client.post("/v1/chat/completions", json=body, headers=headers)

        r_bad, r_good = await asyncio.gather(
            client.post("/v1/chat/completions", json=body, headers=bad), later(good)
        )
        assert r_bad.status_code == 401
        assert r_good.status_code == 200 and "x-semcache-shared" not in r_good.headers
        assert sorted(seen, key=str) == ["Bearer sk-bad", "Bearer sk-good"]


async def test_single_flight_follower_of_a_failed_leader_asks_upstream_itself(tmp_path):
    seen: list[str | None] = []
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_credential_upstream(seen))
    body = {"model": "m", "messages": [{"role": "user", "content": "q2"}]}
    bad = {"x-semcache-token": TENANT_A, "authorization": "Bearer sk-bad"}
    async with in_process(app) as client:

        async def later():
            await asyncio.sleep(0.05)
            return await client.post("/v1/chat/completions", json=body, headers=bad)

        first, second = await asyncio.gather(
            client.post("/v1/chat/completions", json=body, headers=bad), later()
        )
        assert first.status_code == second.status_code == 401
        assert "x-semcache-shared" not in second.headers
        assert len(seen) == 2


async def test_non_finite_numbers_are_422_not_500(sidecar, upstream):
    for raw in (b"NaN", b"Infinity", b"-Infinity"):
        r = await sidecar.post(
            "/v1/chat/completions",
            content=b'{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":'
            + raw
            + b"}",
            headers={**auth(TENANT_A), "content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "finite" in r.json()["error"]["message"]
    assert upstream.calls == 0


async def test_unreadable_upstream_answer_is_passed_through_not_stored(tmp_path):
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(
            200, json={"object": "chat.completion", "choices": [{"message": "hi"}]}
        )

    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=httpx.MockTransport(handler))
    body = {"model": "m", "messages": [{"role": "user", "content": "weird one"}]}
    async with in_process(app) as client:
        for _ in range(2):
            r = await client.post("/v1/chat/completions", json=body, headers=auth(TENANT_A))
            assert r.status_code == 200 and r.headers["x-semcache"] == "miss"
            assert r.json()["choices"] == [{"message": "hi"}]
        assert len(calls) == 2
        assert (await client.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"] == []


async def test_streamed_replay_sends_usage_only_when_asked(sidecar, upstream):
    client = oai(sidecar)
    await create(sidecar)  # stored with its usage
    raw = await client.chat.completions.with_raw_response.create(
        model="stand-in-1", messages=Q, stream=True
    )
    assert raw.headers["x-semcache"] == "hit"
    chunks = [c async for c in raw.parse()]
    assert chunks and all(c.choices for c in chunks)  # a naive choices[0] never fails
    raw = await client.chat.completions.with_raw_response.create(
        model="stand-in-1", messages=Q, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-semcache"] == "hit"
    chunks = [c async for c in raw.parse()]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert upstream.calls == 1


def _sse_upstream(events: list[bytes], calls: list[int]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if not json.loads(request.content).get("stream"):
            return httpx.Response(
                200,
                json={
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "partial"},
                            "finish_reason": None,
                        }
                    ],
                },
            )
        return httpx.Response(
            200, content=b"".join(events), headers={"content-type": "text/event-stream"}
        )

    return httpx.MockTransport(handler)


async def test_answers_without_a_finish_reason_are_not_stored(tmp_path):
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "partial"},
                "finish_reason": None,
            }
        ],
    }
    events = [b"data: " + json.dumps(chunk).encode() + b"\n\n", b"data: [DONE]\n\n"]
    calls: list[int] = []
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_sse_upstream(events, calls))
    async with in_process(app) as client:
        for stream in (True, True, False, False):
            body = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": stream}
            r = await client.post("/v1/chat/completions", json=body, headers=auth(TENANT_A))
            assert r.status_code == 200 and r.headers["x-semcache"] == "miss"
            assert "partial" in r.text
        assert len(calls) == 4
        assert (await client.get("/v1/entries", headers=auth(TENANT_A))).json()["entries"] == []


async def test_a_semcache_token_in_authorization_never_goes_upstream(tmp_path):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json={"error": {"message": "nope"}})

    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=httpx.MockTransport(handler))
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    async with in_process(app) as client:
        # X-Semcache-Token names the caller; Authorization holds another semcache token
        for other in (TENANT_B, ADMIN, TENANT_A):
            headers = {"x-semcache-token": TENANT_A, "authorization": f"Bearer {other}"}
            await client.post("/v1/chat/completions", json=body, headers=headers)
            assert "authorization" not in seen[-1].headers
        # a key that is not ours is still the caller's own upstream key
        headers = {"x-semcache-token": TENANT_A, "authorization": "Bearer sk-own"}
        await client.post("/v1/chat/completions", json=body, headers=headers)
        assert seen[-1].headers["authorization"] == "Bearer sk-own"


# -- single flight for streamed requests -------------------------------------------------------


def _chunk(content: str | None, finish: str | None = None, *, role: bool = False) -> dict:
    delta: dict = {} if content is None else {"content": content}
    if role:
        delta["role"] = "assistant"
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class _Progress:
    """Counts requests that joined a proxy flight and calls that reached the upstream."""

    def __init__(self, n: int) -> None:
        self.n, self.joins, self.calls, self.ready = n, 0, [], asyncio.Event()

    def bump(self) -> None:
        # every request either joins a flight or (without single flight) calls upstream
        if self.joins >= self.n or len(self.calls) >= self.n:
            self.ready.set()


def _gated_sse_upstream(gate: asyncio.Event, progress: _Progress, *, cut_first: bool = False):
    """A streaming upstream that answers only once ``gate`` is set; the first call may break off."""

    async def handler(request: httpx.Request) -> httpx.Response:
        calls = progress.calls
        calls.append(json.loads(request.content))
        n = len(calls)
        progress.bump()
        await gate.wait()
        events = [_chunk("", role=True), _chunk(f"answer {n}"), _chunk(None, "stop")]
        raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
        if not (cut_first and n == 1):
            raw += b"data: [DONE]\n\n"  # without it the stream is broken: nothing is shared or stored
        return httpx.Response(200, content=raw, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def _count_joins(app, progress: _Progress) -> None:
    """Count the requests that join (or start) a flight in the proxy."""
    flights = app.state.sidecar.proxy.flights
    begin = flights.begin

    def counting(key):
        out = begin(key)
        progress.joins += 1
        progress.bump()
        return out

    flights.begin = counting


async def test_concurrent_identical_streamed_misses_make_one_upstream_call(tmp_path):
    gate, progress = asyncio.Event(), _Progress(3)
    calls = progress.calls
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_gated_sse_upstream(gate, progress))
    body = {"model": "m", "messages": [{"role": "user", "content": "stream me"}], "stream": True}
    async with in_process(app) as client:
        _count_joins(app, progress)
        requests = [
            asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=auth(TENANT_A)))
            for _ in range(3)
        ]
        await asyncio.wait_for(progress.ready.wait(), 10)
        gate.set()
        responses = await asyncio.wait_for(asyncio.gather(*requests), 10)
        assert len(calls) == 1
        for r in responses:
            assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
            assert "answer 1" in r.text
        assert sum(1 for r in responses if r.headers.get("x-semcache-shared") == "1") == 2
        # the answer was stored once and is now a hit
        r = await client.post("/v1/chat/completions", json=body, headers=auth(TENANT_A))
        assert r.headers["x-semcache"] == "hit" and len(calls) == 1


async def test_followers_of_a_broken_streamed_leader_start_over(tmp_path):
    gate, progress = asyncio.Event(), _Progress(3)
    calls = progress.calls
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_gated_sse_upstream(gate, progress, cut_first=True))
    body = {"model": "m", "messages": [{"role": "user", "content": "break me"}], "stream": True}
    async with in_process(app) as client:
        _count_joins(app, progress)
        requests = [
            asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=auth(TENANT_A)))
            for _ in range(3)
        ]
        await asyncio.wait_for(progress.ready.wait(), 10)
        gate.set()
        # nobody hangs: the leader's client sees the break in-band, the followers start over
        # and one of them leads a second call that they share
        responses = await asyncio.wait_for(asyncio.gather(*requests), 10)
        assert len(calls) == 2
        broken = [r for r in responses if "upstream stream failed" in r.text]
        good = [r for r in responses if "answer 2" in r.text]
        assert len(broken) == 1 and len(good) == 2


async def test_followers_of_a_streamed_leader_with_an_error_status_ask_upstream_themselves(tmp_path):
    seen: list[str | None] = []
    cfg = server_config(tmp_path, upstream_url="http://upstream.test/v1")
    app = create_app(cfg, upstream_transport=_credential_upstream(seen))
    body = {"model": "m", "messages": [{"role": "user", "content": "q3"}], "stream": True}
    bad = {"x-semcache-token": TENANT_A, "authorization": "Bearer sk-bad"}
    async with in_process(app) as client:
        rs = await asyncio.wait_for(
            asyncio.gather(
                *(client.post("/v1/chat/completions", json=body, headers=bad) for _ in range(2))
            ),
            10,
        )
        assert [r.status_code for r in rs] == [401, 401]
        assert all("x-semcache-shared" not in r.headers for r in rs) and len(seen) == 2


# -- the OpenAPI document of the proxy ------------------------------------------------------


async def test_the_chat_route_documents_both_answers_and_every_passed_status(sidecar):
    doc = (await sidecar.get("/openapi.json")).json()
    op = doc["paths"]["/v1/chat/completions"]["post"]
    ok = op["responses"]["200"]
    # the event stream first (a client reading one of them reads text, right for both)
    assert list(ok["content"]) == ["text/event-stream", "application/json"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletion"}
    assert "ChatCompletion" in doc["components"]["schemas"]
    event = ok["content"]["text/event-stream"]["itemSchema"]
    assert event["required"] == ["data"]
    assert "X-Semcache" in ok["headers"]
    passed = {"400", "401", "403", "404", "422", "429", "500", "502", "503", "504", "4XX", "5XX"}
    assert passed <= set(op["responses"])
    for code in passed:
        content = op["responses"][code]["content"]
        assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


async def test_answers_have_the_documented_content_types(sidecar, upstream):
    body = {"model": "stand-in-1", "messages": Q}
    streamed = await sidecar.post("/v1/chat/completions", json={**body, "stream": True}, headers=auth(TENANT_A))
    assert streamed.status_code == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    plain = await sidecar.post("/v1/chat/completions", json=body, headers=auth(TENANT_A))
    assert plain.headers["content-type"].startswith("application/json") and plain.json()["choices"]
    limited = await sidecar.post(
        "/v1/chat/completions",
        json={"model": "stand-in-1", "messages": [{"role": "user", "content": "[[error:429]]"}]},
        headers=auth(TENANT_A),
    )
    assert limited.status_code == 429 and limited.json()["error"]["message"] == "stand-in error 429"


async def test_models_are_forwarded_to_the_upstream(sidecar, upstream):
    r = await sidecar.get("/v1/models", headers=auth(TENANT_A))
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [{"id": "stand-in-1", "object": "model", "owned_by": "test"}]
    # the official client lists them too
    listed = await oai(sidecar).models.list()
    assert [m.id for m in listed.data] == ["stand-in-1"]
    assert (await sidecar.get("/v1/models")).status_code == 401


async def test_models_upstream_unreachable_is_a_502(tmp_path):
    cfg = server_config(tmp_path, upstream_url="http://127.0.0.1:9/v1")
    async with in_process(create_app(cfg)) as client:
        r = await client.get("/v1/models", headers=auth(TENANT_A))
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unreachable"
