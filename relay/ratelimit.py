"""RPM, TPM and RPD limits of a key and of its group, exact across relay processes.

Algorithm: a sliding-window log. Every admitted call is an entry (time, request id, tokens) in
the minute log of the key and of its group (RPM counts entries, TPM sums their tokens) and in
their day log (RPD counts entries). A call is admitted when, in every window, what the last
60 s (or 24 h) holds plus this call fits the limit; then, and only then, it is added to every
window. Checking and adding is one atomic step over all windows of the key and its group, so
either all admit the call or nothing is consumed, and concurrent calls can never get past a
limit: 20 calls at once against RPM 5 admit exactly 5. A log holds at most `limit` entries
(refused calls are not added) and expires by itself when the key goes quiet.

Why a log and not fixed windows or GCRA: a fixed window lets 2 × limit through around its
boundary, the weighted two-window estimate and GCRA do not bound every 60 s span by the limit,
and the product promises "N per minute". The cost is memory proportional to the limits (about
70 bytes an entry), which is small for per-key limits.

TPM admits a call on its estimate (our prompt count + max_tokens × n when the client sets it;
the prompt alone otherwise) and `correct` swaps the estimate for the actual usage at settlement.

Backends: with REDIS_URL, Redis, one Lua script per check (EVALSHA) on Redis's own clock, so all
relay processes share the windows; without, the same algorithm in this process (the embedded
default runs one relay process). A key and group without any rate limit never reach either.
If Redis cannot be reached the call is let through without rate limiting (logged): quotas and
credit still hold, since they are enforced in the database.
"""

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from django.conf import settings

from relay.http import RelayError
from relay.keys import KeyInfo

logger = logging.getLogger(__name__)

MINUTE_MS = 60_000
DAY_MS = 86_400_000
NO_LIMIT = -1
NEVER = -1  # a wait that no amount of waiting ends (a request over the whole limit)
KEY_PREFIX = "tb:rl:"

# Per scope, the script returns these eight numbers (after the call when it was admitted).
RAW_FIELDS = 8


@dataclass(frozen=True, slots=True)
class Scope:
    """The limits of a key or of a group, with the prefix of its windows."""

    ident: str  # "k:<token id>" or "g:<group id>"
    label: str  # for messages: "API key", "token group 'research'"
    rpm: int | None
    tpm: int | None
    rpd: int | None

    def args(self) -> list[int]:
        return [NO_LIMIT if v is None else v for v in (self.rpm, self.tpm, self.rpd)]

    def redis_keys(self) -> list[str]:
        base = f"{KEY_PREFIX}{self.ident}"
        return [f"{base}:m", f"{base}:mt", f"{base}:d"]

    @property
    def uses_minute(self) -> bool:
        return self.rpm is not None or self.tpm is not None


def scopes_of(key: KeyInfo) -> tuple[Scope, ...]:
    scopes = []
    if key.rpm is not None or key.tpm is not None or key.rpd is not None:
        scopes.append(Scope(f"k:{key.key_id}", "API key", key.rpm, key.tpm, key.rpd))
    if key.group_id is not None and (
        key.group_rpm is not None or key.group_tpm is not None or key.group_rpd is not None
    ):
        scopes.append(
            Scope(
                f"g:{key.group_id}",
                f"token group '{key.group_name}'",
                key.group_rpm,
                key.group_tpm,
                key.group_rpd,
            )
        )
    return tuple(scopes)


def window_ms() -> tuple[int, int]:
    """The minute and the day, in ms, shortened by RELAY_RATE_WINDOW_SCALE (tests only)."""
    scale = settings.RELAY_RATE_WINDOW_SCALE
    return max(1, round(MINUTE_MS * scale)), max(1, round(DAY_MS * scale))


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    scope: Scope
    kind: str  # "requests" or "tokens"
    name: str  # "requests per minute (RPM)" …
    limit: int
    used: int
    reset_ms: int  # until the window is back to its full limit
    wait_ms: int  # until this call would fit (0: it fits; NEVER: it never will)

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one call and the windows it was judged by."""

    admitted: bool
    member: str
    tokens: int
    scopes: tuple[Scope, ...]
    windows: tuple[Window, ...]

    @classmethod
    def from_raw(
        cls, scopes: tuple[Scope, ...], member: str, tokens: int, admitted: bool, raw: list[int]
    ) -> "Admission":
        windows = []
        for i, scope in enumerate(scopes):
            m_count, m_tokens, d_count, m_reset, d_reset, wait_r, wait_t, wait_d = raw[
                i * RAW_FIELDS : (i + 1) * RAW_FIELDS
            ]
            if scope.rpm is not None:
                windows.append(Window(scope, "requests", "requests per minute (RPM)",
                                      scope.rpm, m_count, m_reset, wait_r))  # fmt: skip
            if scope.tpm is not None:
                windows.append(Window(scope, "tokens", "tokens per minute (TPM)",
                                      scope.tpm, m_tokens, m_reset, wait_t))  # fmt: skip
            if scope.rpd is not None:
                windows.append(Window(scope, "requests", "requests per day (RPD)",
                                      scope.rpd, d_count, d_reset, wait_d))  # fmt: skip
        return cls(admitted, member, tokens, scopes, tuple(windows))

    @property
    def counts_tokens(self) -> bool:
        return any(scope.tpm is not None for scope in self.scopes)

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers, for the tightest request and token window."""
        headers = {}
        for kind in ("requests", "tokens"):
            windows = [w for w in self.windows if w.kind == kind]
            if not windows:
                continue
            tightest = min(windows, key=lambda w: w.remaining)
            headers[f"x-ratelimit-limit-{kind}"] = str(tightest.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(tightest.reset_ms)
        return headers

    def error(self) -> RelayError:
        """The 429 of a refused call: the window that makes it wait longest explains it."""
        blocking = [w for w in self.windows if w.wait_ms]
        never = [w for w in blocking if w.wait_ms == NEVER]
        worst = never[0] if never else max(blocking, key=lambda w: w.wait_ms)
        headers = self.headers()
        if worst.wait_ms == NEVER:
            if worst.kind == "tokens":
                message = (
                    f"Request too large for {worst.name} on this {worst.scope.label}: "
                    f"limit {worst.limit}, requested {self.tokens}. "
                    "Send a shorter prompt or a lower max_tokens."
                )
            else:
                message = f"This {worst.scope.label} allows no {worst.name}."
        else:
            wait = max(w.wait_ms for w in blocking if w.wait_ms != NEVER)
            headers["retry-after"] = str(max(1, math.ceil(wait / 1000)))
            requested = f", requested {self.tokens}" if worst.kind == "tokens" else ""
            message = (
                f"Rate limit reached for {worst.name} on this {worst.scope.label}: "
                f"limit {worst.limit}, used {worst.used}{requested}. "
                f"Please try again in {format_duration(wait)}."
            )
        return RelayError(429, message, code="rate_limit_exceeded", headers=headers)


def format_duration(ms: int) -> str:
    """Durations as OpenAI writes them in x-ratelimit-reset-*: "20ms", "1.5s", "6m0s"."""
    ms = max(0, ms)
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


# --- Redis --------------------------------------------------------------------------------------

# KEYS: per scope its minute log (zset), minute token total (string) and day log (zset).
# ARGV: now in ms (0: Redis's clock), member, tokens, minute ms, day ms, then per scope its
# rpm, tpm and rpd (-1: none). Log members are "<request id>:<tokens>", scored by time.
CHECK_LUA = """
local now = tonumber(ARGV[1])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local member, tokens = ARGV[2], tonumber(ARGV[3])
local minute, day = tonumber(ARGV[4]), tonumber(ARGV[5])
local entry = member .. ':' .. tokens
local n = #KEYS / 3
local admitted = 1
local st = {}

local function tokens_of(m)
  return tonumber(string.match(m, ':(%d+)$')) or 0
end

for i = 0, n - 1 do
  local mlog, mtok, dlog = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local rpm = tonumber(ARGV[6 + i * 3])
  local tpm = tonumber(ARGV[7 + i * 3])
  local rpd = tonumber(ARGV[8 + i * 3])
  local s = {mc = 0, mt = 0, dc = 0, wr = 0, wt = 0, wd = 0}
  if rpm >= 0 or tpm >= 0 then
    local expired = redis.call('ZRANGEBYSCORE', mlog, '-inf', now - minute)
    if #expired > 0 then
      local gone = 0
      for _, m in ipairs(expired) do gone = gone + tokens_of(m) end
      redis.call('ZREMRANGEBYSCORE', mlog, '-inf', now - minute)
      if redis.call('DECRBY', mtok, gone) <= 0 then redis.call('DEL', mtok) end
    end
    s.mc = redis.call('ZCARD', mlog)
    s.mt = tonumber(redis.call('GET', mtok) or '0')
    if rpm >= 0 and s.mc + 1 > rpm then
      admitted = 0
      if rpm == 0 then s.wr = -1 else
        local e = redis.call('ZRANGE', mlog, s.mc - rpm, s.mc - rpm, 'WITHSCORES')
        s.wr = tonumber(e[2]) + minute - now
      end
    end
    if tpm >= 0 and s.mt + tokens > tpm then
      admitted = 0
      if tokens > tpm then s.wt = -1 else
        local excess, freed = s.mt + tokens - tpm, 0
        local all = redis.call('ZRANGE', mlog, 0, -1, 'WITHSCORES')
        for j = 1, #all, 2 do
          freed = freed + tokens_of(all[j])
          if freed >= excess then s.wt = tonumber(all[j + 1]) + minute - now break end
        end
        if s.wt == 0 then s.wt = minute end
      end
    end
  end
  if rpd >= 0 then
    redis.call('ZREMRANGEBYSCORE', dlog, '-inf', now - day)
    s.dc = redis.call('ZCARD', dlog)
    if s.dc + 1 > rpd then
      admitted = 0
      if rpd == 0 then s.wd = -1 else
        local e = redis.call('ZRANGE', dlog, s.dc - rpd, s.dc - rpd, 'WITHSCORES')
        s.wd = tonumber(e[2]) + day - now
      end
    end
  end
  s.rpm, s.tpm, s.rpd = rpm, tpm, rpd
  st[i] = s
end

local out = {admitted}
for i = 0, n - 1 do
  local s = st[i]
  local mlog, mtok, dlog = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local mreset, dreset = 0, 0
  if admitted == 1 then
    if s.rpm >= 0 or s.tpm >= 0 then
      redis.call('ZADD', mlog, now, entry)
      redis.call('INCRBY', mtok, tokens)
      redis.call('PEXPIRE', mlog, minute)
      redis.call('PEXPIRE', mtok, minute)
      s.mc, s.mt, mreset = s.mc + 1, s.mt + tokens, minute
    end
    if s.rpd >= 0 then
      redis.call('ZADD', dlog, now, member)
      redis.call('PEXPIRE', dlog, day)
      s.dc, dreset = s.dc + 1, day
    end
  else
    local last = redis.call('ZRANGE', mlog, -1, -1, 'WITHSCORES')
    if #last > 0 then mreset = tonumber(last[2]) + minute - now end
    last = redis.call('ZRANGE', dlog, -1, -1, 'WITHSCORES')
    if #last > 0 then dreset = tonumber(last[2]) + day - now end
  end
  for _, v in ipairs({s.mc, s.mt, s.dc, mreset, dreset, s.wr, s.wt, s.wd}) do
    table.insert(out, v)
  end
end
return out
"""

# KEYS: per scope its minute log and token total. ARGV: old member, new member, token change.
CORRECT_LUA = """
for i = 0, #KEYS / 2 - 1 do
  local mlog, mtok = KEYS[i * 2 + 1], KEYS[i * 2 + 2]
  local score = redis.call('ZSCORE', mlog, ARGV[1])
  if score then
    -- Removing a log's only entry deletes the key, and its expiry with it: keep the expiry.
    local ttl = math.max(1, redis.call('PTTL', mlog))
    redis.call('ZREM', mlog, ARGV[1])
    redis.call('ZADD', mlog, score, ARGV[2])
    redis.call('PEXPIRE', mlog, ttl)
    if redis.call('INCRBY', mtok, ARGV[3]) <= 0 then
      redis.call('DEL', mtok)
    else
      redis.call('PEXPIRE', mtok, ttl)
    end
  end
end
return 1
"""


class LimiterUnavailable(Exception):
    """The shared limiter could not be asked (Redis down or unreachable)."""


class RedisLimiter:
    def __init__(self, url: str) -> None:
        # Imported on first use: a relay whose keys have no limits never loads the client (6 MB).
        from redis.asyncio import Redis
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError)
        self.client = Redis.from_url(url)
        self._check = self.client.register_script(CHECK_LUA)
        self._correct = self.client.register_script(CORRECT_LUA)

    async def check(
        self, scopes: tuple[Scope, ...], member: str, tokens: int, now_ms: int | None
    ) -> tuple[bool, list[int]]:
        minute, day = window_ms()
        keys = [k for scope in scopes for k in scope.redis_keys()]
        args = [now_ms or 0, member, tokens, minute, day]
        args += [v for scope in scopes for v in scope.args()]
        try:
            result = await self._check(keys=keys, args=args)
        except self._errors as exc:
            raise LimiterUnavailable(str(exc)) from exc
        return bool(result[0]), [int(v) for v in result[1:]]

    async def correct(
        self, scopes: tuple[Scope, ...], member: str, estimate: int, actual: int
    ) -> None:
        keys = [k for scope in scopes if scope.uses_minute for k in scope.redis_keys()[:2]]
        if not keys:
            return
        try:
            await self._correct(
                keys=keys, args=[f"{member}:{estimate}", f"{member}:{actual}", actual - estimate]
            )
        except self._errors as exc:
            raise LimiterUnavailable(str(exc)) from exc

    async def close(self) -> None:
        await self.client.aclose()


# --- in process ---------------------------------------------------------------------------------


class _Log:
    """One window's entries in time order, with their token total."""

    __slots__ = ("entries", "tokens")

    def __init__(self) -> None:
        self.entries: deque[list] = deque()  # [time ms, member, tokens]
        self.tokens = 0

    def trim(self, cutoff: int) -> None:
        while self.entries and self.entries[0][0] <= cutoff:
            self.tokens -= self.entries.popleft()[2]
        self.tokens = max(0, self.tokens)


class LocalLimiter:
    """The same windows in this process's memory, for deployments without Redis.

    Each check runs without awaiting anything, so on the event loop it is atomic like the
    script. Only right for a single relay process: each process would count on its own.
    """

    SWEEP_EVERY = 10_000  # checks between sweeps of windows that went quiet

    def __init__(self, clock=None) -> None:
        self.logs: dict[str, _Log] = {}
        self.clock = clock or (lambda: int(time.time() * 1000))
        self._checks = 0

    def _log(self, name: str) -> _Log:
        log = self.logs.get(name)
        if log is None:
            log = self.logs[name] = _Log()
        return log

    async def check(
        self, scopes: tuple[Scope, ...], member: str, tokens: int, now_ms: int | None
    ) -> tuple[bool, list[int]]:
        return self.check_now(scopes, member, tokens, now_ms)

    def check_now(
        self, scopes: tuple[Scope, ...], member: str, tokens: int, now_ms: int | None
    ) -> tuple[bool, list[int]]:
        now = now_ms or self.clock()
        minute, day = window_ms()
        self._checks += 1
        if self._checks % self.SWEEP_EVERY == 0:
            self._sweep(now, minute, day)
        admitted = True
        states = []
        for scope in scopes:
            m_log, d_log = self._log(f"{scope.ident}:m"), self._log(f"{scope.ident}:d")
            wait_r = wait_t = wait_d = 0
            if scope.uses_minute:
                m_log.trim(now - minute)
                count = len(m_log.entries)
                if scope.rpm is not None and count + 1 > scope.rpm:
                    admitted = False
                    wait_r = (
                        NEVER
                        if scope.rpm == 0
                        else m_log.entries[count - scope.rpm][0] + minute - now
                    )
                if scope.tpm is not None and m_log.tokens + tokens > scope.tpm:
                    admitted = False
                    wait_t = NEVER if tokens > scope.tpm else minute
                    if wait_t != NEVER:
                        excess, freed = m_log.tokens + tokens - scope.tpm, 0
                        for at, _, entry_tokens in m_log.entries:
                            freed += entry_tokens
                            if freed >= excess:
                                wait_t = at + minute - now
                                break
            if scope.rpd is not None:
                d_log.trim(now - day)
                count = len(d_log.entries)
                if count + 1 > scope.rpd:
                    admitted = False
                    wait_d = (
                        NEVER if scope.rpd == 0 else d_log.entries[count - scope.rpd][0] + day - now
                    )
            states.append((scope, m_log, d_log, wait_r, wait_t, wait_d))
        raw: list[int] = []
        for scope, m_log, d_log, wait_r, wait_t, wait_d in states:
            if admitted:
                if scope.uses_minute:
                    m_log.entries.append([now, member, tokens])
                    m_log.tokens += tokens
                if scope.rpd is not None:
                    d_log.entries.append([now, member, 0])
            m_reset = m_log.entries[-1][0] + minute - now if m_log.entries else 0
            d_reset = d_log.entries[-1][0] + day - now if d_log.entries else 0
            raw += [len(m_log.entries), m_log.tokens, len(d_log.entries), m_reset, d_reset,
                    wait_r, wait_t, wait_d]  # fmt: skip
        return admitted, raw

    async def correct(
        self, scopes: tuple[Scope, ...], member: str, estimate: int, actual: int
    ) -> None:
        for scope in scopes:
            log = self.logs.get(f"{scope.ident}:m")
            if log is None:
                continue
            # Recent calls are at the end; a settling call is rarely far from it.
            for entry in reversed(log.entries):
                if entry[1] == member:
                    entry[2] = actual
                    log.tokens = max(0, log.tokens + actual - estimate)
                    break

    def _sweep(self, now: int, minute: int, day: int) -> None:
        for name in list(self.logs):
            log = self.logs[name]
            log.trim(now - (day if name.endswith(":d") else minute))
            if not log.entries:
                del self.logs[name]

    async def close(self) -> None:
        self.logs.clear()


# --- the relay's entry points -------------------------------------------------------------------

_limiter: RedisLimiter | LocalLimiter | None = None


def limiter() -> RedisLimiter | LocalLimiter:
    global _limiter
    if _limiter is None:
        _limiter = RedisLimiter(settings.REDIS_URL) if settings.REDIS_URL else LocalLimiter()
    return _limiter


async def close() -> None:
    global _limiter
    if _limiter is not None:
        await _limiter.close()
        _limiter = None


async def admit(key: KeyInfo, *, member: str, tokens: int) -> Admission | None:
    """Check and consume the key's and its group's windows; None when neither has a limit.

    A refused call consumes nothing: the caller raises `admission.error()` (a 429).
    """
    scopes = scopes_of(key)
    if not scopes:
        return None
    try:
        admitted, raw = await limiter().check(scopes, member, tokens, None)
    except LimiterUnavailable:
        logger.exception("rate limiter unavailable; key %s passes unlimited", key.key_id)
        return None
    return Admission.from_raw(scopes, member, tokens, admitted, raw)


async def correct(admission: Admission | None, actual_tokens: int) -> None:
    """Swap a call's TPM estimate for the tokens it used (0 when it failed or was refused)."""
    if admission is None or not admission.admitted or not admission.counts_tokens:
        return
    if actual_tokens == admission.tokens:
        return
    try:
        await limiter().correct(admission.scopes, admission.member, admission.tokens, actual_tokens)
    except LimiterUnavailable:
        logger.exception("could not correct the TPM window of %s", admission.member)
