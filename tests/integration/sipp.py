"""SIPp for the integration tests: render caller scenarios and run callers and the agents' UAS."""

from __future__ import annotations

import struct
import subprocess
import wave
from dataclasses import dataclass, field
from pathlib import Path

SCENARIOS = Path(__file__).parent / "scenarios"
SOUNDS = Path(__file__).resolve().parents[2] / ".state" / "sounds"
DIGIT_SECONDS = 1.2  # the pause after each digit, without which Asterisk misses it
ANSWER_SECONDS = 0.55  # from our ACK to the first AGI prompt (Answer() and the AGI connect)

_BYE = """  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Customer" <sip:@CALLER_ID@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: sip:@CALLER_ID@@[local_ip]:[local_port]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

_WAIT_BYE = """  <recv request="BYE" timeout="@TIMEOUT@"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0

    ]]>
  </send>
"""


def prompt_seconds(name: str) -> float:
    """How long one of our generated prompts plays (`acd/NAME`)."""
    with wave.open(str(SOUNDS / f"{name.removeprefix('acd/')}.wav")) as w:
        return w.getnframes() / w.getframerate()


_EVENT_CODES = {str(d): d for d in range(10)} | {"*": 10, "#": 11}
_SSRC = 0x0E052B4E


def write_dtmf_pcap(path: Path, digit: str, seq: int, timestamp: int) -> Path:
    """An RFC 4733 digit as SIPp replays it: 7 event packets 20 ms apart, then 3 end packets.

    Generated rather than taken from /usr/share/sip-tester because those captures all carry fixed
    RTP timestamps: Asterisk drops a digit whose timestamp it has already seen, so the same digit
    could be pressed only once per call. Here every press gets its own sequence and timestamp.
    """
    code = _EVENT_CODES[digit]
    records = []
    for i in range(10):
        end = i >= 7
        rtp = struct.pack(
            ">BBHIIBBH",
            0x80,
            (0x80 if i == 0 else 0) | 101,
            (seq + min(i, 7)) & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            _SSRC,
            code,
            (0x80 if end else 0) | 10,
            min(i, 7) * 320,
        )
        udp = struct.pack(">HHHH", 5000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            ">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
            bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
        )  # fmt: skip
        checksum = sum(struct.unpack(">10H", ip))
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        ip = ip[:10] + struct.pack(">H", ~checksum & 0xFFFF) + ip[12:]
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
        usec = i * 20000 if not end else 140000 + (i - 7) * 40
        records.append(struct.pack("<IIII", 0, usec, len(frame), len(frame)) + frame)
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    path.write_bytes(header + b"".join(records))
    return path


def dtmf(pcap: Path) -> str:
    """Play one digit's capture, then pause: without the pause Asterisk misses the digit."""
    return (
        f'  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'
        f'  <pause milliseconds="{int(DIGIT_SECONDS * 1000)}"/>\n'
    )


def pause(ms: int) -> str:
    return f'  <pause milliseconds="{ms}"/>\n'


@dataclass
class Script:
    """A caller's timeline, in seconds from the call being answered.

    `at(t, digits)` presses digits starting at time t; `until(t)` stays on the line until t; the
    call then ends with our BYE, or with Asterisk's BYE when `remote_hangup` is set.
    `render(workdir, name)` writes the digits' captures and returns the scenario steps.
    """

    steps: list[str | tuple[str, int]] = field(default_factory=list)
    t: float = 0.0
    presses: int = 0

    def at(self, seconds: float, digits: str) -> Script:
        self.until(seconds)
        for digit in digits:
            if digit not in _EVENT_CODES:
                raise ValueError(digit)
            self.steps.append((digit, self.presses))
            self.presses += 1
            self.t += DIGIT_SECONDS
        return self

    def render(self, workdir: Path, name: str) -> list[str]:
        out = []
        for step in self.steps:
            if isinstance(step, tuple):
                digit, n = step
                pcap = workdir / f"{name}-dtmf{n}.pcap"
                write_dtmf_pcap(pcap, digit, seq=1000 + 10 * n, timestamp=16000 + 24000 * n)
                out.append(dtmf(pcap))
            else:
                out.append(step)
        return out

    def press(self, digits: str) -> Script:
        return self.at(self.t, digits)

    def until(self, seconds: float) -> Script:
        if seconds > self.t:
            self.steps.append(pause(int((seconds - self.t) * 1000)))
            self.t = seconds
        return self

    def wait(self, seconds: float) -> Script:
        return self.until(self.t + seconds)


def caller_scenario(
    path: Path,
    steps: list[str],
    caller_id: str = "5551234",
    *,
    remote_hangup: bool = False,
    remote_hangup_within_s: float = 60.0,
) -> Path:
    if not caller_id.isdigit():
        raise ValueError(caller_id)
    end = (
        _WAIT_BYE.replace("@TIMEOUT@", str(int(remote_hangup_within_s * 1000)))
        if remote_hangup
        else _BYE
    )
    text = (SCENARIOS / "caller.xml.tpl").read_text()
    text = text.replace("@STEPS@", "".join(steps)).replace("@END@", end)
    path.write_text(text.replace("@CALLER_ID@", caller_id))
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
        "sipp", target, "-sf", str(scenario), "-s", number, "-i", "127.0.0.1",
        "-p", str(port), "-mp", str(media_port), "-m", str(calls), "-r", str(rate),
        "-timeout", f"{timeout_s}s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"sipp-caller-{port}.err"),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)


def start_agent_phone(
    code: str, endpoint: str, password: str, target: str, port: int, workdir: Path
) -> SippRun:
    """An agent's phone (SIPp UAC) dialling a star code as `endpoint`, authenticating with
    `password` (scenarios/agent_phone_code.xml)."""
    log = workdir / f"sipp-phone-{port}.log"
    cmd = [
        "sipp", target, "-sf", str(SCENARIOS / "agent_phone_code.xml"), "-s", code,
        "-key", "endpoint", endpoint, "-au", endpoint, "-ap", password,
        "-i", "127.0.0.1", "-p", str(port), "-mp", str(40000 + (port % 1000) * 8),
        "-m", "1", "-timeout", "30s", "-timeout_error", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"sipp-phone-{port}.err"),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)


def start_uas(scenario: str, port: int, media_port: int, workdir: Path) -> SippRun:
    """A SIPp UAS running scenarios/NAME.xml for every call it gets (calls in parallel)."""
    log = workdir / f"sipp-{scenario}-{port}.log"
    cmd = [
        "sipp", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1",
        "-p", str(port), "-mp", str(media_port), "-timeout", "600s", "-nostdin",
        "-trace_err", "-error_file", str(workdir / f"sipp-{scenario}-{port}.err"),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)


def start_agent_that_hangs_up(port: int, media_port: int, workdir: Path) -> SippRun:
    """A SIPp UAS that answers, talks 6 s and hangs up (scenarios/agent_hangs_up.xml)."""
    return start_uas("agent_hangs_up", port, media_port, workdir)


def start_agents_uas(port: int, media_port: int, workdir: Path, timeout_s: int = 600) -> SippRun:
    """One SIPp UAS that answers for every agent (their contacts all point at it)."""
    log = workdir / f"sipp-uas-{port}.log"
    cmd = [
        "sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-mp", str(media_port),
        "-timeout", f"{timeout_s}s", "-nostdin",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    return SippRun(proc, log)
