"""The controller's connection to Redis: one multiplexed connection that every task shares.

Every command any task issues goes into one write buffer, and the buffer goes out once per turn of
the event loop; Redis answers a connection's commands in the order it read them, so each reply
goes to the command that waits at the head of the line. At a peak, the commands of all the calls
in flight leave in one write and their replies come back in one read: a command costs a few
microseconds of the controller's CPU, where a pooled client spends over a hundred on checking a
connection out and back in, arming its timeouts and wrapping the reply (`bench/redis_link.py`
measures both on the same Redis).

What it guarantees (each with a test in tests/adapters/test_redis_link.py):
- A command is written once. If the connection is lost before its reply, it fails with
  `StoreUnavailable`: it may or may not have run, so a script that is not idempotent (a claim, an
  enqueue) is never run twice behind its caller's back. Only commands that read (`READS`) are
  sent again, once, on a fresh connection; so are commands that never left the buffer.
- Nothing waits longer than `timeout` for Redis: a connection whose oldest command has had no
  reply for that long is taken for dead (dropped, every waiting command fails); connecting,
  retried with a short backoff, gives up at the same deadline.
- Cancelling a command (an `asyncio.timeout` around it) is safe: its reply is read and dropped
  when it comes, and every other command still gets its own.
- Scripts go by their SHA1 (`Script`); a Redis that does not know one (restarted, flushed)
  answers NOSCRIPT, which means it did not run: the link loads it once and sends it again.
- Replies are decoded as UTF-8; an error reply raises `StoreReplyError`, or, inside a batch, is
  returned in its place (`batch` raises the first one after every reply has come).
- A blocking command (BLPOP) holds its connection until it returns: give it a link of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from acd.errors import StoreReplyError, StoreUnavailable

__all__ = ["READS", "LinkStats", "RedisLink", "ReplyError", "Script"]

Arg = str | bytes | int | float
ReplyError = hiredis.ReplyError

# Commands that only read: safe to send again on a fresh connection when the first one was lost
# before their reply came. Everything else is written once.
READS = frozenset(
    {
        "PING", "GET", "MGET", "EXISTS", "TTL", "PTTL", "TYPE", "SCAN",
        "HGET", "HMGET", "HGETALL", "HLEN", "HEXISTS", "HKEYS",
        "SMEMBERS", "SCARD", "SISMEMBER",
        "ZCARD", "ZCOUNT", "ZRANK", "ZSCORE", "ZRANGE", "ZRANGEBYSCORE", "ZREVRANGE",
        "LRANGE", "LLEN", "XRANGE", "XREVRANGE", "XLEN", "INFO",
    }
)  # fmt: skip
_CONNECT_BACKOFF_FIRST = 0.05  # seconds between connection attempts, doubling up to:
_CONNECT_BACKOFF_MAX = 0.5


@dataclass(frozen=True)
class Script:
    """A Lua script, run by its SHA1."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


class LinkStats(NamedTuple):
    commands: int  # commands written
    writes: int  # writes they took (several commands share one at a peak)
    waiting: int  # commands waiting for their reply now
    connects: int  # connections opened
    lost: int  # connections lost or dropped


@dataclass(frozen=True)
class _Address:
    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a unix socket instead of host:port
    tls: bool = False
    username: str = ""
    password: str = ""
    db: int = 0


def parse_url(url: str) -> _Address:
    """redis://[[user]:password@]host[:port][/db], rediss:// (TLS), unix:///path[?db=N&password=P].

    >>> parse_url("redis://:s3cret@127.0.0.1:6479/2")
    _Address(host='127.0.0.1', port=6479, path='', tls=False, username='', password='s3cret', db=2)
    >>> parse_url("unix:///run/redis.sock?db=1").path
    '/run/redis.sock'
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    password = unquote(parts.password or "") or query.get("password", [""])[0]
    username = unquote(parts.username or "")
    if parts.scheme == "unix":
        db = int(query.get("db", ["0"])[0] or 0)
        return _Address(path=parts.path, username=username, password=password, db=db)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {url!r}")
    path_db = parts.path.strip("/")
    db = int(path_db or query.get("db", ["0"])[0] or 0)
    return _Address(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        tls=parts.scheme == "rediss",
        username=username,
        password=password,
        db=db,
    )


class _Waiter(NamedTuple):
    future: asyncio.Future[Any]
    command: bytes  # as written, to send it again (reads, and commands never written)
    since: float  # loop time it was issued
    read: bool


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a reply nobody awaits as seen (a SCRIPT LOAD sent ahead of its script)."""
    if not future.cancelled():
        future.exception()


def _fail(waiters: list[_Waiter], error: Exception) -> None:
    """Fail the commands of `waiters` still waiting (and mark the error seen: a caller that gave
    up, a cancelled one, must not leave an unretrieved exception behind)."""
    for waiter in waiters:
        if not waiter.future.done():
            waiter.future.set_exception(error)
            waiter.future.exception()


class _Connection(asyncio.Protocol):
    """One connection: the write buffer, the commands waiting for their replies, in order."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace")
        self._transport: asyncio.Transport | None = None
        self._buffer: list[bytes] = []
        self._unsent: list[_Waiter] = []  # issued, in the buffer, not written yet
        self.waiting: deque[_Waiter] = deque()  # written, in order, replies to come
        self._timer: asyncio.TimerHandle | None = None
        self.alive = False
        self.made = self._loop.create_future()
        # Scripts loaded on this connection (SCRIPT LOAD went ahead of their first EVALSHA).
        self.scripts: set[str] = set()

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.alive = True
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := reader.gets()) is not False:
                if not waiting:
                    self.drop("protocol error: a reply nobody asked for")
                    return
                future = waiting.popleft().future
                if not future.done():  # a cancelled caller's reply is dropped
                    future.set_result(reply)
        except hiredis.ProtocolError as exc:
            self.drop(f"protocol error: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection lost: {exc}" if exc else "connection closed by Redis")

    # -- the link's side --
    def send(self, command: bytes, *, read: bool) -> asyncio.Future[Any]:
        future = self._loop.create_future()
        self.enqueue(_Waiter(future, command, self._loop.time(), read))
        return future

    def enqueue(self, waiter: _Waiter) -> None:
        if not self.alive:
            # Lost between the caller getting this connection and issuing its command (the
            # caller resumed after the connection's end was read): never written, so it goes
            # on the next connection.
            self._link.send_again([waiter])
            return
        if not self._buffer:
            self._loop.call_soon(self._flush)
        self._buffer.append(waiter.command)
        self._unsent.append(waiter)

    def _flush(self) -> None:
        if not self._buffer:
            return
        if not self.alive or self._transport is None:
            # Lost before these were written: they never reached Redis, so the next
            # connection takes them (_lost has handed them over already).
            return
        data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._link.note_write(len(self._buffer))
        self._buffer = []
        self.waiting.extend(self._unsent)
        self._unsent = []
        if self._timer is None:
            self._arm(self.waiting[0].since)
        self._transport.write(data)

    def _arm(self, since: float) -> None:
        self._timer = self._loop.call_at(since + self._link.timeout, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self.waiting:
            return
        oldest = self.waiting[0].since
        if self._loop.time() - oldest >= self._link.timeout:
            self.drop(f"no reply within {self._link.timeout} s")
        else:
            self._arm(oldest)

    def drop(self, reason: str) -> None:
        """Take the connection for dead now: fail (or hand over) what waits on it."""
        if self._transport is not None:
            self._transport.abort()
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if not self.alive and not self.waiting and not self._unsent:
            return
        self.alive = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        written, self.waiting = self.waiting, deque()
        unsent, self._unsent, self._buffer = self._unsent, [], []
        if not self.made.done():
            self.made.set_exception(StoreUnavailable(f"redis: {reason}"))
        self._link.lost(self, reason, written, unsent)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 3.0,
        connect_timeout: float = 2.0,
        name: str = "acd",
    ) -> None:
        """`timeout`: the longest a command waits for Redis, connecting included;
        `connect_timeout`: one connection attempt at most; `name`: CLIENT SETNAME."""
        self._address = parse_url(url)
        self.url = url
        self.timeout = timeout
        self._connect_timeout = min(connect_timeout, timeout)
        self._name = name
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._scripts: dict[str, str] = {}
        self._closed = False
        self._commands = self._writes = self._connects = self._lost = 0
        # The link's own tasks (a connection being opened, reads sent again): owned here,
        # cancelled by close().
        self._tasks: set[asyncio.Task[None]] = set()

    def stats(self) -> LinkStats:
        waiting = len(self._conn.waiting) if self._conn is not None else 0
        return LinkStats(self._commands, self._writes, waiting, self._connects, self._lost)

    def note_write(self, commands: int) -> None:
        self._commands += commands
        self._writes += 1

    # -- commands --
    async def execute(self, *args: Arg) -> Any:
        """Send one command; its reply (an error reply raises StoreReplyError)."""
        reply = await self._send(args)
        if type(reply) is ReplyError:
            if str(reply).startswith("NOSCRIPT") and args[0] == "EVALSHA":
                reply = await self._reload(args)
            if type(reply) is ReplyError:
                raise StoreReplyError(f"redis: {reply}")
        return reply

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA `script` (loaded first if this Redis does not know it)."""
        self._scripts[script.sha] = script.text
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    def script_command(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> tuple[Arg, ...]:
        """The EVALSHA command of `script`, for `batch`."""
        self._scripts[script.sha] = script.text
        return ("EVALSHA", script.sha, len(keys), *keys, *args)

    async def batch(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send several commands in one write; their replies in order. An error reply stays in
        its place until every reply has come, then the first one raises StoreReplyError."""
        replies = await self.batch_replies(commands)
        for reply in replies:
            if type(reply) is ReplyError:
                raise StoreReplyError(f"redis: {reply}")
        return replies

    async def batch_replies(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Like `batch`, with error replies (ReplyError) returned in their places."""
        conn = self._live()
        if conn is None:
            conn = await self._connect()
        futures = [self._issue(conn, command) for command in commands]
        replies = [await f for f in futures]
        for i, reply in enumerate(replies):
            command = commands[i]
            if type(reply) is ReplyError and command[0] == "EVALSHA":
                if str(reply).startswith("NOSCRIPT"):
                    replies[i] = await self._reload(command)
        return replies

    async def transaction(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """MULTI, `commands`, EXEC in one write: all or none. Their replies, from EXEC."""
        replies = await self.batch([("MULTI",), *commands, ("EXEC",)])
        result = replies[-1]
        if result is None:
            raise StoreReplyError("redis: transaction aborted")
        for reply in result:
            if type(reply) is ReplyError:
                raise StoreReplyError(f"redis: {reply}")
        return list(result)

    async def _reload(self, command: Sequence[Arg]) -> Any:
        text = self._scripts.get(str(command[1]))
        if text is None:
            return ReplyError(f"NOSCRIPT unknown script {command[1]!r}")
        await self.execute("SCRIPT", "LOAD", text)
        return await self._send(tuple(command))

    async def _send(self, args: Sequence[Arg]) -> Any:
        conn = self._live()
        if conn is None:
            conn = await self._connect()
        return await self._issue(conn, args)

    def _issue(self, conn: _Connection, args: Sequence[Arg]) -> asyncio.Future[Any]:
        try:
            command = hiredis.pack_command(cast(Any, tuple(args)))
        except TypeError as exc:
            raise StoreReplyError(f"redis: cannot send {args[:1]!r}: {exc}") from exc
        if args[0] == "EVALSHA" and (sha := str(args[1])) not in conn.scripts:
            # The script's first use on this connection: SCRIPT LOAD goes ahead of it, in the
            # same write. Were it to meet NOSCRIPT instead, the commands written after it would
            # run before it (a batch's enqueue after its claim: a caller nobody claims).
            if (text := self._scripts.get(sha)) is not None:
                load = cast(Any, ("SCRIPT", "LOAD", text))
                loaded = conn.send(hiredis.pack_command(load), read=False)
                loaded.add_done_callback(_retrieve)
                conn.scripts.add(sha)
        return conn.send(command, read=str(args[0]).upper() in READS)

    def _live(self) -> _Connection | None:
        conn = self._conn
        return conn if conn is not None and conn.alive else None

    # -- connecting --
    async def _connect(self) -> _Connection:
        if self._closed:
            raise StoreUnavailable("redis: the link is closed")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_future()
            self._spawn(self._open(self._connecting))
        # Shielded: one caller giving up must not cancel the connection the others wait for.
        return await asyncio.shield(self._connecting)

    async def _open(self, result: asyncio.Future[_Connection]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        delay = _CONNECT_BACKOFF_FIRST
        error = "not tried"
        while True:
            try:
                async with asyncio.timeout(
                    max(0.001, min(self._connect_timeout, deadline - loop.time()))
                ):
                    conn = await self._open_once()
            except (OSError, TimeoutError, StoreUnavailable) as exc:
                error = str(exc) or type(exc).__name__
            else:
                self._conn = conn
                self._connects += 1
                if not result.done():
                    result.set_result(conn)
                return
            if self._closed or loop.time() + delay >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(2 * delay, _CONNECT_BACKOFF_MAX)
        if not result.done():
            result.set_exception(StoreUnavailable(f"redis: cannot connect: {error}"))
            result.exception()  # retrieved: callers may all have given up

    async def _open_once(self) -> _Connection:
        """One attempt: connect, authenticate, select the database, name the connection."""
        loop = asyncio.get_running_loop()
        a = self._address
        conn = _Connection(self)
        if a.path:
            await loop.create_unix_connection(lambda: conn, a.path)
        else:
            context = ssl.create_default_context() if a.tls else None
            await loop.create_connection(lambda: conn, a.host, a.port, ssl=context)
        await conn.made
        hello: list[tuple[Arg, ...]] = []
        if a.password:
            user: tuple[Arg, ...] = (a.username,) if a.username else ()
            hello.append(("AUTH", *user, a.password))
        if a.db:
            hello.append(("SELECT", a.db))
        hello.append(("CLIENT", "SETNAME", self._name))
        futures = [conn.send(hiredis.pack_command(cast(Any, c)), read=False) for c in hello]
        for command, future in zip(hello, futures, strict=True):
            reply = await future
            if type(reply) is ReplyError:
                conn.drop("refused")
                raise StoreUnavailable(f"redis: {command[0]!s} refused: {reply}")
        return conn

    def lost(
        self, conn: _Connection, reason: str, written: deque[_Waiter], unsent: list[_Waiter]
    ) -> None:
        """`conn` is gone: reads and commands never written go again on a fresh connection;
        every other written command fails (it may have run)."""
        if self._conn is conn:
            self._conn = None
        self._lost += 1
        _fail([w for w in written if not w.read], StoreUnavailable(f"redis: {reason}"))
        again = [w for w in (*written, *unsent) if w.read or w in unsent]
        again = [w for w in again if not w.future.done()]
        if again and not self._closed:
            self.send_again(again)
        else:
            _fail(again, StoreUnavailable(f"redis: {reason}"))

    def send_again(self, waiters: list[_Waiter]) -> None:
        """Send `waiters` on a fresh connection (reads, and commands never written)."""
        if self._closed:
            _fail(waiters, StoreUnavailable("redis: the link is closed"))
        else:
            self._spawn(self._send_again(waiters))

    async def _send_again(self, waiters: list[_Waiter]) -> None:
        try:
            conn = await self._connect()
        except StoreUnavailable as exc:
            _fail(waiters, exc)
            return
        now = asyncio.get_running_loop().time()
        late = [w for w in waiters if now - w.since >= self.timeout]
        _fail(late, StoreUnavailable(f"redis: no reply within {self.timeout} s"))
        for waiter in waiters:
            if not waiter.future.done():
                # Sent again once: not read again if this connection is lost too.
                conn.enqueue(waiter._replace(read=False))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close the connection; commands still waiting fail with StoreUnavailable."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.drop("the link was closed")
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
