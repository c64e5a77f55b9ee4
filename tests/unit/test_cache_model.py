"""Model-based test of the consistency contract: two replicas against a dict.

Replica A writes (set, invalidate, delete, flush) and reads; replica B only reads.
They share one fakeredis server (L2) and one SQLite file (L3); each has its own L1.
Both L2 and L3 tiers of each replica are wrapped in FaultyBackend, so a tier can be
down for both (an outage) or for one replica (a partition); a write may start such a
fault just before it runs. Events between replicas are not carried by the listener
threads: each one published is captured and the test delivers it itself
(``apply_event``): at once, or late (after ``delay_events``), or never
(``lose_events``).

The reference model is, per key, the current value and its expiry (or "removed").
After every step both replicas look up every key:

* A never returns a value other than the current one, even while a tier is down; it
  misses only while one of its tiers is down, or after the value expired.
* B never returns a value nobody wrote for that key; and once every event has been
  delivered and no tier is down, it never returns a removed (overwritten,
  invalidated, flushed or expired) value, except for keys whose events were lost
  and whose L1 copy B may still hold.

When a tier comes back, the writer is used first (it replays what the tier missed),
and once none of a replica's tiers is down each one must serve again within a few
seconds (contract 5). Every key starts stored and cached in both L1s.

A partition that cuts A alone off L3 while B still reaches it is not generated: B
would then read and promote what is, to every shared tier, still current.
"""

from __future__ import annotations

import os

import atexit
import dataclasses
import shutil
import tempfile
import threading
import time
from typing import Any

import fakeredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from semcache import CacheConfig, Policy, RedisConfig, SemanticCache, SQLConfig
from semcache.tiers.memory import MemoryBackend
from semcache.tiers.redis import RedisBackend
from semcache.tiers.sql import SQLBackend
from tests._faults import EventTap, FaultyBackend, MutedListenerClient

PROMPTS = ("How do I reset my password?", "What is our refund policy?")
NUDGE = "a prompt nobody stored"
PREFIX = "model:"
TTLS = (None, 100.0, 1000.0)
#: Tier faults: an outage of a tier for both replicas, or one replica cut off it.
FAULTS = ("l2", "l3", "a.l2", "b.l2", "b.l3")
#: Writes may start a fault first (and leave it on): writes during outages are where
#: the contract is easiest to break.
DURING = (None, None, "l2", "l3", "a.l2", "l2+l3")
#: How long a tier that is back may take to be used again.
RECOVERY_SECONDS = 3.0
#: A lookup within this many seconds of the current value's expiry is not judged.
EXPIRY_MARGIN = 1.0


class RealClock:
    """Wall-clock time plus an offset (TTLs), so back-off timed by any clock passes."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def _policy() -> Policy:
    fields = {f.name for f in dataclasses.fields(Policy)}
    wanted: dict[str, Any] = {
        "backoff_initial_seconds": 0.001,
        "backoff_max_seconds": 0.001,
        "sweep_interval_seconds": None,
        # a core that also follows a change log: no background poll, the test runs
        # it (catch_up) where the events are delivered, so every run is repeatable
        "log_poll_seconds": None,
    }
    return Policy(**{k: v for k, v in wanted.items() if k in fields})


_TEMPLATE_DIR = tempfile.mkdtemp(prefix="semcache-model-")
atexit.register(shutil.rmtree, _TEMPLATE_DIR, True)
_template: str | None = None


def _fresh_db() -> str:
    """A new SQLite file at the head schema (copied: migrating each one is slow)."""
    global _template
    if _template is None:
        path = f"{_TEMPLATE_DIR}/template.db"
        b = SQLBackend(f"sqlite:///{path}")
        b.open()
        b.close()
        _template = path
    d = tempfile.mkdtemp(dir=_TEMPLATE_DIR)
    shutil.copy(_template, f"{d}/l3.db")
    return d


class Replica:
    def __init__(self, name: str, server: Any, url: str, clock: RealClock) -> None:
        self.name = name
        raw = fakeredis.FakeRedis(server=server)
        self.l1 = MemoryBackend()
        self.l2 = FaultyBackend(RedisBackend("redis://fake", prefix=PREFIX, client=raw), client=MutedListenerClient(raw))
        self.l3 = FaultyBackend(SQLBackend(url))
        cfg = CacheConfig(
            embedder=None,
            redis=RedisConfig(url="redis://fake", prefix=PREFIX),
            sql=SQLConfig(url=url),
            policy=_policy(),
        )
        self.cache = SemanticCache(cfg, timer=clock, tiers=[self.l1, self.l2, self.l3]).open()
        #: tiers back up, not yet seen serving: name -> their call count when back
        self.owed: dict[str, int] = {}

    def tier(self, name: str) -> FaultyBackend:
        return self.l2 if name == "l2" else self.l3

    def any_down(self) -> bool:
        return self.l2.is_down or self.l3.is_down


class CacheModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = _fresh_db()
        url = f"sqlite:///{self.dir}/l3.db"
        self.clock = RealClock()
        server = fakeredis.FakeServer()
        self.tap = EventTap(fakeredis.FakeRedis(server=server), f"{PREFIX}events")
        self.a = Replica("A", server, url, self.clock)
        self.b = Replica("B", server, url, self.clock)
        self.keys = {p: self.a.cache.request(p).key for p in PROMPTS}
        #: key -> (value, expires_at) of the current version, or None once removed
        self.current: dict[str, tuple[str, float | None] | None] = {k: None for k in self.keys.values()}
        self.written: dict[str, set[str]] = {k: set() for k in self.keys.values()}
        #: events published and not yet delivered; while not delaying, every event is
        #: delivered at once (a prompt listener)
        self.pending: list[dict[str, Any]] = []
        self.delaying = False
        #: keys whose event B never got: B may hold a removed value in its L1
        self.tainted: set[str] = set()
        self.n = 0

    def teardown(self) -> None:
        for r in (self.a, self.b):
            r.l2.up()
            r.l3.up()
            r.cache.close()
        self.tap.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------
    def _collect(self) -> None:
        self.pending.extend(self.tap.drain())
        if not self.delaying:
            self._deliver()

    def _deliver(self) -> None:
        while self.pending:
            msg = self.pending.pop(0)
            self.a.cache.apply_event(msg)
            self.b.cache.apply_event(msg)
            self.tainted -= self._keys_of(msg)
            self.pending.extend(self.tap.drain())

    def _sync(self) -> None:
        """Deliver events, and let each replica with every tier up run its change-log
        poll now (``catch_up``, where the core has one) instead of in the background."""
        self._collect()
        if self.delaying:
            return
        for r in (self.a, self.b):
            catch_up = getattr(r.cache, "catch_up", None)
            if catch_up is not None and not r.any_down():
                catch_up()
        self._collect()

    def _keys_of(self, msg: Any) -> set[str]:
        """The keys a message names (whatever its layout); all of them for a flush."""
        found: set[str] = set()

        def walk(x: Any) -> None:
            if isinstance(x, str):
                if x in self.current:
                    found.add(x)
            elif isinstance(x, dict):
                if x.get("all") is True:
                    found.update(self.current)
                for v in x.values():
                    walk(v)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    walk(v)

        walk(msg)
        return found

    def _live(self, key: str) -> tuple[str | None, bool]:
        """The current value (None if removed or expired), and whether it is too close
        to its expiry to judge a lookup."""
        cur = self.current[key]
        if cur is None:
            return None, False
        value, expires = cur
        if expires is None:
            return value, False
        now = self.clock()
        if abs(now - expires) < EXPIRY_MARGIN:
            return value, True
        return (value if now < expires else None), False

    def _any_down(self) -> bool:
        return self.a.any_down() or self.b.any_down()

    def _recover(self, r: Replica, tier: FaultyBackend) -> None:
        """Bring ``tier`` back for ``r``. Once none of ``r``'s tiers is down, each tier
        that was down must serve again promptly (contract 5): until then one may wait
        for another (L3 is not read while what it missed sits in L2's hand-off)."""
        tier.up()
        r.owed[tier.inner.name] = sum(tier.calls.values())
        if r.any_down():
            r.cache.get(NUDGE)
            self._collect()
            return
        deadline = time.monotonic() + RECOVERY_SECONDS
        wait = threading.Event()
        catch_up = getattr(r.cache, "catch_up", None)
        while True:
            r.cache.get(NUDGE)
            if catch_up is not None:
                catch_up()  # what its background poll does about once a second
            slow = [n for n, before in r.owed.items() if sum(r.tier(n).calls.values()) <= before]
            if not slow:
                break
            assert time.monotonic() < deadline, (
                f"{r.name}'s {', '.join(slow)} not used again within {RECOVERY_SECONDS}s of every tier being back"
            )
            wait.wait(0.002)
        r.owed.clear()
        self._sync()

    # -- checks, after every step --------------------------------------------------
    def _check_a(self, p: str) -> None:
        key = self.keys[p]
        want, near_expiry = self._live(key)
        hit = self.a.cache.get(p)
        self._collect()
        if near_expiry:
            return
        if hit is not None:
            assert hit.value == want, (
                f"A served {hit.value!r} from {hit.tier} for {p!r}; the current value is {want!r}"
            )
        else:
            assert want is None or self.a.any_down(), (
                f"A missed {p!r} (current {want!r}) with none of its tiers down"
            )

    def _strict_for_b(self, key: str) -> bool:
        return not (self.delaying or self.pending or self._any_down() or key in self.tainted)

    def _check_b(self, p: str) -> None:
        key = self.keys[p]
        hit = self.b.cache.get(p)
        self._collect()
        if hit is None:
            return
        assert hit.value in self.written[key], f"B served {hit.value!r} for {p!r}, which no set of it wrote"
        if not self._strict_for_b(key):
            return
        want, near_expiry = self._live(key)
        if near_expiry:
            return
        assert hit.value == want, (
            f"B served removed value {hit.value!r} from {hit.tier} for {p!r} (current {want!r}) "
            "with every event delivered and every tier up"
        )

    @invariant()
    def a_serves_only_the_current_value(self) -> None:
        for p in PROMPTS:
            self._check_a(p)

    @invariant()
    def b_never_serves_a_removed_value_once_events_are_delivered(self) -> None:
        for p in PROMPTS:
            self._check_b(p)

    # -- writes (replica A) ------------------------------------------------------
    @initialize()
    def seed(self) -> None:
        """Every key starts stored, and cached in both replicas' L1."""
        for p in PROMPTS:
            self.set(p, None, None)

    def _fault(self, during: str | None) -> None:
        for which in (during or "").split("+"):
            if which:
                self.tier_down(which)

    @rule(p=st.sampled_from(PROMPTS), ttl=st.sampled_from(TTLS), during=st.sampled_from(DURING))
    def set(self, p: str, ttl: float | None, during: str | None) -> None:
        self._fault(during)
        self.n += 1
        value = f"v{self.n}"
        entry = self.a.cache.set(p, value, ttl_seconds=ttl)
        key = self.keys[p]
        self.current[key] = (value, entry.expires_at)
        self.written[key].add(value)
        self._sync()

    @rule(p=st.sampled_from(PROMPTS), how=st.sampled_from(("invalidate", "delete")), during=st.sampled_from(DURING))
    def remove(self, p: str, how: str, during: str | None) -> None:
        self._fault(during)
        if how == "invalidate":
            self.a.cache.invalidate(key=self.keys[p])
        else:
            self.a.cache.delete(self.keys[p])
        self.current[self.keys[p]] = None
        self._sync()

    @rule(during=st.sampled_from(DURING))
    def flush(self, during: str | None) -> None:
        self._fault(during)
        self.a.cache.flush()
        for k in self.current:
            self.current[k] = None
        self._sync()

    # -- time and L1 --------------------------------------------------------------
    @rule(seconds=st.sampled_from((10.0, 150.0, 1500.0)))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(replica=st.sampled_from("ab"), p=st.sampled_from(PROMPTS))
    def evict_from_l1(self, replica: str, p: str) -> None:
        r = self.a if replica == "a" else self.b
        r.l1.delete([self.keys[p]])
        if r is self.b:
            self.tainted.discard(self.keys[p])

    # -- events between replicas ----------------------------------------------------------
    @rule()
    def delay_events(self) -> None:
        self.delaying = True

    @rule()
    def deliver_events(self) -> None:
        self.delaying = False
        self._sync()

    @rule()
    def lose_events(self) -> None:
        self.pending.extend(self.tap.drain())
        for msg in self.pending:
            keys = self._keys_of(msg)
            self.tainted |= keys if keys else set(self.current)
        self.pending = []
        self.delaying = False

    # -- faults ----------------------------------------------------------------------
    @rule(which=st.sampled_from(FAULTS))
    def tier_down(self, which: str) -> None:
        """An outage of a tier (both replicas), or one replica cut off a tier."""
        if "." in which:
            r = self.a if which[0] == "a" else self.b
            r.tier(which[2:]).down()
        else:
            self.a.tier(which).down()
            self.b.tier(which).down()

    @precondition(lambda self: self._any_down())
    @rule(data=st.data())
    def tier_up(self, data: st.DataObject) -> None:
        """A tier is back for every replica; the writer uses it first."""
        down = sorted({n for r in (self.a, self.b) for n in ("l2", "l3") if r.tier(n).is_down})
        name = data.draw(st.sampled_from(down), label="tier back")
        for r in (self.a, self.b):
            if r.tier(name).is_down:
                self._recover(r, r.tier(name))


#: The unit run is kept short; SEMCACHE_MODEL_EXAMPLES=400 (say) explores much deeper.
_EXAMPLES = int(os.environ.get("SEMCACHE_MODEL_EXAMPLES", "30"))

CacheModel.TestCase.settings = settings(
    max_examples=_EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCacheModel = CacheModel.TestCase
