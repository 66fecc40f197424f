"""RedisLink against a real redis-server, and against a scripted peer for what a real one will not
do on cue (stay silent, drop the connection after reading, answer late, send garbage). Each test
runs on asyncio's own loop and on uvloop's, which the controller runs on
(tests/adapters/conftest.py): uvloop's transports are not asyncio's classes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hiredis
import pytest

from acd.adapters.redis_link import RedisLink, Script, parse_url
from acd.errors import StoreReplyError, StoreUnavailable


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[RedisLink]:
    one = RedisLink(redis_url, timeout=2.0)
    yield one
    await one.close()


@dataclass
class Peer:
    """A scripted Redis on 127.0.0.1: it records the commands it reads and does what `act`
    says with each: 'reply' (bulk string of the command's last argument), 'close' (drop the
    connection without replying), 'silent', 'hold' (reply once `release` is set), 'garbage'."""

    act: Callable[[list[str], int], str]
    close_after_hello: int = 0  # connections dropped right after the link's CLIENT SETNAME
    seen: list[list[str]] = field(default_factory=list)
    connections: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = hiredis.Reader(encoding="utf-8")
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    self.seen.append(command)
                    if command[0] == "CLIENT":
                        writer.write(b"+OK\r\n")
                        if self.connections <= self.close_after_hello:
                            await writer.drain()
                            writer.close()
                            return
                        continue
                    action = self.act(command, self.connections)
                    if action == "close":
                        writer.close()
                        return
                    if action == "garbage":
                        writer.write(b"!nonsense\r\n")
                    elif action == "hold":
                        await self.release.wait()
                    if action in ("reply", "hold"):
                        value = command[-1].encode()
                        writer.write(b"$%d\r\n%s\r\n" % (len(value), value))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer(act=lambda command, n: "reply")
    p.server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    yield p
    p.server.close()


async def test_commands_issued_together_go_in_one_write_and_each_gets_its_reply(
    link: RedisLink,
) -> None:
    """Fifty tasks each SET then GET their own key at once: two writes carry all hundred
    commands, and every task reads back its own value."""

    async def one(i: int) -> str:
        await link.execute("SET", f"k{i}", f"v{i}")
        return str(await link.execute("GET", f"k{i}"))

    await link.execute("PING")
    before = link.stats()
    values = await asyncio.gather(*(one(i) for i in range(50)))
    assert values == [f"v{i}" for i in range(50)]
    after = link.stats()
    assert after.commands - before.commands == 100
    assert after.writes - before.writes == 2


async def test_a_batch_keeps_order_and_raises_its_first_error_after_every_reply(
    link: RedisLink,
) -> None:
    """An error reply in the middle of a batch does not stop the commands after it; the batch
    raises it (not retriable) once all have run, and batch_replies returns it in its place."""
    await link.execute("SET", "text", "abc")
    with pytest.raises(StoreReplyError) as info:
        await link.batch([("SET", "a", "1"), ("INCR", "text"), ("SET", "b", "2")])
    assert not info.value.retriable
    assert await link.batch([("GET", "a"), ("GET", "b")]) == ["1", "2"]
    replies = await link.batch_replies([("INCR", "text"), ("GET", "a")])
    assert isinstance(replies[0], hiredis.ReplyError)
    assert replies[1] == "1"


async def test_a_transaction_is_all_or_nothing(link: RedisLink) -> None:
    """MULTI/EXEC in one write; EXEC's replies come back."""
    assert await link.transaction([("INCR", "n"), ("INCRBY", "n", 5)]) == [1, 6]


async def test_a_script_redis_forgot_is_loaded_again_and_runs_once(link: RedisLink) -> None:
    """After SCRIPT FLUSH (as after a restart), the next run loads the script and runs it once:
    NOSCRIPT means it had not run."""
    count = Script("return redis.call('INCR', KEYS[1])")
    assert await link.run_script(count, ["runs"], []) == 1
    await link.execute("SCRIPT", "FLUSH")
    assert await link.run_script(count, ["runs"], []) == 2
    await link.execute("SCRIPT", "FLUSH")
    replies = await link.batch([link.script_command(count, ["runs"], []), ("GET", "runs")])
    assert replies == [3, "2"]  # the GET was read before the script ran again
    assert await link.execute("GET", "runs") == "3"


async def test_scripts_new_to_this_redis_run_in_the_order_of_their_batch(link: RedisLink) -> None:
    """An enqueue and a claim in one batch, the enqueue's script not loaded on this Redis yet
    (its first caller since Redis started) and the claim's loaded: the claim sees the caller
    the enqueue queued. (The first EVALSHA used to meet NOSCRIPT, so the second ran first,
    found an empty queue, and the caller waited unclaimed with agents free.)"""
    enqueue = Script("redis.call('RPUSH', KEYS[1], ARGV[1]) return 1")
    claim = Script("return redis.call('LPOP', KEYS[1])")
    assert await link.run_script(claim, ["q"], []) is None  # the claim is known already
    first = await link.batch(
        [link.script_command(enqueue, ["q"], ["caller"]), link.script_command(claim, ["q"], [])]
    )
    assert first == [1, "caller"]
    again = await link.batch(
        [link.script_command(enqueue, ["q"], ["next"]), link.script_command(claim, ["q"], [])]
    )
    assert again == [1, "next"]
    assert await link.execute("SCRIPT", "EXISTS", enqueue.sha, claim.sha) == [1, 1]


async def test_a_write_whose_connection_is_lost_fails_and_a_read_goes_again(peer: Peer) -> None:
    """The peer drops the first connection as soon as it has read a SET and a GET: the SET
    fails (it may have run: never sent twice), the GET is sent again on a new connection."""

    def act(command: list[str], connection: int) -> str:
        if connection > 1:
            return "reply"
        return "close" if command[0] == "GET" else "silent"

    peer.act = act
    link = RedisLink(peer.url, timeout=2.0)
    try:
        write = asyncio.ensure_future(link.execute("SET", "k", "written"))
        read = asyncio.ensure_future(link.execute("GET", "read"))
        assert await read == "read"
        with pytest.raises(StoreUnavailable) as info:
            await write
        assert info.value.retriable
        assert [c for c in peer.seen if c[0] != "CLIENT"] == [
            ["SET", "k", "written"], ["GET", "read"], ["GET", "read"],
        ]  # fmt: skip
        assert link.stats().connects == 2
    finally:
        await link.close()


async def test_a_silent_redis_fails_every_waiting_command_after_the_timeout(peer: Peer) -> None:
    """No reply within the timeout: the connection is dropped and each waiting command fails
    with StoreUnavailable; nothing waits for ever."""
    peer.act = lambda command, n: "silent" if n == 1 else "reply"
    link = RedisLink(peer.url, timeout=0.3)
    try:
        results = await asyncio.gather(
            link.execute("SET", "a", "1"), link.execute("SET", "b", "2"), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert link.stats().lost == 1
        assert await link.execute("SET", "c", "3") == "3"  # a new connection answers
    finally:
        await link.close()


async def test_a_cancelled_command_leaves_every_other_reply_in_place(peer: Peer) -> None:
    """A caller gives up on a slow command; the replies that follow still reach their own
    callers (the late reply is read and dropped)."""
    peer.act = lambda command, n: "hold" if command[-1] == "slow" else "reply"
    link = RedisLink(peer.url, timeout=5.0)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await link.execute("GET", "slow")
        after = asyncio.ensure_future(link.execute("GET", "after"))
        await asyncio.sleep(0.05)
        peer.release.set()
        assert await after == "after"
        assert await link.execute("GET", "again") == "again"
    finally:
        await link.close()


async def test_garbage_from_the_peer_drops_the_connection(peer: Peer) -> None:
    """A reply that is not RESP fails the command and the connection; the next one is new."""
    peer.act = lambda command, n: "garbage" if n == 1 else "reply"
    link = RedisLink(peer.url, timeout=2.0)
    try:
        with pytest.raises(StoreUnavailable):
            await link.execute("SET", "a", "1")
        assert await link.execute("SET", "a", "2") == "2"
        assert link.stats().connects == 2
    finally:
        await link.close()


async def test_nothing_listening_is_a_retriable_error(tmp_path: Path) -> None:
    """No Redis at the address: StoreUnavailable, retriable, once the timeout is spent."""
    link = RedisLink(f"unix://{tmp_path}/none.sock", timeout=0.3)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await link.execute("PING")
        assert info.value.retriable
        assert "cannot connect" in str(info.value)
    finally:
        await link.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tcp_redis(tmp_path: Path) -> Iterator[int]:
    """A private redis-server on a TCP port of 127.0.0.1 with a password."""
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "s3cret"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(5)


async def test_the_url_gives_password_and_database(tcp_redis: int) -> None:
    """redis://:PASSWORD@host:port/DB authenticates and selects; a wrong password is refused."""
    db3 = RedisLink(f"redis://:s3cret@127.0.0.1:{tcp_redis}/3", timeout=2.0)
    db0 = RedisLink(f"redis://:s3cret@127.0.0.1:{tcp_redis}", timeout=2.0)
    wrong = RedisLink(f"redis://:nope@127.0.0.1:{tcp_redis}", timeout=0.5)
    try:
        await db3.execute("SET", "where", "three")
        assert await db0.execute("GET", "where") is None
        assert await db3.execute("GET", "where") == "three"
        with pytest.raises(StoreUnavailable, match="AUTH refused"):
            await wrong.execute("PING")
    finally:
        for one in (db3, db0, wrong):
            await one.close()


def test_urls_are_read_as_redis_py_reads_them() -> None:
    """Scheme, host, port, database, password, unix socket path."""
    a = parse_url("rediss://user:p%40ss@redis.example:6380/4")
    assert (a.tls, a.host, a.port, a.db, a.username, a.password) == (
        True, "redis.example", 6380, 4, "user", "p@ss",
    )  # fmt: skip
    assert parse_url("unix:///tmp/r.sock?db=2&password=x").db == 2
    with pytest.raises(ValueError, match="not a Redis URL"):
        parse_url("http://127.0.0.1")


async def test_a_restarted_redis_is_found_again(tmp_path: Path) -> None:
    """redis-server is killed and started again on the same socket while the loop is busy: the
    next read is answered by the new server."""
    sock = tmp_path / "r.sock"

    def start() -> subprocess.Popen[bytes]:
        sock.unlink(missing_ok=True)
        proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        while not sock.exists():
            time.sleep(0.02)
        return proc

    proc = start()
    link = RedisLink(f"unix://{sock}", timeout=2.0)
    try:
        await link.execute("SET", "k", "old")
        proc.kill()
        proc.wait()
        proc = start()
        assert await link.execute("GET", "k") is None
        assert await link.execute("SET", "k", "new") == "OK"
    finally:
        await link.close()
        proc.kill()
        proc.wait()


async def test_closing_fails_what_still_waits(peer: Peer) -> None:
    """close() with a command waiting: it fails with StoreUnavailable, and later ones too."""
    peer.act = lambda command, n: "silent"
    link = RedisLink(peer.url, timeout=5.0)
    waiting = asyncio.ensure_future(link.execute("GET", "x"))
    await asyncio.sleep(0.05)
    await link.close()
    with pytest.raises(StoreUnavailable):
        await waiting
    with pytest.raises(StoreUnavailable, match="closed"):
        await link.execute("GET", "x")


async def test_a_connection_lost_as_it_opened_loses_no_command(peer: Peer) -> None:
    """The peer drops the first connection right after it opened: the commands issued on it,
    never written, go on the next one."""
    peer.close_after_hello = 1
    link = RedisLink(peer.url, timeout=2.0)
    try:
        assert await asyncio.gather(
            link.execute("SET", "a", "1"), link.execute("SET", "b", "2")
        ) == ["1", "2"]
        assert link.stats().connects == 2
    finally:
        await link.close()
