"""Fault injection for tier backends: switch a tier down and up, and pause a call.

``FaultyBackend(inner)`` wraps any tier (``MemoryBackend``, ``RedisBackend``,
``SQLBackend`` or a third-party one) and forwards every attribute and method of it,
so whatever optional method the core probes for (``touch``, ``set_many``,
``iter_embeddings``, ``mark``, ``publish``, ``client``, ...) is there exactly when the
real tier has it. On top of that:

* ``down()`` / ``up()``: while down, every call raises
  :class:`~semcache.errors.BackendUnavailable`, as a dead server would (``close``
  still releases the inner tier's resources).
* ``pause(method, when="before"|"after", thread_name=...)``: the next matching call
  stops on a :class:`threading.Event` until the test releases it, so races are made
  deterministic: ``p = l3.pause("get", when="after", thread_name="reader")``,
  start the reader, ``p.wait_reached()``, do the racing operation, ``p.release()``.
* ``calls`` counts forwarded calls per method (what the tier really served), and
  ``failed`` the calls refused while down.

``MutedListenerClient`` wraps a redis client so that a cache's event-listener
thread never receives a message (subscribing works), and ``EventTap`` records what
is published on a channel: tests then deliver each message themselves, through the
public ``SemanticCache.apply_event``, late or never.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from semcache.errors import BackendUnavailable

__all__ = ["EventTap", "FaultyBackend", "MutedListenerClient", "Pause"]

#: How long a paused call waits for its release before giving up (a test bug, never
#: a normal outcome): the suite must not hang on a forgotten release.
PAUSE_LIMIT_SECONDS = 30.0

#: Called even while the tier is down: closing only releases local resources.
_ALWAYS = frozenset({"close", "aclose"})


class Pause:
    """One armed pause point: the first call that matches stops until :meth:`release`."""

    def __init__(
        self,
        methods: frozenset[str] | None,
        when: str,
        thread_name: str | None,
        predicate: Callable[..., bool] | None,
    ) -> None:
        if when not in ("before", "after"):
            raise ValueError("when must be 'before' or 'after'")
        self.methods = methods
        self.when = when
        self.thread_name = thread_name
        self.predicate = predicate
        #: Set when a call reached the pause point (and is now waiting).
        self.reached = threading.Event()
        self._release = threading.Event()
        self._taken = False
        self._lock = threading.Lock()
        #: The method and arguments of the call that stopped here.
        self.call: tuple[str, tuple[Any, ...], dict[str, Any]] | None = None
        #: What the paused call returned (``when="after"``).
        self.result: Any = None
        self.timed_out = False

    def _claim(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.thread_name is not None and threading.current_thread().name != self.thread_name:
            return False
        if self.predicate is not None and not self.predicate(method, *args, **kwargs):
            return False
        with self._lock:
            if self._taken:
                return False
            self._taken = True
        self.call = (method, args, kwargs)
        return True

    def _hold(self) -> None:
        self.reached.set()
        if not self._release.wait(PAUSE_LIMIT_SECONDS):
            self.timed_out = True

    def wait_reached(self, timeout: float = 5.0) -> bool:
        """Wait until a call stopped here; ``False`` if none did within ``timeout``."""
        return self.reached.wait(timeout)

    def release(self) -> None:
        """Let the paused call (or the next one that would pause) go on."""
        self._release.set()

    @property
    def released(self) -> bool:
        return self._release.is_set()


class FaultyBackend:
    """A tier backend that can be switched down and up and paused at chosen points.

    Extra keyword arguments replace attributes of the inner tier as seen through the
    wrapper (e.g. ``client=MutedListenerClient(inner.client)``).
    """

    def __init__(self, inner: Any, **overrides: Any) -> None:
        # set through __dict__: __getattr__ must never see these missing
        self.__dict__.update(
            inner=inner,
            _overrides=dict(overrides),
            _down=False,
            _pauses=[],
            _every_pause=[],
            _plock=threading.Lock(),
            calls=Counter(),
            failed=Counter(),
        )

    # -- faults --------------------------------------------------------------
    @property
    def is_down(self) -> bool:
        return bool(self._down)

    def down(self) -> None:
        """Every call from now on raises BackendUnavailable."""
        self.__dict__["_down"] = True

    def up(self) -> None:
        """Calls reach the inner tier again."""
        self.__dict__["_down"] = False

    def pause(
        self,
        method: str | Iterable[str] | None,
        *,
        when: str = "before",
        thread_name: str | None = None,
        predicate: Callable[..., bool] | None = None,
    ) -> Pause:
        """Arm a pause on the next call of ``method`` (a name, several, or ``None`` for
        any method) made by the thread named ``thread_name`` (any thread if ``None``)
        and accepted by ``predicate(method, *args, **kwargs)``.

        ``when="before"``: the call stops before it reaches the inner tier (and fails
        if the tier is down when it goes on); ``"after"``: it stops once the inner tier
        answered, holding the answer (in :attr:`Pause.result`) until released.
        """
        methods = None if method is None else frozenset([method] if isinstance(method, str) else method)
        p = Pause(methods, when, thread_name, predicate)
        with self._plock:
            self._pauses.append(p)
            self._every_pause.append(p)
        return p

    def release_all(self) -> None:
        """Release every pause (armed or reached) and disarm them: the clean-up for a failing test."""
        with self._plock:
            pauses = list(self._every_pause)
            self._pauses.clear()
        for p in pauses:
            p.release()

    def _claim(self, method: str, when: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Pause | None:
        with self._plock:
            pauses = [p for p in self._pauses if p.when == when]
        for p in pauses:
            if p._claim(method, args, kwargs):
                with self._plock:
                    if p in self._pauses:
                        self._pauses.remove(p)
                return p
        return None

    def _check(self, method: str) -> None:
        if self._down and method not in _ALWAYS:
            self.failed[method] += 1
            raise BackendUnavailable(f"{getattr(self.inner, 'name', 'tier')} is down (fault injected)")

    # -- forwarding ------------------------------------------------------------
    def __getattr__(self, attr: str) -> Any:
        overrides = self.__dict__["_overrides"]
        if attr in overrides:
            return overrides[attr]
        target = getattr(self.__dict__["inner"], attr)
        if not callable(target) or isinstance(target, type):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            p = self._claim(attr, "before", args, kwargs)
            if p is not None:
                p._hold()
            self._check(attr)
            result = target(*args, **kwargs)
            self.calls[attr] += 1
            p = self._claim(attr, "after", args, kwargs)
            if p is not None:
                p.result = result
                p._hold()
            return result

        call.__name__ = attr
        return call

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr in self.__dict__:
            self.__dict__[attr] = value
        else:
            setattr(self.__dict__["inner"], attr, value)

    def __repr__(self) -> str:
        return f"FaultyBackend({self.inner!r}, down={self._down})"


# -- events between replicas, delivered by hand ----------------------------------------


class _SilentPubSub:
    """A pubsub object that subscribes and never yields a message."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def psubscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def unsubscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_message(self, *args: Any, timeout: float = 0.0, **kwargs: Any) -> None:
        # a short wait: the listener thread neither spins nor delays close() much
        self._closed.wait(min(float(timeout or 0.0), 0.02))
        return None

    def listen(self) -> Any:
        while not self._closed.wait(0.02):
            pass
        return iter(())

    def close(self) -> None:
        self._closed.set()

    reset = close


class MutedListenerClient:
    """A redis client whose ``pubsub()`` never receives anything; all else is forwarded."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def pubsub(self, *args: Any, **kwargs: Any) -> _SilentPubSub:
        return _SilentPubSub()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._client, attr)


class EventTap:
    """Records every message published on ``channel`` (from any client of the server)."""

    def __init__(self, client: Any, channel: str) -> None:
        self.channel = channel
        self._ps = client.pubsub(ignore_subscribe_messages=True)
        self._ps.subscribe(channel)
        self._drain_subscribe_confirmations()

    def _drain_subscribe_confirmations(self) -> None:
        while self._ps.get_message(timeout=0.0) is not None:
            pass

    def drain(self) -> list[dict[str, Any]]:
        """The messages published since the last call, oldest first, decoded."""
        out: list[dict[str, Any]] = []
        while True:
            msg = self._ps.get_message(timeout=0.0)
            if msg is None:
                return out
            if msg.get("type") != "message":
                continue
            data = msg["data"]
            out.append(json.loads(data.decode() if isinstance(data, bytes) else data))

    def close(self) -> None:
        try:
            self._ps.close()
        except Exception:  # noqa: BLE001 - closing a test helper
            pass
