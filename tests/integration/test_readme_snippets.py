"""Every snippet in README.md runs as written.

Each ```python block runs in its own interpreter, in an empty temporary directory, offline
(``HF_HUB_OFFLINE=1``). A failure names the block's first line in README.md. An HTML
comment on the line before a block says what it needs:

* ``<!-- snippet: sidecar -->``: a running ``semcache serve``; the test starts one (real
  model, an OpenAI stand-in as its upstream) and passes ``SEMCACHE_SERVER`` and
  ``SEMCACHE_TOKEN``;
* ``<!-- snippet: openai -->``: the OpenAI API; ``OPENAI_BASE_URL`` points the client at
  the stand-in (``tests/upstream.py``), and the calls it made are counted: a line marked
  ``# no call`` must not reach it;
* ``<!-- snippet: servers -->``: Redis and PostgreSQL; their placeholder URLs are replaced
  by the test servers' (a fresh PostgreSQL schema);
* ``<!-- snippet: needs-network -->``: not run; such blocks are counted below, so a new
  one is a decision made here, never a block that slipped through.

The curl block runs against a real sidecar and its answer is compared field by field with
the JSON the README shows after it. Every ``semcache ...`` command line in a bash block
must parse (its subcommand and every option it names exist), and every script it runs
from this repository must be there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from semcache.cli.main import cli
from tests.upstream import StandInUpstream

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: What each marker means to this test; anything else is an error.
RUN_MARKERS = {None, "sidecar", "openai", "servers"}
SKIP_MARKERS = {"needs-network"}
#: How many python blocks are not run, by marker: change this with the README.
EXPECTED_SKIPS: dict[str, int] = {}

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*snippet:\s*([\w-]+)\s*-->\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block of README.md."""

    lang: str
    line: int  # 1-based line of its first line of code
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def snippets() -> list[Snippet]:
    """Every fenced block, in order (an unlabelled block has ``lang == ""``)."""
    out: list[Snippet] = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mm = _MARKER.match(prev.strip())
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        out.append(Snippet(lang, start + 1, "\n".join(lines[start:i]) + "\n", mm.group(1) if mm else None))
        i += 1
    return out


ALL = snippets()
PYTHON = [s for s in ALL if s.lang == "python"]
BASH = [s for s in ALL if s.lang == "bash"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "OPENAI_"))}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    return env


def _run_python(snippet: Snippet, cwd: Path, code: str | None = None, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code if code is not None else snippet.code],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, (
        f"the snippet at {snippet.where} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    )
    return proc.stdout


class Sidecar:
    """``python -m semcache serve`` on a free port with the embedded default and the real model."""

    TOKEN = "sc-readme-admin"

    def __init__(self, cwd: Path, upstream_url: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "semcache", "serve", "--port", "0", "--upstream-url", upstream_url],
            cwd=cwd,
            env=_env(SEMCACHE_ADMIN_TOKEN=self.TOKEN),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                assert self.proc.poll() is None, "serve exited:\n" + "".join(self.lines)
                continue
            self.lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url: str = m.group(1)
                return
        raise AssertionError("serve did not say where it listens:\n" + "".join(self.lines))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=30)


@pytest.fixture
def upstream() -> Iterator[StandInUpstream]:
    with StandInUpstream(delay_seconds=0.0, chunk_delay_seconds=0.0) as up:
        yield up


@pytest.fixture
def sidecar(tmp_path: Path, upstream: StandInUpstream) -> Iterator[Sidecar]:
    home = tmp_path / "sidecar"
    home.mkdir()
    sc = Sidecar(home, upstream.base_url)
    try:
        yield sc
    finally:
        sc.stop()


# -- python blocks ---------------------------------------------------------------------


def test_every_python_block_is_run_or_counted() -> None:
    markers = [s.marker for s in PYTHON]
    unknown = {m for m in markers if m not in RUN_MARKERS | SKIP_MARKERS}
    assert not unknown, f"unknown snippet markers {unknown}: known are {RUN_MARKERS | SKIP_MARKERS}"
    skipped = {m: markers.count(m) for m in SKIP_MARKERS if m in markers}
    assert skipped == EXPECTED_SKIPS, [s.where for s in PYTHON if s.marker in SKIP_MARKERS]
    assert len(PYTHON) >= 8  # the parser still finds the README's blocks


@pytest.mark.model
@pytest.mark.parametrize("snippet", [s for s in PYTHON if s.marker is None], ids=lambda s: s.where)
def test_python_block_runs(snippet: Snippet, tmp_path: Path) -> None:
    _run_python(snippet, tmp_path)


@pytest.mark.model
@pytest.mark.parametrize("snippet", [s for s in PYTHON if s.marker == "openai"], ids=lambda s: s.where)
def test_python_block_against_the_openai_stand_in(snippet: Snippet, tmp_path: Path, upstream: StandInUpstream) -> None:
    _run_python(snippet, tmp_path, OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY="sk-stand-in")
    calls = [ln for ln in snippet.code.splitlines() if re.search(r"\bcreate\(", ln)]
    expected = len([ln for ln in calls if "# no call" not in ln])
    assert upstream.calls == expected, f"{snippet.where}: {upstream.calls} upstream calls, expected {expected}"


@pytest.mark.model
@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.parametrize("snippet", [s for s in PYTHON if s.marker == "servers"], ids=lambda s: s.where)
def test_python_block_against_redis_and_postgresql(
    snippet: Snippet, tmp_path: Path, redis_url: str, pg_schema_url: str
) -> None:
    code = re.sub(r"redis://[\w.-]+:6379/0", redis_url, snippet.code)
    code = re.sub(r"postgresql\+psycopg://[\w.@-]+/semcache", pg_schema_url, code)
    assert code != snippet.code, f"{snippet.where}: no placeholder URL to replace"
    _run_python(snippet, tmp_path, code=code + "\ncache.close()\n")


@pytest.mark.model
@pytest.mark.parametrize("snippet", [s for s in PYTHON if s.marker == "sidecar"], ids=lambda s: s.where)
def test_python_block_against_a_sidecar(snippet: Snippet, tmp_path: Path, sidecar: Sidecar, upstream: StandInUpstream) -> None:
    out = _run_python(snippet, tmp_path, SEMCACHE_SERVER=sidecar.url, SEMCACHE_TOKEN=Sidecar.TOKEN)
    lines = out.splitlines()
    # the README's proxy flow: a miss that goes upstream, then a paraphrase streamed from the cache
    assert lines[0].startswith("miss"), f"{snippet.where}: {out}"
    assert lines[1] == "answer 1: How do I reset my password?", f"{snippet.where}: {out}"
    assert lines[2] == lines[1], f"{snippet.where}: the streamed paraphrase was not the cached answer: {out}"
    assert upstream.calls == 1


# -- the curl block and its answer -------------------------------------------------------


def _curl_and_answer() -> tuple[Snippet, Snippet]:
    for i, s in enumerate(ALL):
        if s.lang == "bash" and "curl" in s.code and "/v1/lookup" in s.code:
            answer = ALL[i + 1]
            assert answer.lang == "json", f"{s.where}: the curl block is not followed by its JSON answer"
            return s, answer
    raise AssertionError("README.md has no curl lookup block")


@pytest.mark.model
def test_the_curl_block_answers_what_the_readme_shows(sidecar: Sidecar) -> None:
    curl, answer = _curl_and_answer()
    host = sidecar.url.removeprefix("http://")
    script = curl.code.replace("localhost:8080", host)
    assert script != curl.code, f"{curl.where}: no localhost:8080 to point at the sidecar"
    proc = subprocess.run(
        ["bash", "-c", script],
        env=_env(SEMCACHE_TOKEN=Sidecar.TOKEN),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{curl.where}: {proc.stdout}{proc.stderr}"
    decoder = json.JSONDecoder()
    stored, end = decoder.raw_decode(proc.stdout)
    got, _ = decoder.raw_decode(proc.stdout[end:].lstrip())
    shown = json.loads(answer.code)
    assert "entry_id" in stored or "id" in stored, stored
    assert list(got) == list(shown), f"{answer.where}: the fields differ: {json.dumps(got)}"
    for field in ("key", "hit", "entry_id", "tier", "kind", "matched_prompt", "tags", "value"):
        assert got[field] == shown[field], f"{answer.where}: {field} is {got[field]!r}, shown {shown[field]!r}"
    for field in ("similarity", "verifier_score"):
        assert got[field] == pytest.approx(shown[field], abs=1e-4), f"{answer.where}: {field} is {got[field]}"
    assert 0 <= got["age_seconds"] < 60
    assert got["ttl_seconds_left"] == pytest.approx(shown["ttl_seconds_left"], abs=60)


# -- bash blocks: command lines parse, scripts exist --------------------------------------


def _command_lines(snippet: Snippet) -> list[list[str]]:
    """Each command of a bash block as words (comments dropped, continuations joined)."""
    text = snippet.code.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
            words.pop(0)
        if words:
            out.append(words)
    return out


SEMCACHE_LINES = [
    (s, words) for s in BASH for words in _command_lines(s) if words[0] == "semcache"
]


def test_the_readme_shows_semcache_commands() -> None:
    assert len(SEMCACHE_LINES) >= 5


@pytest.mark.parametrize(
    ("snippet", "words"), SEMCACHE_LINES, ids=[f"{s.where}:{' '.join(w[:3])}" for s, w in SEMCACHE_LINES]
)
def test_semcache_command_line_parses(snippet: Snippet, words: list[str]) -> None:
    # --help is eager: the words before it are parsed (unknown commands and options fail),
    # and nothing is run
    result = CliRunner().invoke(cli, [*words[1:], "--help"], prog_name="semcache")
    assert result.exit_code == 0, f"{snippet.where}: `{' '.join(words)}` does not parse:\n{result.output}"
    assert "Usage: semcache" in result.output


def test_scripts_named_in_bash_blocks_exist() -> None:
    named = {
        (s.where, w)
        for s in BASH
        for words in _command_lines(s)
        for w in words
        if re.match(r"^(scripts|benchmarks|examples|training|deploy)/[\w./-]+$", w)
    }
    assert named, "no repository paths found in the bash blocks"
    missing = sorted((where, w) for where, w in named if not (ROOT / w).exists())
    assert not missing, missing
