"""Labels from the LLM itself: a sample of semantic hits is asked of the LLM again.

With ``Policy.audit_rate > 0``, the decorator and the sidecar's proxy pick each
semantic hit with that probability. The caller is answered from the cache at once;
in the background the same request goes to the LLM (the wrapped function, or the
upstream with the caller's own credentials), the fresh answer is compared with the
cached one by the cache's pair verifier (``verifier.score([(fresh, cached)])``, both
texts cut to :data:`MAX_AUDIT_CHARS`), and the outcome is kept as a feedback label
with ``source="llm"`` (:func:`semcache.feedback.load_labels` returns it): correct when
the score reaches ``Policy.audit_agreement`` (0.5), else wrong. The fresh answer is
never stored: the cached entry stays as it was.

This is a **heuristic**. The verifier was trained to tell whether two *questions* ask
the same thing; two good answers to one question may be worded differently (or an LLM
sampled at a temperature may answer differently twice), so a disagreement is evidence
of a false hit, not proof. That is why a disagreement is only a label: the pairing is
not blocked and nothing is invalidated unless ``Policy.audit_block=True``, when it
blocks the pairing exactly as a user's wrong report does.

A cache without a verifier cannot compare answers: its audits are counted as
``unjudged`` and keep no label.

Bounds: at most ``Policy.audit_concurrency`` (4) audits run at once, each in a daemon
thread of its own (sync) or as a task on the caller's event loop (async); a hit
sampled while that many run is not audited and is counted as ``dropped``. An audit
never raises into the caller: a failing LLM call, an unusable answer (one that would
not be cached), a failing verifier or label store is counted as ``failed`` and logged
(at most once a minute). ``stats()["audits"]`` (:func:`semcache.stats.audit_report`) and Prometheus carry the counts.

Cost: each audit is one full LLM call, so the extra LLM spend is about
``audit_rate × semantic hit rate × calls``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .keys import Request
from .types import Hit

if TYPE_CHECKING:
    from .core import Core
    from .feedback import Feedback

__all__ = ["MAX_AUDIT_CHARS", "Auditor", "clean_text"]

log = logging.getLogger("semcache")

#: The longest text of an answer the verifier compares (the rest is cut off): the
#: verifier reads a few hundred tokens, and the start of an answer says most.
MAX_AUDIT_CHARS = 2_000
#: A failing audit is logged at most this often (each one is counted).
_LOG_EVERY_SECONDS = 60.0

FreshSync = Callable[[], str]
FreshAsync = Callable[[], Awaitable[str]]


def clean_text(text: Any) -> str:
    """``text`` as the verifier takes it: a string with no NUL or lone surrogate, stripped
    and cut to :data:`MAX_AUDIT_CHARS` characters."""
    raw = text if isinstance(text, str) else str(text)
    clean = raw.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return clean.strip()[:MAX_AUDIT_CHARS].strip()


class Auditor:
    """The audits of one cache (``cache.audits``): sampling, the bound, judging, recording.

    ``sampler`` is a function returning a float in [0, 1) (default: ``random.random`` of
    a private :class:`random.Random`); a hit is audited when it returns less than
    ``Policy.audit_rate``. Replace it to make sampling deterministic, e.g.
    ``cache.audits.sampler = random.Random(7).random``.
    """

    def __init__(self, core: Core, feedback: Feedback) -> None:
        policy = core.config.policy
        self.core = core
        self.feedback = feedback
        self.rate = float(policy.audit_rate)
        self.agreement = float(policy.audit_agreement)
        self.block = bool(policy.audit_block)
        self.max_running = int(policy.audit_concurrency)
        self.sampler: Callable[[], float] = random.Random().random
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged = -float("inf")

    @property
    def enabled(self) -> bool:
        """Whether any hit is audited (``Policy.audit_rate > 0``)."""
        return self.rate > 0.0

    @property
    def running(self) -> int:
        """Audits started and not yet finished."""
        with self._cond:
            return self._running

    # -- choosing --------------------------------------------------------------
    def wants(self, hit: Hit | None) -> bool:
        """Whether this hit is to be audited: a semantic hit, sampled at ``audit_rate``."""
        if self.rate <= 0.0 or self._closed or hit is None or hit.kind != "semantic":
            return False
        try:
            return float(self.sampler()) < self.rate
        except Exception as exc:  # noqa: BLE001 - a broken sampler must not break a hit
            self._failed("the sampler", exc, count=False)
            return False

    def _reserve(self) -> bool:
        with self._cond:
            if self._closed or self._running >= self.max_running:
                reserved = False
            else:
                self._running += 1
                reserved = True
        self.core.stats.inc("audits_started" if reserved else "audits_dropped")
        return reserved

    def _release(self) -> None:
        with self._cond:
            self._running -= 1
            if self._running <= 0:
                self._cond.notify_all()

    # -- starting ----------------------------------------------------------------
    def submit(self, hit: Hit, request: Request, fresh: FreshSync, cached_text: str) -> bool:
        """Audit a hit in a worker thread: ``fresh()`` asks the LLM and returns the text
        of its answer (raising when it has no usable one), which is compared with
        ``cached_text``. Returns at once: whether the audit started. Never raises."""
        if not self._reserve():
            return False
        try:
            # a daemon thread per audit (at most max_running of them): a slow LLM call
            # never holds up the process's exit
            ctx = contextvars.copy_context()
            threading.Thread(
                target=ctx.run, args=(self._run, hit, request, fresh, cached_text), name="semcache-audit", daemon=True
            ).start()
        except Exception as exc:  # noqa: BLE001 - no thread could be started
            self._release()
            self._failed("starting the audit", exc)
            return False
        return True

    def submit_async(self, hit: Hit, request: Request, fresh: FreshAsync, cached_text: str) -> bool:
        """Audit a hit in a task on the running event loop: ``await fresh()`` asks the
        LLM; the comparison and the label run in a worker thread. Returns at once:
        whether the audit started. Never raises."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if not self._reserve():
            return False
        try:
            task = loop.create_task(self._arun(hit, request, fresh, cached_text), name="semcache-audit")
        except Exception as exc:  # noqa: BLE001 - a closing loop
            self._release()
            self._failed("starting the audit", exc)
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _run(self, hit: Hit, request: Request, fresh: FreshSync, cached_text: str) -> None:
        try:
            try:
                text = fresh()
            except Exception as exc:  # noqa: BLE001 - the caller already has its answer
                self._failed("the LLM call", exc)
                return
            self.judge(hit, request, text, cached_text)
        finally:
            self._release()

    async def _arun(self, hit: Hit, request: Request, fresh: FreshAsync, cached_text: str) -> None:
        try:
            try:
                text = await fresh()
            except Exception as exc:  # noqa: BLE001 - the caller already has its answer
                self._failed("the LLM call", exc)
                return
            await asyncio.to_thread(self.judge, hit, request, text, cached_text)
        finally:
            self._release()

    # -- judging -----------------------------------------------------------------
    def judge(self, hit: Hit, request: Request, fresh_text: str, cached_text: str) -> bool | None:
        """Compare a fresh answer with the cached one and keep the label (blocking).

        Returns whether they agreed, or ``None`` when nothing was recorded (no
        verifier, the cache closed, or a failure, each counted). Never raises.
        """
        core = self.core
        if self._closed:
            core.stats.inc("audits_dropped")
            return None
        fresh, cached = clean_text(fresh_text), clean_text(cached_text)
        if not fresh or not cached:
            self._failed("comparing", ValueError("an answer has no text to compare"))
            return None
        if core.verifier is None:
            core.stats.inc("audits_unjudged")
            return None
        try:
            score = float(core.verify_raw([(fresh, cached)])[0])
        except Exception as exc:  # noqa: BLE001 - counted, never raised
            self._failed("the verifier", exc)
            return None
        agreed = score >= self.agreement
        try:
            self.feedback.report(
                hit,
                agreed,
                prompt=request.text,
                messages=None,
                entry_id=None,
                model=None,
                params=None,
                namespace=None,
                source="llm",
                block=self.block,
            )
        except Exception as exc:  # noqa: BLE001 - counted, never raised
            self._failed("recording the label", exc)
            return None
        core.stats.inc("audits_agreed" if agreed else "audits_disagreed")
        log.debug("audit of entry %s: answers %s (score %.3f)", hit.key, "agree" if agreed else "disagree", score)
        return agreed

    def _failed(self, what: str, exc: BaseException, *, count: bool = True) -> None:
        if count:
            self.core.stats.inc("audits_failed")
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_SECONDS:
            self._logged = now
            log.warning("an audit of a semantic hit failed in %s: %s: %s", what, type(exc).__name__, exc)

    # -- waiting and closing -------------------------------------------------------
    def join(self, timeout: float | None = None) -> bool:
        """Wait until no audit is running (at most ``timeout`` seconds); return whether
        none is. Blocking: from async code, ``await cache.audits.ajoin()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    async def ajoin(self, timeout: float | None = None) -> bool:
        """:meth:`join` for async code: the event loop keeps running the audit tasks."""
        return await asyncio.to_thread(self.join, timeout)

    def close(self) -> None:
        """Start no more audits; those still running finish without recording (dropped)."""
        with self._cond:
            self._closed = True
