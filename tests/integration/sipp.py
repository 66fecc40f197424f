"""SIPp for the integration tests: render caller scenarios and run callers and the agents' UAS."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"
PCAPS = Path("/usr/share/sip-tester")
_PCAP_NAMES = {str(d): f"dtmf_2833_{d}.pcap" for d in range(10)} | {
    "*": "dtmf_2833_star.pcap",
    "#": "dtmf_2833_pound.pcap",
}


def dtmf(digit: str) -> str:
    """One RFC 4733 digit, followed by the pause without which Asterisk misses it."""
    pcap = PCAPS / _PCAP_NAMES[digit]
    return (
        f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
        '  <pause milliseconds="1200"/>\n'
    )


def pause(ms: int) -> str:
    return f'  <pause milliseconds="{ms}"/>\n'


def caller_scenario(path: Path, steps: list[str], caller_id: str = "5551234") -> Path:
    if not caller_id.isdigit():
        raise ValueError(caller_id)
    text = (SCENARIOS / "caller.xml.tpl").read_text()
    path.write_text(text.replace("@STEPS@", "".join(steps)).replace("@CALLER_ID@", caller_id))
    return path


@dataclass
class SippRun:
    proc: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_caller(
    scenario: Path,
    target: str,
    number: str,
    port: int,
    media_port: int,
    workdir: Path,
    calls: int = 1,
    rate: float = 1.0,
    timeout_s: int = 120,
) -> SippRun:
    log = workdir / f"sipp-caller-{port}.log"
    cmd = [
        "sipp",
        target,
        "-sf",
        str(scenario),
        "-s",
        number,
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-mp",
        str(media_port),
        "-m",
        str(calls),
        "-r",
        str(rate),
        "-timeout",
        f"{timeout_s}s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(workdir / f"sipp-caller-{port}.err"),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)


def start_agents_uas(port: int, media_port: int, workdir: Path, timeout_s: int = 600) -> SippRun:
    """One SIPp UAS that answers for every agent (their contacts all point at it)."""
    log = workdir / f"sipp-uas-{port}.log"
    cmd = [
        "sipp",
        "-sn",
        "uas",
        "-i",
        "127.0.0.1",
        "-p",
        str(port),
        "-mp",
        str(media_port),
        "-timeout",
        f"{timeout_s}s",
        "-nostdin",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)
