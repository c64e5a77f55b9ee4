"""A plain prompt and a one-turn chat are the same question: what the JSON API stores
for ``prompt`` answers the proxy's chat request (as an assistant message), and what the
proxy stored for a one-turn chat is found by ``/v1/lookup`` with the prompt."""

from __future__ import annotations

import openai

from tests._sidecar import TENANT_A, auth


def oai(client):
    return openai.AsyncOpenAI(base_url="http://sidecar/v1", api_key=TENANT_A, http_client=client, max_retries=0)


async def test_a_stored_prompt_answers_a_one_turn_chat(sidecar, upstream):
    body = {"prompt": "What is the capital of France?", "model": "stand-in-1", "value": "Paris."}
    assert (await sidecar.post("/v1/entries", json=body, headers=auth(TENANT_A))).status_code == 201
    raw = await oai(sidecar).chat.completions.with_raw_response.create(
        model="stand-in-1", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    done = raw.parse()
    assert raw.headers["x-semcache"] == "hit" and raw.headers["x-semcache-kind"] == "exact"
    assert done.choices[0].message.role == "assistant" and done.choices[0].message.content == "Paris."
    assert upstream.calls == 0
    # a system prompt makes it another question
    raw = await oai(sidecar).chat.completions.with_raw_response.create(
        model="stand-in-1",
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What is the capital of France?"}],
    )
    assert raw.headers["x-semcache"] == "miss" and upstream.calls == 1


async def test_a_one_turn_chat_stored_by_the_proxy_is_found_by_prompt(sidecar, upstream):
    await oai(sidecar).chat.completions.create(
        model="stand-in-1", messages=[{"role": "user", "content": "Name a prime number."}]
    )
    assert upstream.calls == 1
    hit = (
        await sidecar.post("/v1/lookup", json={"prompt": "Name a prime number.", "model": "stand-in-1"}, headers=auth(TENANT_A))
    ).json()
    assert hit["hit"] is True and hit["kind"] == "exact", hit
    assert hit["value"]["choices"][0]["message"]["content"] == "answer 1: Name a prime number."
