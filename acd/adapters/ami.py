"""AMI client: one long-lived connection to Asterisk's manager interface, kept up for ever.

The asyncio shell around `acd.protocol.ami.AmiCodec`. What it guarantees, each against a defect of
panoramisk and each with a test in tests/adapters/test_ami_client.py:
- `run()` logs in and checks the reply before calling the connection usable; bad credentials raise
  `AmiLoginFailed` out of `run()` instead of retrying for ever.
- A Ping every `ping_interval` must be answered within `ping_timeout`, otherwise the connection is
  treated as half-open, dropped and re-established.
- Any disconnect fails every pending action and every half-delivered EventList with
  `AmiDisconnected`; nothing waits for ever. Actions are never silently resent after a reconnect (an
  Originate sent twice is two calls): callers see the error and decide.
- Every event goes to every listener, including events carrying a pending action's ActionID
  (OriginateResponse) and list events; a listener that raises is logged and skipped.
- `on_connected` (the resync hook) runs after every login, in its own task, so the reader keeps
  reading: Asterisk drops a manager session that does not read within its `writetimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from acd.errors import (
    AmiActionFailed,
    AmiDisconnected,
    AmiLoginFailed,
    AmiTimeout,
    ProtocolError,
)
from acd.protocol.ami import AmiCodec, AmiMessage, FieldValue, encode_action

__all__ = ["AmiClient", "AmiListener"]

log = structlog.get_logger(__name__)

AmiListener = Callable[[AmiMessage], None]
_READ_SIZE = 64 * 1024


class _Pending:
    """An action waiting for its response (and, for a list action, its events)."""

    __slots__ = ("action", "events", "future", "is_list", "response")

    def __init__(self, action: str, future: asyncio.Future[None], *, is_list: bool) -> None:
        self.action = action
        self.future = future
        self.is_list = is_list
        self.response: AmiMessage | None = None
        self.events: list[AmiMessage] = []


class _Connection:
    """One TCP session: streams, codec, the actions pending on it, and whether it is gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = AmiCodec()
        self.pending: dict[str, _Pending] = {}
        self.lost = asyncio.Event()
        self.reason = ""

    def drop(self, reason: str, *, graceful: bool = False) -> None:
        """End the session now and fail whatever waits on it; idempotent.

        Not graceful by default: a half-open peer would never let a close finish flushing.
        """
        if self.lost.is_set():
            return
        self.reason = reason
        self.lost.set()
        if graceful:
            self.writer.close()
        else:
            self.writer.transport.abort()
        pending, self.pending = self.pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(
                    AmiDisconnected(f"AMI connection lost ({reason}) during {item.action}")
                )


class AmiClient:
    """A self-healing AMI connection; see the module docstring for what it guarantees."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        secret: str,
        ping_interval: float = 5.0,
        ping_timeout: float = 3.0,
        action_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._username = username
        self._secret = secret
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._action_timeout = action_timeout
        self._connect_timeout = connect_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_connected = on_connected
        self._listeners: list[AmiListener] = []
        # ActionIDs unique across controllers too, so a shared transcript or log is unambiguous.
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None  # the current session, logged in or not
        self._logged_in = False
        self._logins = 0
        self._running = False
        self._closing = False
        self._fatal: BaseException | None = None
        self._stop = asyncio.Event()
        # Replaced on every state change so waiters wake and re-check (a broadcast pulse).
        self._state_changed = asyncio.Event()

    # -- state -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in on a live connection."""
        return self._logged_in and self._conn is not None and not self._conn.lost.is_set()

    @property
    def reconnects(self) -> int:
        """Successful logins after the first one."""
        return max(0, self._logins - 1)

    def _pulse(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - public API fixed by callers; a deadline parameter is its contract
        """Return once logged in. Raises AmiTimeout after `timeout` seconds, AmiLoginFailed if
        `run()` stopped on bad credentials, AmiDisconnected if the client was closed."""
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    if self._fatal is not None:
                        raise self._fatal
                    if self._closing:
                        raise AmiDisconnected("AMI client closed")
                    await self._state_changed.wait()
        except TimeoutError:
            raise AmiTimeout(f"AMI not connected within {timeout}s") from None

    # -- listeners ---------------------------------------------------------------------------

    def add_listener(self, listener: AmiListener) -> Callable[[], None]:
        """Call `listener(event)` for every event; returns a function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def _notify(self, event: AmiMessage) -> None:
        # A copy: a listener may remove itself (or others) while being called.
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                # A listener bug must not kill the reader nor the rest of the chunk.
                log.exception("ami.listener_failed", listener=repr(listener), ami_event=event.event)

    # -- actions -----------------------------------------------------------------------------

    async def send_action(
        self,
        action: str,
        fields: Mapping[str, FieldValue] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - per-action deadline is part of the contract
    ) -> AmiMessage:
        """Send `action` and return its response.

        Raises AmiActionFailed on `Response: Error`, AmiDisconnected when not connected or dropped
        before the response, AmiTimeout without a response in time, ProtocolError for fields that
        would inject headers.
        """
        (pending,) = await self._exchange(
            self._live_connection(), [(action, fields or {})], timeout, is_list=False
        )
        assert pending.response is not None  # set before the future resolves
        return pending.response

    async def send_list_action(
        self,
        action: str,
        fields: Mapping[str, FieldValue] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline for the whole list
    ) -> list[AmiMessage]:
        """Send a list action (CoreShowChannels, QueueStatus...) and return the events it produced,
        up to but excluding the `EventList: Complete` marker. The deadline covers the whole list."""
        (pending,) = await self._exchange(
            self._live_connection(), [(action, fields or {})], timeout, is_list=True
        )
        return pending.events

    async def send_actions(
        self,
        actions: Sequence[tuple[str, Mapping[str, FieldValue]]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - deadline for all of them
    ) -> list[AmiMessage]:
        """Send several actions in one write and return their responses in order.

        Asterisk runs one session's actions in the order they arrive, so this keeps their order
        at the cost of one round trip instead of one each. Once every reply is in, the first
        failure in order is raised (AmiActionFailed); AmiTimeout, AmiDisconnected as
        send_action."""
        pendings = await self._exchange(self._live_connection(), actions, timeout, is_list=False)
        out = []
        for pending in pendings:
            assert pending.response is not None  # set before the future resolves
            out.append(pending.response)
        return out

    def _live_connection(self) -> _Connection:
        conn = self._conn
        if conn is None or not self.connected:
            raise AmiDisconnected("AMI not connected")
        return conn

    async def _exchange(
        self,
        conn: _Connection,
        actions: Sequence[tuple[str, Mapping[str, FieldValue]]],
        deadline: float | None,
        *,
        is_list: bool,
    ) -> list[_Pending]:
        """Write `actions` at once and wait for every reply; raise the first failure in order."""
        loop = asyncio.get_running_loop()
        frames: list[tuple[str, _Pending]] = []
        data = bytearray()
        for action, fields in actions:
            action_id = f"{self._id_prefix}.{next(self._ids)}"
            data += encode_action(action, action_id, fields)
            frames.append((action_id, _Pending(action, loop.create_future(), is_list=is_list)))
        if conn.lost.is_set():
            raise AmiDisconnected("AMI connection lost")
        names = ",".join(action for action, _ in actions)
        if deadline is None:
            deadline = self._action_timeout
        # Registered before writing: a reply must find its action however fast it comes.
        for action_id, pending in frames:
            conn.pending[action_id] = pending
        try:
            async with asyncio.timeout(deadline):
                conn.writer.write(bytes(data))
                await conn.writer.drain()
                await asyncio.wait([pending.future for _, pending in frames])
        except TimeoutError:
            raise AmiTimeout(f"no response to AMI {names} within {deadline}s") from None
        except ConnectionError as exc:
            conn.drop(f"write failed: {exc!r}")
            raise AmiDisconnected(f"AMI connection lost during {names}") from exc
        finally:
            for action_id, pending in frames:
                conn.pending.pop(action_id, None)
                if pending.future.done() and not pending.future.cancelled():
                    pending.future.exception()  # retrieved: no "never retrieved" on early exit
        for _, pending in frames:
            failure = pending.future.exception()
            if failure is not None:
                raise failure
        return [pending for _, pending in frames]

    # -- reading -----------------------------------------------------------------------------

    def _dispatch(self, conn: _Connection, message: AmiMessage) -> None:
        # Event first: OriginateResponse is an event that also carries a `Response:` header.
        if message.is_event:
            self._notify(message)
            self._on_event(conn, message)
        elif message.is_response:
            self._on_response(conn, message)
        else:
            log.debug("ami.unknown_message", fields=message.fields[:4])

    def _on_response(self, conn: _Connection, message: AmiMessage) -> None:
        action_id = message.action_id
        pending = conn.pending.get(action_id) if action_id is not None else None
        if pending is None or pending.future.done():
            # Late replies to actions that timed out end up here.
            log.debug("ami.unmatched_response", action_id=action_id, response=message.response)
            return
        if (message.response or "").lower() == "error":
            pending.future.set_exception(
                AmiActionFailed(pending.action, message.get("Message", "") or "")
            )
            return
        pending.response = message
        if not pending.is_list:
            pending.future.set_result(None)

    def _on_event(self, conn: _Connection, message: AmiMessage) -> None:
        action_id = message.action_id
        if action_id is None:
            return
        pending = conn.pending.get(action_id)
        if pending is None or not pending.is_list or pending.future.done():
            return
        if (message.get("EventList") or "").lower() == "complete":
            if pending.response is None:
                pending.response = message
            pending.future.set_result(None)
        else:
            pending.events.append(message)

    async def _read_loop(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.reader.read(_READ_SIZE)
                if not data:
                    conn.drop("eof")
                    return
                for message in conn.codec.feed(data):
                    self._dispatch(conn, message)
        except (OSError, ProtocolError) as exc:
            conn.drop(repr(exc))

    async def _watch_pings(self, conn: _Connection) -> None:
        """Detect a half-open connection: TCP alone may not notice a dead peer for minutes."""
        while not conn.lost.is_set():
            await asyncio.sleep(self._ping_interval)
            try:
                await self._exchange(conn, [("Ping", {})], self._ping_timeout, is_list=False)
            except AmiTimeout:
                log.warning("ami.ping_timeout", host=self._host, timeout=self._ping_timeout)
                conn.drop("ping timeout")
            except AmiActionFailed as exc:
                # Any answer proves the peer is alive.
                log.warning("ami.ping_failed", message=exc.message)
            except AmiDisconnected:
                return

    async def _run_on_connected(self, hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            # Reported, not fatal: the connection stays useful and the next reconnect resyncs.
            log.exception("ami.on_connected_failed")

    # -- the connection loop -----------------------------------------------------------------

    async def run(self) -> None:
        """Keep a logged-in connection up until cancelled or `close()`d.

        Raises AmiLoginFailed (not retried: retrying bad credentials only locks the account or
        floods the log). Cancellation propagates after the socket is closed.
        """
        if self._running:
            raise RuntimeError("AmiClient.run() is already running")
        self._running = True
        self._fatal = None
        backoff = self._backoff_initial
        try:
            while not self._closing:
                logged_in = await self._session()
                if self._closing:
                    break
                if logged_in:
                    backoff = self._backoff_initial
                delay = random.uniform(backoff / 2, backoff)
                log.info("ami.reconnecting", host=self._host, port=self._port, delay=delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                backoff = min(backoff * 2, self._backoff_max)
        except AmiLoginFailed as exc:
            self._fatal = exc
            raise
        finally:
            self._running = False
            self._pulse()

    async def _session(self) -> bool:
        """One connection from connect to loss; returns whether login succeeded."""
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError) as exc:
            log.warning("ami.connect_failed", host=self._host, port=self._port, error=repr(exc))
            return False
        conn = _Connection(reader, writer)
        self._conn = conn
        login_error: AmiLoginFailed | None = None
        logged_in = False
        try:
            if self._closing:
                return False
            if not await self._read_banner(conn):
                return False
            async with asyncio.TaskGroup() as tasks:
                children = [tasks.create_task(self._read_loop(conn))]
                try:
                    await self._login(conn)
                except AmiLoginFailed as exc:
                    login_error = exc
                except (AmiDisconnected, AmiTimeout) as exc:
                    log.warning("ami.login_interrupted", host=self._host, error=repr(exc))
                else:
                    logged_in = True
                    self._on_login(conn)
                    children.append(tasks.create_task(self._watch_pings(conn)))
                    if self._on_connected is not None:
                        children.append(
                            tasks.create_task(self._run_on_connected(self._on_connected))
                        )
                    await conn.lost.wait()
                finally:
                    conn.drop(conn.reason or "session ended")
                    for child in children:
                        child.cancel()
        finally:
            conn.drop(conn.reason or "session ended")
            self._conn = None
            if self._logged_in:
                self._logged_in = False
                log.warning("ami.disconnected", host=self._host, reason=conn.reason)
            self._pulse()
        if login_error is not None:
            log.error("ami.login_failed", host=self._host, username=self._username)
            raise login_error
        return logged_in

    async def _read_banner(self, conn: _Connection) -> bool:
        try:
            async with asyncio.timeout(self._connect_timeout):
                line = await conn.reader.readuntil(b"\r\n")
            conn.codec.feed(line)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            log.warning("ami.banner_failed", host=self._host, error=repr(exc))
            return False
        if conn.codec.banner is None:
            first = line[:80].decode(errors="replace")
            log.warning("ami.banner_failed", host=self._host, line=first)
            return False
        return True

    async def _login(self, conn: _Connection) -> None:
        fields = {"Username": self._username, "Secret": self._secret}
        try:
            await self._exchange(conn, [("Login", fields)], self._action_timeout, is_list=False)
        except AmiActionFailed as exc:
            raise AmiLoginFailed(
                f"AMI login as {self._username!r} refused: {exc.message}"
            ) from None

    def _on_login(self, conn: _Connection) -> None:
        self._logged_in = True
        self._logins += 1
        log.info(
            "ami.connected",
            host=self._host,
            port=self._port,
            banner=conn.codec.banner,
            reconnects=self.reconnects,
        )
        self._pulse()

    async def close(self) -> None:
        """Log off (best effort), drop the connection, fail pending actions and make `run()`
        return."""
        self._closing = True
        self._stop.set()
        conn = self._conn
        if conn is not None and not conn.lost.is_set():
            with contextlib.suppress(OSError, ProtocolError):
                conn.writer.write(encode_action("Logoff", f"{self._id_prefix}.logoff"))
            conn.drop("closed", graceful=True)
        self._pulse()
