"""Scale-out on Redis: one request budget and one change-detection state for many workers.

:class:`RedisPacer` is the :class:`~antavo_braze.Pacer` protocol over Redis. Every decision is
one atomic Lua script that reads Redis's own clock (``TIME``), so workers on different
machines agree on the windows without agreeing on their clocks. What it keeps, per ``key``:

- ``{key}:flight`` — requests sent and not yet answered (scored by when they stop counting:
  a worker that dies mid-request leaks nothing past its ``slot_ttl``);
- ``{key}:sent`` — the answers of the last ``per`` seconds, by when they came. The configured
  burst budget is counted as the in-process pacers count it (``burst_wait`` in
  ``_http/pacing.py``; here in Lua, where the workers meet): a request holds its slot from
  its send (in flight) until ``per`` seconds after its answer, so no window Braze counts in
  sees more than ``requests``;
- ``{key}:budget`` — what Braze's ``X-RateLimit-Remaining`` said is left, living until the
  window's reset; ``{key}:hold`` — a pause every worker observes (a 429's ``Retry-After``);
- ``{key}:hour`` — ``"<hour>:<count>"`` for the optional hourly budget.

``redis`` is an optional dependency (``pip install redis``, or the ``redis`` extra): this
module imports it only to turn a URL into a client.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from .._braze.headers import remaining, reset_in_seconds, retry_after_seconds
from .._braze.limits import TRACK_RATE_REQUESTS, TRACK_RATE_SECONDS
from .._fork import reset_after_fork
from .._http.pacing import POLL_SECONDS, InProcessPacer
from .._run.state import key_from_env
from .._telemetry import log_fields
from ..exceptions import ConfigurationError

__all__ = ["RedisOrder", "RedisPacer", "RedisStateStore", "redis_client", "redis_failures"]

log = logging.getLogger("antavo_braze.redis")

_NEW_WINDOW_SLACK_MS = 500  # reset readings in whole seconds jitter by up to one second
_REDIS_RETRY_AFTER = 30.0  # seconds on the in-process fallback before Redis is tried again

# Redis before 5 replicates scripts verbatim and refuses writes after TIME unless a script
# asks for effects replication (a no-op since Redis 5).
# KEYS: sent, flight, budget, hold, hour. ARGV: requests (0 = none), per ms, hourly (0 = none),
# token, slot ttl ms, poll ms. Returns 0 (a slot is taken) or the milliseconds to wait.
_ACQUIRE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(redis.call('GET', KEYS[4]) or '0')
if hold > now then return hold - now end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)  -- slots of requests never answered
local budget = redis.call('GET', KEYS[3])
if budget then
  if tonumber(budget) - redis.call('ZCARD', KEYS[2]) <= 0 then
    local ttl = redis.call('PTTL', KEYS[3])
    if ttl > 0 then return ttl end
  end
end
local requests = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
if requests > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)  -- answers whose slot came back
  local answered = redis.call('ZCARD', KEYS[1])
  if answered + redis.call('ZCARD', KEYS[2]) >= requests then
    if answered > 0 then  -- the oldest answer's slot comes back first
      local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
      return math.max(1, tonumber(oldest[2]) + per - now)
    end
    return tonumber(ARGV[6])  -- every slot is in flight: one comes back with an answer
  end
end
local hourly = tonumber(ARGV[3])
local hour = math.floor(now / 3600000)
local used = 0
if hourly > 0 then
  local saved = redis.call('GET', KEYS[5])
  if saved then
    local h, c = string.match(saved, '^(%d+):(%d+)$')
    if tonumber(h) == hour then used = tonumber(c) end
  end
  if used >= hourly then return (hour + 1) * 3600000 - now end
end
if hourly > 0 then
  redis.call('SET', KEYS[5], hour .. ':' .. (used + 1), 'PX', 3700000)
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]) + 1000)
return 0
"""

# KEYS: flight, budget, hold, sent. ARGV: token, status (0 = none), retry-after ms (-1 = none),
# remaining (-1 = none), reset-in ms (-1 = none), max wait ms, requests (0 = none), per ms.
_OBSERVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(ARGV[7]) > 0 then  -- the slot counts until per after the answer (also a late one)
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]) + 1000)
end
local status = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[6])
if status == 429 then
  local wait = tonumber(ARGV[3])
  if wait >= 0 and wait <= max_wait then
    local hold = tonumber(redis.call('GET', KEYS[3]) or '0')
    if now + wait > hold then redis.call('SET', KEYS[3], now + wait, 'PX', wait + 1000) end
  end
  return 0
end
local left = tonumber(ARGV[4])
local reset_in = math.min(tonumber(ARGV[5]), max_wait)
if left < 0 or reset_in < 0 then return 0 end
if reset_in < 1 then reset_in = 1 end
local ttl = redis.call('PTTL', KEYS[2])
local known = redis.call('GET', KEYS[2])
if not known or ttl < 0 or reset_in > ttl + 500 then
  redis.call('SET', KEYS[2], left, 'PX', reset_in)
elseif left < tonumber(known) then
  redis.call('SET', KEYS[2], left, 'KEEPTTL')
end
return 0
"""


def redis_client(redis: Any) -> Any:
    """A ``redis.Redis`` client: ``redis`` itself, or one made from a ``redis://`` URL."""
    if not isinstance(redis, str):
        return redis
    try:
        import redis as redis_py
    except ModuleNotFoundError:
        raise ConfigurationError(
            "Redis support needs the redis package: pip install redis "
            "(or the redis extra: pip install '.[redis]' in a checkout)"
        ) from None
    # TLS checks the host name (redis-py before 6 did not unless told): an explicit
    # ssl_check_hostname in the URL still decides.
    checked = redis.lower().startswith("rediss:") and "ssl_check_hostname" not in redis
    try:
        return redis_py.Redis.from_url(redis, **({"ssl_check_hostname": True} if checked else {}))
    except ValueError as exc:
        raise ConfigurationError(f"not a Redis URL: {exc}") from None


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors of a Redis that is away for now (worth trying again), not of a wrong request."""
    try:
        import redis as redis_py
    except ModuleNotFoundError:
        return (OSError,)
    return (redis_py.ConnectionError, redis_py.TimeoutError, OSError)


def redis_failures() -> tuple[type[BaseException], ...]:
    """The Redis client's own errors (none without the optional package)."""
    try:
        import redis as redis_py
    except ModuleNotFoundError:
        return ()
    return (redis_py.RedisError,)


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        import redis as redis_py
    except ModuleNotFoundError:  # a duck-typed client: its own errors are OSErrors, if any
        return (OSError,)
    return (redis_py.RedisError, OSError)


class RedisPacer:
    """A request budget shared by every process that uses the same ``key`` (one per Braze
    workspace), kept in Redis with atomic scripts.

    ``requests`` per ``per`` seconds is the burst budget (Braze's ``/users/track`` default:
    3,000 per 3 s; ``None`` to rely on Braze's headers alone) and ``hourly`` an optional
    hourly budget (MAU contracts). What any worker learns from Braze —
    ``X-RateLimit-Remaining`` reaching 0, a 429's ``Retry-After`` — holds back all of them,
    never longer than ``max_wait`` seconds at a time. A request that is never answered (its
    worker died) stops counting after ``slot_ttl`` seconds.

    If Redis cannot be reached, the pacer warns and paces this process alone (Braze's own
    headers still hold it back) until Redis answers again: a Redis outage slows a sync down
    but never fails or loses a record.
    """

    def __init__(
        self,
        redis: Any,
        *,
        key: str = "antavo_braze:default",
        requests: int | None = TRACK_RATE_REQUESTS,
        per: float = TRACK_RATE_SECONDS,
        hourly: int | None = None,
        max_wait: float = 300.0,
        slot_ttl: float = 60.0,
    ) -> None:
        if requests is not None and requests < 1:
            raise ConfigurationError("requests must be at least 1")
        if hourly is not None and hourly < 1:
            raise ConfigurationError("hourly must be at least 1")
        if per <= 0 or max_wait < 0 or slot_ttl <= 0:
            raise ConfigurationError("per and slot_ttl must be positive, max_wait not negative")
        self.redis = redis_client(redis)
        self.key = key
        self.requests = requests
        self.per = per
        self.hourly = hourly
        self.max_wait = max_wait
        self.slot_ttl = slot_ttl
        self._keys = {
            name: f"{key}:{name}" for name in ("sent", "flight", "budget", "hold", "hour")
        }
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._observe = self.redis.register_script(_OBSERVE)
        self._errors = _redis_errors()
        self._fallback = InProcessPacer(max_wait=max_wait, requests=requests, per=per)
        self._fallback_until = 0.0
        self.waited = 0.0
        self._setup_process()
        reset_after_fork(self)

    def __repr__(self) -> str:
        return f"RedisPacer(key={self.key!r}, requests={self.requests}, per={self.per})"

    def _setup_process(self) -> None:
        self._lock = threading.Lock()
        self._tokens: deque[str] = deque()  # this process's requests in flight
        self._counter = itertools.count()
        self._prefix = f"{os.getpid()}:{os.urandom(4).hex()}:"

    def _after_fork(self) -> None:
        # The child's requests are its own; redis-py opens new connections after fork.
        self._setup_process()

    def _redis_failed(self, exc: BaseException) -> None:
        if time.monotonic() >= self._fallback_until:
            log.warning(
                "Redis unreachable (%s): pacing this process alone for %.0fs",
                exc,
                _REDIS_RETRY_AFTER,
                extra=log_fields("redis", reason=f"{type(exc).__name__}", wait=_REDIS_RETRY_AFTER),
            )
        self._fallback_until = time.monotonic() + _REDIS_RETRY_AFTER

    def try_acquire(self) -> float:
        """Take a send slot and return 0, or return the seconds until one may be free."""
        if time.monotonic() < self._fallback_until:
            return self._fallback.try_acquire()
        token = self._prefix + str(next(self._counter))
        k = self._keys
        try:
            wait_ms = int(
                self._acquire(
                    keys=[k["sent"], k["flight"], k["budget"], k["hold"], k["hour"]],
                    args=[
                        self.requests or 0,
                        int(self.per * 1000),
                        self.hourly or 0,
                        token,
                        int(self.slot_ttl * 1000),
                        max(1, round(POLL_SECONDS * 1000)),
                    ],
                )
            )
        except self._errors as exc:
            self._redis_failed(exc)
            return self._fallback.try_acquire()
        if wait_ms > 0:
            # Never longer than max_wait at a time, whatever a broken or hostile Redis holds.
            return min(wait_ms / 1000, self.max_wait)
        with self._lock:
            self._tokens.append(token)
        return 0.0

    def acquire(self) -> None:
        """Block until a request may go."""
        started = time.monotonic()
        while (wait := self.try_acquire()) > 0:
            time.sleep(wait)
        self.waited += time.monotonic() - started

    def observe(self, status: int | None, headers: Mapping[str, str]) -> None:
        """Tell every worker what this response said (and end this request's slot)."""
        with self._lock:
            token = self._tokens.popleft() if self._tokens else None
        if token is None:  # taken from the fallback while Redis was away
            self._fallback.observe(status, headers)
            return
        now = time.time()
        retry_after = retry_after_seconds(headers, now) if status == 429 else None
        left = remaining(headers)
        reset_in = reset_in_seconds(headers, now)
        k = self._keys
        try:
            self._observe(
                keys=[k["flight"], k["budget"], k["hold"], k["sent"]],
                args=[
                    token,
                    status or 0,
                    -1 if retry_after is None else int(retry_after * 1000),
                    -1 if left is None else int(left),
                    -1 if reset_in is None else int(reset_in * 1000),
                    int(self.max_wait * 1000),
                    self.requests or 0,
                    int(self.per * 1000),
                ],
            )
        except self._errors as exc:
            self._redis_failed(exc)

    def reset(self) -> None:
        """Forget the shared budget (every worker starts afresh): for tests and operators."""
        self.redis.delete(*self._keys.values())


_STATE_RETRY_FOR = 30.0  # seconds a state read or write is retried while Redis is away


def _retrying(call: Any, errors: tuple[type[BaseException], ...]) -> Any:
    """``call()``, tried again with backoff while Redis is unreachable (a restart, a
    failover) for up to ``_STATE_RETRY_FOR`` seconds; then its error."""
    deadline = time.monotonic() + _STATE_RETRY_FOR
    delay = 0.1
    while True:
        try:
            return call()
        except errors as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Redis unreachable (%s): trying again in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStateStore:
    """Change-detection state shared by every worker: per member, a Redis hash of
    ``{field: keyed hash}`` under ``{prefix}:m:<member id>`` (never the values). One round
    trip per batch (pipelined), whatever the batch size. The hashes' key: ``key``, else
    ``ANTAVO_BRAZE_STATE_KEY`` (the same in every worker; then a copy of Redis alone gives
    nothing); without either, a random key kept in ``{prefix}:secret`` (made by the first
    worker), which anyone who can read Redis can read too. The event ledger (accepted event
    ids, kept ``ledger_days``) and the pull watermarks live under the same prefix."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "antavo_braze:state",
        key: str | bytes | None = None,
        ledger_days: float = 30.0,
    ) -> None:
        self.ledger_days = ledger_days
        self._owns_client = isinstance(redis, str)
        self.redis = redis_client(redis)
        self.prefix = prefix
        self._errors = _transient_errors()
        secret_key = f"{prefix}:secret"
        secret = key_from_env(key)
        if secret is not None:
            self.redis.delete(secret_key)
            self.secret = secret
            return
        self.redis.set(secret_key, os.urandom(32).hex(), nx=True)
        self.secret = bytes.fromhex(_text(self.redis.get(secret_key)))

    def __repr__(self) -> str:
        return f"RedisStateStore(prefix={self.prefix!r})"

    def _key(self, member_id: str) -> str:
        return f"{self.prefix}:m:{member_id}"

    def get(self, member_id: str) -> dict[str, str] | None:
        found = self.get_many([member_id])
        return found.get(member_id)

    def get_many(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        unique = list(dict.fromkeys(ids))

        def fetch() -> Any:  # a new pipeline per try: a failed one forgets its commands
            pipe = self.redis.pipeline(transaction=False)
            for member_id in unique:
                pipe.hgetall(self._key(member_id))
            return pipe.execute()

        out = {}
        answers = _retrying(fetch, self._errors)
        for member_id, fields in zip(unique, answers, strict=True):
            if fields:
                out[member_id] = {_text(k): _text(v) for k, v in fields.items()}
        return out

    def put_many(self, updates: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        writes = [(self._key(member_id), dict(fields)) for member_id, fields in updates if fields]

        def store() -> Any:
            pipe = self.redis.pipeline(transaction=False)
            for key, fields in writes:
                pipe.hset(key, mapping=fields)
            return pipe.execute()

        _retrying(store, self._errors)

    # The event ledger: ``{prefix}:sent:<event id>``, each key expiring after the horizon.

    def sent_events(self, ids: Sequence[str]) -> set[str]:
        """The ids among ``ids`` recorded as sent (within the horizon: older keys expired)."""
        unique = list(dict.fromkeys(ids))
        pipe = self.redis.pipeline(transaction=False)
        for event_id in unique:
            pipe.exists(f"{self.prefix}:sent:{event_id}")
        return {i for i, hit in zip(unique, pipe.execute(), strict=True) if hit}

    def record_sent(self, ids: Iterable[str]) -> None:
        """Record event ids Braze accepted; each is forgotten after ``ledger_days``."""
        seconds = max(1, int(self.ledger_days * 86_400))
        pipe = self.redis.pipeline(transaction=False)
        for event_id in ids:
            pipe.set(f"{self.prefix}:sent:{event_id}", "1", ex=seconds)
        pipe.execute()

    def get_watermark(self, kind: str) -> str | None:
        value = self.redis.get(f"{self.prefix}:watermark:{kind}")
        return None if value is None else _text(value)

    def set_watermark(self, kind: str, value: str) -> None:
        self.redis.set(f"{self.prefix}:watermark:{kind}", value)

    def close(self) -> None:
        """Close the connections of a client this store made from a URL (yours stay open)."""
        if self._owns_client:
            self.redis.close()


# KEYS: per member, its lease then its "sent" key. ARGV: token, lease ms, then per member its
# sequence (0: no staleness check). Returns per member 0 (claimed: send it), 1 (stale: a newer
# snapshot was sent already) or 2 (busy: another process has a request in flight for it).
_CLAIM = """
local out = {}
for i = 1, #KEYS / 2 do
  local lease, sent = KEYS[2 * i - 1], KEYS[2 * i]
  local seq = tonumber(ARGV[i + 2])
  local holder = redis.call('GET', lease)
  if holder and holder ~= ARGV[1] then
    out[i] = 2
  elseif seq > 0 and tonumber(redis.call('GET', sent) or '0') >= seq then
    out[i] = 1
  else
    redis.call('SET', lease, ARGV[1], 'PX', tonumber(ARGV[2]))
    out[i] = 0
  end
end
return out
"""

# KEYS: as for _CLAIM. ARGV: token, sent ttl ms, then per member the sequence now in Braze
# (0: none, the request failed). Ends this process's leases.
_RELEASE = """
for i = 1, #KEYS / 2 do
  local lease, sent = KEYS[2 * i - 1], KEYS[2 * i]
  local seq = tonumber(ARGV[i + 2])
  if seq > 0 and seq > tonumber(redis.call('GET', sent) or '0') then
    redis.call('SET', sent, seq, 'PX', tonumber(ARGV[2]))
  end
  if redis.call('GET', lease) == ARGV[1] then redis.call('DEL', lease) end
end
return 0
"""

Claim = Literal["send", "stale", "busy"]
_CLAIMS: tuple[Claim, ...] = ("send", "stale", "busy")


class RedisOrder:
    """Per-member order across processes (gunicorn workers, several ``serve`` instances)
    that send for the same members, kept in Redis: an older snapshot of a member never
    overwrites a newer one in Braze, and no two processes have a request in flight for one
    member.

    Every change gets a sequence number when it is submitted (one ``INCRBY`` per submit, so
    numbers follow the order in which the processes received the changes). Before a window
    is sent, one script claims its members: a member another process is sending is held back
    for a moment, and a member snapshot older than one already in Braze is skipped (its
    outcome says so). ``lease``: seconds a claim lasts if its process dies mid-request;
    ``remember``: seconds the newest sent sequence of a member is kept (longer than a change
    can wait in a spool). One key per member while it is remembered, plus one counter.
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "antavo_braze:order",
        lease: float = 120.0,
        remember: float = 7 * 24 * 3600.0,
    ) -> None:
        if lease <= 0 or remember <= 0:
            raise ConfigurationError("lease and remember must be positive")
        self._owns_client = isinstance(redis, str)
        self.redis = redis_client(redis)
        self.prefix = prefix
        self.lease = lease
        self.remember = remember
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self.errors = _redis_errors()
        self._new_token()
        reset_after_fork(self)

    def __repr__(self) -> str:
        return f"RedisOrder(prefix={self.prefix!r})"

    def _new_token(self) -> None:
        self._token = f"{os.getpid()}:{os.urandom(6).hex()}"

    def _after_fork(self) -> None:
        self._new_token()  # the child's claims are its own

    def _keys(self, members: Sequence[str]) -> list[str]:
        return [f"{self.prefix}:{part}:{m}" for m in members for part in ("lease", "sent")]

    def stamp(self, count: int) -> list[int]:
        """``count`` new sequence numbers, increasing (one round trip)."""
        last = int(self.redis.incrby(f"{self.prefix}:seq", count))
        return list(range(last - count + 1, last + 1))

    def claim(self, members: Sequence[tuple[str, int]]) -> list[Claim]:
        """For each ``(member, sequence)`` (sequence 0: never stale): ``"send"`` (claimed),
        ``"stale"`` or ``"busy"``."""
        if not members:
            return []
        answer = self._claim(
            keys=self._keys([m for m, _ in members]),
            args=[self._token, int(self.lease * 1000), *(seq for _, seq in members)],
        )
        return [_CLAIMS[int(code)] for code in answer]

    def release(self, members: Sequence[tuple[str, int]]) -> None:
        """End this process's claims; ``sequence`` is what Braze now holds (0: nothing new)."""
        if not members:
            return
        self._release(
            keys=self._keys([m for m, _ in members]),
            args=[self._token, int(self.remember * 1000), *(seq for _, seq in members)],
        )

    def close(self) -> None:
        """Close the connections of a client this made from a URL (yours stay open)."""
        if self._owns_client:
            self.redis.close()
