"""`acd up` / `acd down`: Redis (only if none answers), Asterisk and the controller, together.

In the foreground, `acd up` runs the controller in this process and Asterisk (and Redis, if we
started it) as children, and stops them on exit. `acd up --detach` starts that same foreground
process in the background, records its pid in STATE/acd.pid and returns once the controller is
ready; `acd down` signals it and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import structlog
import uvloop

from acd.config import Settings, read_secret, redis_password
from acd.domain.flow import Flow
from acd.errors import AcdError, ConfigError
from acd.runtime import asterisk
from acd.runtime.controller import Controller
from acd.runtime.flows import load_checked_flows

log = structlog.get_logger(__name__)

REDIS_CONF = Path(__file__).resolve().parents[2] / "redis" / "redis.conf"


def _port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redis_address(settings: Settings) -> tuple[str, int]:
    url = urlparse(settings.redis.url)
    return url.hostname or "127.0.0.1", url.port or 6379


def _wait_for(check: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AcdError(f"{what} did not come up within {timeout:.0f} s")


def state_dir(settings: Settings) -> Path:
    path = settings.resolve(settings.state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RedisProcess:
    """The redis-server `acd up` started (or None if one already answered): restarted when it
    dies, from its append-only file, so what the controllers wrote survives."""

    def __init__(self, host: str, port: int, data: Path, password: str | None = None) -> None:
        self.host, self.port, self.data = host, port, data
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def _config(self) -> Path:
        """The server's configuration: the shipped one, and the password (in a file only its
        owner reads, not on the command line, where `ps` would show it)."""
        if self.password is None:
            return REDIS_CONF
        conf = self.data / "redis-acd.conf"
        conf.touch(mode=0o600)
        conf.chmod(0o600)
        conf.write_text(f"include {REDIS_CONF}\nrequirepass {self.password}\n", encoding="utf-8")
        return conf

    def start(self) -> None:
        with (self.data / "redis.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    "redis-server",
                    str(self._config()),
                    "--port",
                    str(self.port),
                    "--dir",
                    str(self.data),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        _wait_for(
            lambda: _port_open(self.host, self.port) or proc.poll() is not None, "redis-server", 30
        )
        if proc.poll() is not None:
            raise AcdError(
                f"redis-server exited with {proc.returncode}; see {self.data / 'redis.log'}"
            )
        log.info("stack.redis_started", port=self.port, pid=proc.pid, restarts=self.restarts)

    def keep_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.error("stack.redis_exited", returncode=self.proc.returncode)
            self.restarts += 1
            self.start()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "redis-server")


def _check_password(settings: Settings, host: str, port: int) -> None:
    """A Redis that already answers must take the password the controllers will log in with
    (else they would fail on every command): a clear error now instead."""
    password = redis_password(settings)
    if password is None:
        return
    user = unquote(urlparse(settings.redis.url).username or "")
    words = [b"AUTH", *([user.encode()] if user else []), password.encode()]
    command = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    with socket.create_connection((host, port), timeout=3) as sock:
        sock.sendall(command)
        reply = sock.recv(512).decode(errors="replace").strip()
    if not reply.startswith("+OK"):
        raise ConfigError(
            f"{settings.source}: the Redis on {host}:{port} refuses our password ({reply[:80]}); "
            "give it `requirepass` from redis.password_file, or the URL its own password"
        )


@contextlib.contextmanager
def redis_server(settings: Settings) -> Iterator[RedisProcess | None]:
    """Start redis-server on the configured address unless one already answers there."""
    if settings.redis.url.startswith("unix://"):
        log.info("stack.redis_socket", url=settings.redis.url)  # run by someone else
        yield None
        return
    host, port = _redis_address(settings)
    if _port_open(host, port):
        log.info("stack.redis_found", host=host, port=port)
        _check_password(settings, host, port)
        yield None
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"{settings.source}: redis.url: nothing answers on {host}:{port}")
    data = state_dir(settings) / "redis"
    data.mkdir(exist_ok=True)
    password = redis_password(settings)
    if password is None:
        log.warning("stack.redis_without_password", hint="run `make setup` (.state/redis.secret)")
    redis = RedisProcess(host, port, data, password)
    try:
        redis.start()
        yield redis
    finally:
        redis.stop()


class AsteriskProcess:
    """The node's Asterisk, restarted when it dies (with the same rendered configuration).
    Calls up when it died are gone with it; the controller reconnects to the new one and its
    resync ends what Redis still held of them and frees their agents."""

    def __init__(self, settings: Settings) -> None:
        self.paths = asterisk.node_paths(settings)
        self.ami = settings.asterisk.ami
        self.node = settings.asterisk.node
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        if _port_open(self.ami.host, self.ami.port):
            raise AcdError(
                f"something already listens on AMI {self.ami.host}:{self.ami.port}; "
                "`acd down` first?"
            )
        with self.paths.console_log.open("ab") as out:
            self.proc = subprocess.Popen(
                asterisk.launch_command(self.paths),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = self.proc
        _wait_for(
            lambda: _port_open(self.ami.host, self.ami.port) or proc.poll() is not None,
            "Asterisk",
            60,
        )
        if proc.poll() is not None:
            raise AcdError(f"Asterisk exited with {proc.returncode}; see {self.paths.console_log}")
        log.info("stack.asterisk_started", node=self.node, pid=proc.pid, restarts=self.restarts)

    def keep_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.error("stack.asterisk_exited", node=self.node, returncode=self.proc.returncode)
            self.restarts += 1
            # Its AMI port may linger a moment after a crash: wait for it to close first.
            with contextlib.suppress(AcdError):
                _wait_for(lambda: not _port_open(self.ami.host, self.ami.port), "AMI close", 10)
            self.start()

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "asterisk")


@contextlib.contextmanager
def asterisk_node(settings: Settings) -> Iterator[AsteriskProcess]:
    paths = asterisk.node_paths(settings)
    asterisk.check_root(paths.root)
    secret = read_secret(settings, settings.asterisk.ami.secret_file, "ACD_AMI_SECRET")
    asterisk.render_instance(settings, paths, secret)
    node = AsteriskProcess(settings)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("stack.kill", process=name)
        proc.kill()
        proc.wait()


def up_foreground(settings: Settings, config: Path, *, with_asterisk: bool = True) -> None:
    """Redis (if none answers), Asterisk and a supervised controller process, until signalled.

    The controller runs as a child (`acd run`) and is restarted when it dies: callers keep
    waiting in Asterisk meanwhile, and the restarted controller resyncs from AMI and Redis.
    Redis and Asterisk are restarted too when they die (see RedisProcess, AsteriskProcess).
    """
    load_checked_flows(settings)  # refuse to start on a broken flow, before starting anything
    pidfile = state_dir(settings) / "acd.pid"
    pidfile.write_text(str(os.getpid()))
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with redis_server(settings) as redis, contextlib.ExitStack() as stack:
            node = stack.enter_context(asterisk_node(settings)) if with_asterisk else None
            processes = [p for p in (redis, node) if p is not None]

            def keep_alive() -> None:
                for process in processes:
                    process.keep_alive()

            _supervise_controller(config, lambda: stopping, keep_alive)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(FileNotFoundError):
            if pidfile.read_text() == str(os.getpid()):
                pidfile.unlink()


KEEP_ALIVE_INTERVAL = 1.0  # seconds between two looks at the children when no signal came


@contextlib.contextmanager
def _signal_waker() -> Iterator[Callable[[float], None]]:
    """A wait that a signal ends at once: the supervisor sleeps until a child exits (SIGCHLD),
    it is asked to stop (SIGINT, SIGTERM: their handlers are Python's) or `timeout` passes.
    (Popen.wait with a timeout polls twenty times a second: at idle that was a third of what
    the whole stack spent, the controller included.)"""
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_chld = signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)

    def wait(timeout: float) -> None:
        if select.select([reader], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                reader.recv(4096)

    try:
        yield wait
    finally:
        signal.signal(signal.SIGCHLD, previous_chld)
        signal.set_wakeup_fd(previous_fd)
        reader.close()
        writer.close()


def _supervise_controller(
    config: Path, stopping: Callable[[], bool], keep_alive: Callable[[], None]
) -> None:
    with _signal_waker() as wait:
        _supervise(config, stopping, keep_alive, wait)


def _supervise(
    config: Path,
    stopping: Callable[[], bool],
    keep_alive: Callable[[], None],
    wait: Callable[[float], None],
) -> None:
    backoff = 0.5
    while not stopping():
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "acd", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
        )
        log.info("stack.controller_started", pid=proc.pid)
        while proc.poll() is None and not stopping():
            wait(KEEP_ALIVE_INTERVAL)
            keep_alive()
        if proc.poll() is None:
            _stop(proc, "controller")
            return
        log.error("stack.controller_exited", pid=proc.pid, returncode=proc.returncode)
        if time.monotonic() - started > 60:
            backoff = 0.5
        deadline = time.monotonic() + backoff
        while (left := deadline - time.monotonic()) > 0 and not stopping():
            wait(left)
        backoff = min(backoff * 2, 10.0)


# Allocations between two collections of the youngest generation (Python's default: 700). A call
# allocates a few thousand short-lived objects, nearly all freed by reference counting; at the
# default a peak collected many times a second for almost nothing.
GC_YOUNG_THRESHOLD = 20_000


def _settle_collector() -> None:
    """What the controller built at start (configuration, flows, modules: most of its objects)
    lives as long as the process: frozen out of the cyclic collector's sight, so that a full
    collection during a peak scans only what calls allocated. A py-spy profile at 90 calls/s
    put 7% of the controller's CPU in the collector before."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def run_controller(settings: Settings) -> None:
    """`acd run`: the controller alone, in the foreground (Redis and Asterisk run elsewhere)."""
    flows = load_checked_flows(settings)
    # libuv's loop: the same asyncio API at a fraction of the CPU per socket operation, which
    # is most of what a call costs the controller (AGI commands, AMI events, Redis replies).
    uvloop.run(_run_controller(settings, flows))


async def _run_controller(settings: Settings, flows: dict[str, Flow]) -> None:
    controller = Controller(settings, flows)
    _settle_collector()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    ready_file = state_dir(settings) / "acd.ready"
    pid_file = state_dir(settings) / "controller.pid"
    pid_file.write_text(str(os.getpid()))

    async def mark_ready() -> None:
        await controller.ready.wait()
        ready_file.write_text(str(os.getpid()))
        log.info("stack.ready")

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(controller.run())
            tg.create_task(mark_ready())
    except asyncio.CancelledError:
        log.info("stack.stopping")
    finally:
        for path in (ready_file, pid_file):
            with contextlib.suppress(FileNotFoundError):
                if path.read_text() == str(os.getpid()):
                    path.unlink()


def up_detached(config: Path, settings: Settings, timeout: float = 90.0) -> int:
    state = state_dir(settings)
    pidfile = state / "acd.pid"
    if pidfile.exists() and _alive(int(pidfile.read_text() or 0)):
        raise AcdError(f"acd is already running (pid {pidfile.read_text()}); `acd down` first")
    ready_file = state / "acd.ready"
    with contextlib.suppress(FileNotFoundError):
        ready_file.unlink()
    log_path = state / "acd.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "acd", "--config", str(config), "up"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _wait_for(lambda: ready_file.exists() or proc.poll() is not None, "acd", timeout)
    if proc.poll() is not None:
        raise AcdError(f"acd up exited with {proc.returncode}; see {log_path}")
    return proc.pid


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def down(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop a detached `acd up`; False when none was running."""
    pidfile = state_dir(settings) / "acd.pid"
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return False
    if not _alive(pid):
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    _wait_for(lambda: not _alive(pid), "acd shutdown", timeout)
    pidfile.unlink(missing_ok=True)
    return True
