"""Scripted fake peers for the adapter tests, on 127.0.0.1:0: an AMI server that plays Asterisk's
manager side, and an Asterisk that connects to our FastAGI server. Tests drive them step by step and
synchronise on what they receive, never on sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from acd.protocol.ami import AmiCodec, AmiMessage

STEP = 2.0  # seconds any single scripted step may take before the test fails
BANNER = b"Asterisk Call Manager/9.0.0\r\n"


def redis_overrides(url: str, prefix: str, **more: object) -> dict[str, object]:
    """`redis` settings for a test Redis. Those servers have no password, but the repository's
    acd.yaml names `.state/redis.secret`, which `make setup` generates: the password file is put
    at a path that cannot exist, so the controller sends no AUTH."""
    return {"url": url, "prefix": prefix, "password_file": "/dev/null/no-redis.secret", **more}


async def result_or_error(awaitable: Awaitable[Any]) -> Any:
    """Await and return the result, or the Exception raised, so a background task that is expected
    to fail does not tear down its TaskGroup."""
    try:
        return await awaitable
    except Exception as exc:  # noqa: BLE001 - the error is the value under test
        return exc


class Background:
    """Owns tasks started beside a test body (a TaskGroup), cancels them on exit.

    Unlike a bare `async with TaskGroup()` around the body, an assertion failing in the body comes
    out as itself rather than wrapped in an ExceptionGroup; a crash of a background task still fails
    the test.
    """

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._group.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._group.__aexit__(None, None, None)


def ami_bytes(fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """One AMI message on the wire."""
    pairs = fields.items() if isinstance(fields, Mapping) else fields
    return "".join(f"{k}: {v}\r\n" for k, v in pairs).encode() + b"\r\n"


class FakeAmiConnection:
    """The server side of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = AmiCodec()
        self.actions: asyncio.Queue[AmiMessage] = asyncio.Queue()
        self.seen: list[AmiMessage] = []
        self.closed = asyncio.Event()
        self.answer_pings = True

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_split(self, data: bytes, cut: int, pause: float = 0.05) -> None:
        """Write `data` in two pieces with a scripted pause, so the client reads them apart."""
        await self.send_raw(data[:cut])
        await asyncio.sleep(pause)
        await self.send_raw(data[cut:])

    async def send(self, *messages: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Write all messages in one write, so they reach the client as one TCP chunk."""
        await self.send_raw(b"".join(ami_bytes(m) for m in messages))

    async def reply(self, action: AmiMessage, response: str = "Success", **fields: str) -> None:
        await self.send(
            {"Response": response, "ActionID": action.action_id or "", **fields},
        )

    async def next_action(self, name: str | None = None) -> AmiMessage:
        """The next action not answered automatically (optionally checking its name)."""
        async with asyncio.timeout(STEP):
            action = await self.actions.get()
        if name is not None:
            assert action.get("Action") == name, action
        return action

    def close(self) -> None:
        self.writer.transport.abort()


AutoResponder = Callable[[FakeAmiConnection, AmiMessage], Awaitable[None]]


class FakeAmiServer:
    """Asterisk's manager side: answers Login and Ping itself, queues every other action."""

    def __init__(self, *, username: str = "acd", secret: str = "s3cret") -> None:
        self.username = username
        self.secret = secret
        self.answer_pings = True
        self.manual_login = False
        self.auto: dict[str, AutoResponder] = {}
        self.connections: list[FakeAmiConnection] = []
        self.accepted: asyncio.Queue[FakeAmiConnection] = asyncio.Queue()
        self.port = 0
        self._background = Background()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        await self._background.__aenter__()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.close()
        await self._background.__aexit__(et, exc, tb)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeAmiConnection(reader, writer)
        self.connections.append(conn)
        self.accepted.put_nowait(conn)
        self._background.start(self._serve(conn))

    async def next_connection(self) -> FakeAmiConnection:
        async with asyncio.timeout(STEP):
            return await self.accepted.get()

    async def _serve(self, conn: FakeAmiConnection) -> None:
        try:
            await conn.send_raw(BANNER)
            while data := await conn.reader.read(65536):
                for action in conn.codec.feed(data):
                    conn.seen.append(action)
                    await self._on_action(conn, action)
        except ConnectionError:
            pass
        finally:
            conn.closed.set()

    async def _on_action(self, conn: FakeAmiConnection, action: AmiMessage) -> None:
        name = action.get("Action") or ""
        if name == "Login" and not self.manual_login:
            if action.get("Username") == self.username and action.get("Secret") == self.secret:
                await conn.reply(action, Message="Authentication accepted")
                await conn.send({"Event": "FullyBooted", "Privilege": "system,all"})
            else:
                # What Asterisk does: refuse, then hang up.
                await conn.reply(action, "Error", Message="Authentication failed")
                conn.writer.close()
        elif name == "Ping":
            if self.answer_pings and conn.answer_pings:
                await conn.reply(action, Ping="Pong", Timestamp="1700000000.000000")
        elif name in self.auto:
            await self.auto[name](conn, action)
        else:
            conn.actions.put_nowait(action)


class FakeAsterisk:
    """Asterisk's side of one FastAGI connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> FakeAsterisk:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    @classmethod
    async def call(
        cls,
        port: int,
        script: str = "inbound",
        *,
        uniqueid: str = "1700000000.1",
        env: Mapping[str, str] | None = None,
    ) -> FakeAsterisk:
        """Connect and send a full environment header, as `AGI(agi://127.0.0.1/<script>)` does."""
        peer = await cls.connect(port)
        variables = {
            "network": "yes",
            "network_script": script,
            "request": f"agi://127.0.0.1/{script}",
            "channel": "PJSIP/trunk-00000001",
            "uniqueid": uniqueid,
            "callerid": "5551234",
            **(env or {}),
        }
        await peer.send_raw(
            "".join(f"agi_{k}: {v}\n" for k, v in variables.items()).encode() + b"\n"
        )
        return peer

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, *lines: str) -> None:
        await self.send_raw("".join(f"{line}\n" for line in lines).encode())

    async def read_command(self) -> str:
        async with asyncio.timeout(STEP):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed instead of a command: {line!r}"
        return line.decode().rstrip("\n")

    async def expect_eof(self) -> bytes:
        """Wait for the server to close, then close our side; returns whatever the server still
        sent (usually b"")."""
        try:
            async with asyncio.timeout(STEP):
                return await self.reader.read()
        finally:
            self.close()

    def hang_up(self) -> None:
        """Half-close, as Asterisk does when it ends the AGI; the server's close is still seen."""
        self.writer.write_eof()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.close()


async def send_list(
    conn: FakeAmiConnection,
    action: AmiMessage,
    complete: str,
    rows: Iterable[Mapping[str, str]] = (),
) -> None:
    """Answer a list action (CoreShowChannels, DeviceStateList...) with `rows` as its events."""
    aid = action.action_id or ""
    items = [{**row, "ActionID": aid} for row in rows]
    await conn.send(
        {"Response": "Success", "ActionID": aid, "EventList": "start"},
        *items,
        {"Event": complete, "ActionID": aid, "EventList": "Complete", "ListItems": str(len(items))},
    )


@contextlib.asynccontextmanager
async def controller_running(controller: Any) -> AsyncIterator[None]:
    """A Controller's AMI client, dispatcher and on-demand resync running beside the test (the
    rest of `Controller.run` left out); its store closed after."""
    tasks = [
        asyncio.create_task(controller.ami.run()),
        asyncio.create_task(controller.dispatcher.run()),
        asyncio.create_task(controller.resync_on_demand()),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await controller.store.close()
