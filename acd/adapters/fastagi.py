"""FastAGI server: Asterisk's `AGI(agi://controller/<route>)` calls land here, one task per call.

The asyncio shell around `acd.protocol.agi.AgiCodec`. Each behaviour below answers a defect of
panoramisk's FastAGI server and has a test in tests/adapters/test_fastagi.py:
- the environment header is read under `header_timeout`; a peer that closes or stalls before the
  blank line is dropped, never spun on;
- a `HANGUP` line in the stream is recorded (`hung_up`) and skipped, never taken as a reply, and a
  multi-line `520` reply is read whole, so replies never drift out of step with commands;
- EOF, `511` and `result=-1` from media commands surface as `AgiHangup`; every command has a timeout
  (`AgiTimeout`), after which the late reply is discarded so the next command still pairs correctly;
- arguments are always quoted (`encode_command`): caller data cannot inject a command;
- routes match `agi_network_script` without its `?query`;
- every connection task belongs to the server's TaskGroup and cancellation always propagates.

Asterisk never times out waiting for our next command, and after a hangup it waits for us to close
the socket: the connection is closed whatever way the handler ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType

import structlog

from acd.errors import (
    AcdError,
    AgiCommandFailed,
    AgiError,
    AgiHangup,
    AgiTimeout,
    ProtocolError,
)
from acd.protocol.agi import (
    AgiCodec,
    AgiEnvironment,
    AgiHangupNotice,
    AgiMessage,
    AgiReply,
    encode_command,
    route_of_script,
)

__all__ = ["AgiChannel", "FastAgiServer", "Handler"]

log = structlog.get_logger(__name__)

_READ_SIZE = 4096
# How long the best-effort `SET VARIABLE ACD_RESULT error` may take after a handler failed: the
# dialplan is waiting to send the caller to the fallback, so this must stay short.
_FAILURE_REPORT_TIMEOUT = 1.0


def _int_result(command: str, reply: AgiReply) -> int:
    try:
        return int(reply.result)
    except ValueError:
        raise ProtocolError(f"AGI {command} returned non-numeric result {reply.raw!r}") from None


class AgiChannel:
    """One AGI session on one channel: send commands, get replies, one command at a time.

    Never two commands in one write: res_agi waits for the socket to be readable before each
    command and reads it through a stdio buffer, so a second command that arrived with the
    first sits in that buffer unread until the session times out (seen on Asterisk 22)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: AgiEnvironment,
        *,
        command_timeout: float,
        codec: AgiCodec | None = None,
        backlog: Iterable[AgiMessage] = (),
    ) -> None:
        self.env: Mapping[str, str] = MappingProxyType(dict(env.variables))
        self._reader = reader
        self._writer = writer
        self._codec = codec if codec is not None else AgiCodec()
        self._command_timeout = command_timeout
        self._inbox: deque[AgiMessage] = deque(backlog)
        self._lock = asyncio.Lock()
        self._hung_up = False
        self._eof = False
        self._broken = False
        # Replies still owed to commands that timed out or were cancelled; they arrive in order and
        # are discarded so the next command gets its own reply.
        self._stale_replies = 0

    @property
    def uniqueid(self) -> str:
        return self.env.get("uniqueid", "")

    @property
    def hung_up(self) -> bool:
        """True once Asterisk reported a hangup (HANGUP line, 511) or closed the connection."""
        return self._hung_up

    async def command(
        self,
        command: str,
        *args: str,
        timeout: float | None = None,  # noqa: ASYNC109 - every AGI command needs its own deadline
    ) -> AgiReply:
        """Send one command and return its `200` reply.

        Raises AgiHangup on EOF or `511`, AgiCommandFailed on `510`, `520` and other codes,
        AgiTimeout without a reply within `timeout` (default: the server's command_timeout),
        ProtocolError for an argument with CR/LF/NUL.
        """
        line = encode_command(command, *args)
        deadline = self._command_timeout if timeout is None else timeout
        async with self._lock:
            if self._eof:
                raise AgiHangup(f"AGI connection already closed before {command}")
            if self._broken:
                raise ProtocolError(f"AGI session unusable after a protocol error ({command})")
            written = False
            reply: AgiReply | None = None
            try:
                async with asyncio.timeout(deadline):
                    self._writer.write(line)
                    written = True
                    await self._writer.drain()
                    reply = await self._next_reply()
            except TimeoutError:
                log.warning("agi.command_timeout", command=command, timeout=deadline)
                raise AgiTimeout(f"no reply to AGI {command} within {deadline}s") from None
            except ConnectionError as exc:
                self._mark_closed()
                raise AgiHangup(f"AGI connection lost during {command}") from exc
            except ProtocolError:
                # Which reply the garbage stood for is unknown: pairing can no longer be trusted.
                self._broken = True
                raise
            finally:
                if written and reply is None and not self._eof:
                    self._stale_replies += 1
        return self._check(command, reply)

    def _check(self, command: str, reply: AgiReply) -> AgiReply:
        if reply.code == 200:
            return reply
        if reply.code == 511:
            self._hung_up = True
            raise AgiHangup(f"AGI {command} refused on a dead channel: {reply.raw}")
        message = reply.raw[4:] if len(reply.raw) > 4 else reply.raw
        raise AgiCommandFailed(command, reply.code, message)

    def _mark_closed(self) -> None:
        self._eof = True
        self._hung_up = True

    async def _next_reply(self) -> AgiReply:
        while True:
            while self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, AgiHangupNotice):
                    if not self._hung_up:
                        log.info("agi.hangup_notice")
                    self._hung_up = True
                elif isinstance(item, AgiEnvironment):
                    raise ProtocolError("AGI environment sent twice")
                elif self._stale_replies:
                    self._stale_replies -= 1
                    log.debug("agi.stale_reply_discarded", raw=item.raw)
                else:
                    return item
            data = await self._reader.read(_READ_SIZE)
            if not data:
                self._mark_closed()
                raise AgiHangup("Asterisk closed the AGI connection")
            self._inbox.extend(self._codec.feed(data))

    # -- commands with typed results ---------------------------------------------------------

    async def answer(self) -> None:
        """ANSWER the channel; `result=-1` means the channel is gone."""
        reply = await self.command("ANSWER")
        if _int_result("ANSWER", reply) < 0:
            self._hung_up = True
            raise AgiHangup("ANSWER failed: channel hung up")

    async def stream_file(self, prompt: str, escape_digits: str = "") -> str:
        """Play `prompt`; return the escape digit pressed, or "" if it played to the end.

        `result=-1` ends the AGI session in Asterisk (hangup, or a prompt that cannot be opened).
        """
        reply = await self.command("STREAM FILE", prompt, escape_digits)
        return self._digit_result("STREAM FILE", reply)

    async def get_option(self, prompt: str, escape_digits: str, timeout_ms: int) -> str:
        """Play `prompt`, then wait up to `timeout_ms` for one of `escape_digits`, in ONE command:
        a digit pressed as the prompt ends is never lost between two commands (res_agi drops
        digits that arrive while no command runs). Returns the digit, or "" on timeout."""
        reply = await self.command("GET OPTION", prompt, escape_digits, str(timeout_ms))
        return self._digit_result("GET OPTION", reply)

    async def get_data(self, prompt: str, timeout_ms: int, max_digits: int) -> tuple[str, bool]:
        """Play `prompt` and collect up to `max_digits`; return (digits, timed_out)."""
        reply = await self.command("GET DATA", prompt, str(timeout_ms), str(max_digits))
        if reply.result == "-1":
            self._hung_up = True
            raise AgiHangup("GET DATA: channel hung up")
        return reply.result, reply.data == "timeout"

    async def wait_for_digit(self, timeout_ms: int) -> str:
        """Wait up to `timeout_ms` for one digit; "" on timeout."""
        reply = await self.command("WAIT FOR DIGIT", str(timeout_ms))
        return self._digit_result("WAIT FOR DIGIT", reply)

    def _digit_result(self, command: str, reply: AgiReply) -> str:
        code = _int_result(command, reply)
        if code < 0:
            self._hung_up = True
            raise AgiHangup(f"{command}: channel hung up")
        return chr(code) if code else ""

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET VARIABLE", name, value)

    async def get_variable(self, name: str) -> str | None:
        """The channel variable's value, or None when it is not set."""
        reply = await self.command("GET VARIABLE", name)
        if reply.result != "1":
            return None
        return reply.data if reply.data is not None else ""

    async def exec_app(self, app: str, *args: str) -> AgiReply:
        """EXEC a dialplan application; `args` are joined with "," as the application's data.

        Raises AgiCommandFailed when Asterisk has no such application (`result=-2`).
        """
        # res_agi passes only its third argument to the application, which splits it on commas.
        exec_args = (app, ",".join(args)) if args else (app,)
        reply = await self.command("EXEC", *exec_args)
        if reply.result == "-2":
            raise AgiCommandFailed("EXEC", reply.code, f"no application {app!r}")
        return reply

    async def verbose(self, message: str, level: int = 3) -> None:
        await self.command("VERBOSE", message, str(level))


Handler = Callable[[AgiChannel], Awaitable[None]]


def _close(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if transport.get_write_buffer_size():
        # A peer that stopped reading must not keep the socket (and this task's cleanup) alive.
        transport.abort()
    else:
        writer.close()


class FastAgiServer:
    """Listens for FastAGI connections and runs the handler of each call's route."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        header_timeout: float = 5.0,
        command_timeout: float = 30.0,
        secret: str | None = None,
    ) -> None:
        """`secret`: when set, every route is reached only as SECRET/route (the dialplan's
        ACD_AGI carries it), so a local process that is not Asterisk drives none."""
        self._routes = dict(routes)
        self._secret = secret
        self._host = host
        self.port = port
        self._header_timeout = header_timeout
        self._command_timeout = command_timeout

    async def serve(self, *, ready: Callable[[int], None] | None = None) -> None:
        """Accept calls until cancelled; `ready(port)` once listening (port 0 picks a free one).

        On cancellation every call task is cancelled and its socket closed, then the cancellation
        propagates.
        """
        async with asyncio.TaskGroup() as calls:

            def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                # A plain callback, not a coroutine: asyncio would wrap a coroutine in a task that
                # nobody owns. Here the server's TaskGroup owns every call.
                call = self._serve_call(reader, writer)
                try:
                    calls.create_task(call)
                except RuntimeError:
                    # The group is shutting down; refuse the call rather than run it unowned.
                    call.close()
                    writer.transport.abort()

            server = await asyncio.start_server(accept, self._host, self.port)
            try:
                self.port = server.sockets[0].getsockname()[1]
                log.info("agi.listening", host=self._host, port=self.port)
                if ready is not None:
                    ready(self.port)
                await asyncio.get_running_loop().create_future()
            finally:
                server.close()
                log.info("agi.stopped", host=self._host, port=self.port)

    async def _serve_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        codec = AgiCodec()
        try:
            received = await self._read_header(reader, codec, peer)
            if received is None:
                return
            env, backlog = received
            script = env.variables.get("network_script") or env.variables.get("request", "")
            route = route_of_script(script)
            uniqueid = env.variables.get("uniqueid", "")
            if self._secret is not None:
                given, _, route = route.partition("/")
                if not hmac.compare_digest(given.encode(), self._secret.encode()):
                    # Not Asterisk (or not ours): nothing is said of why, nor logged of it.
                    log.warning("agi.refused", peer=peer, uniqueid=uniqueid[:64])
                    return
            handler = self._routes.get(route)
            if handler is None:
                # The raw script carries the secret, when there is one: the route only then.
                shown = {"script": script} if self._secret is None else {}
                log.warning("agi.unknown_route", route=route[:64], uniqueid=uniqueid, **shown)
                return
            channel = AgiChannel(
                reader,
                writer,
                env,
                command_timeout=self._command_timeout,
                codec=codec,
                backlog=backlog,
            )
            with structlog.contextvars.bound_contextvars(uniqueid=uniqueid):
                await self._run_handler(handler, channel, route)
        except ProtocolError as exc:
            log.warning("agi.protocol_error", peer=peer, error=str(exc))
        except OSError as exc:
            log.warning("agi.connection_error", peer=peer, error=repr(exc))
        finally:
            _close(writer)

    async def _read_header(
        self, reader: asyncio.StreamReader, codec: AgiCodec, peer: object
    ) -> tuple[AgiEnvironment, list[AgiMessage]] | None:
        try:
            async with asyncio.timeout(self._header_timeout):
                while True:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        # panoramisk looped here for ever on EOF, freezing the whole loop.
                        log.info("agi.header_incomplete", peer=peer)
                        return None
                    messages = codec.feed(data)
                    if messages:
                        env = messages[0]
                        if not isinstance(env, AgiEnvironment):
                            raise ProtocolError("AGI stream did not start with the environment")
                        return env, messages[1:]
        except TimeoutError:
            log.warning("agi.header_timeout", peer=peer, timeout=self._header_timeout)
            return None

    async def _run_handler(self, handler: Handler, channel: AgiChannel, route: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # No caller ID here: logs outlive the retention rules of customer data.
        log.debug("agi.call_started", route=route, channel=channel.env.get("channel"))
        outcome = "completed"
        try:
            await handler(channel)
        except AgiHangup:
            outcome = "hangup"
        except AcdError as exc:
            # One of ours (Redis down, no trunk free, a flow without a fallback): expected, no
            # traceback. The call must still go somewhere: the dialplan reads ACD_RESULT.
            outcome = "error"
            log.warning(
                "agi.handler_failed", route=route, error=str(exc), error_type=type(exc).__name__
            )
            await self._report_failure(channel)
        except Exception:
            outcome = "error"
            log.exception("agi.handler_failed", route=route)
            await self._report_failure(channel)
        # A session that ended as planned is routine (every call has one): debug; a hangup or a
        # failure is worth a line.
        (log.debug if outcome == "completed" else log.info)(
            "agi.call_ended",
            route=route,
            outcome=outcome,
            duration=round(loop.time() - started, 3),
        )

    async def _report_failure(self, channel: AgiChannel) -> None:
        if channel.hung_up:
            return
        with contextlib.suppress(AgiError, ProtocolError, OSError):
            await channel.command(
                "SET VARIABLE",
                "ACD_RESULT",
                "error",
                timeout=min(_FAILURE_REPORT_TIMEOUT, self._command_timeout),
            )
