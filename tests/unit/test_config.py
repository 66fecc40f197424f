"""Loading the deployment file: the sample is valid; every mistake names file, key, problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acd.adapters.redis_link import parse_url
from acd.config import load_settings, redis_url
from acd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "acd.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _sample() -> dict:
    return yaml.safe_load((REPO / "acd.yaml").read_text())


def test_the_sample_configuration_loads_into_frozen_settings() -> None:
    """acd.yaml as shipped is valid, with the documented defaults, and cannot be mutated."""
    settings = load_settings(REPO / "acd.yaml")
    assert settings.asterisk.sip.port == 5060
    assert settings.asterisk.ami.port == 5038
    assert settings.agi.port == 4573
    assert settings.admin.port == 8088
    assert settings.admin.host == "127.0.0.1"
    assert [e.number for e in settings.entries] == ["1000"]
    with pytest.raises(Exception, match="frozen"):
        settings.agi.port = 1  # type: ignore[misc]


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    """state_dir and secret files are relative to the configuration file, not the cwd."""
    settings = load_settings(_write(tmp_path, _sample()))
    assert settings.resolve(settings.state_dir) == (tmp_path / ".state").resolve()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["agents"][1]["skills"].update(presale=11),
            "agents[1].skills.presale: Input should be less than or equal to 10",
        ),
        (
            lambda c: c["agents"][0]["skills"].update(karaoke=3),
            "agents[0].skills.karaoke: unknown skill",
        ),
        (lambda c: c["agents"].append(dict(c["agents"][0])), "agents: duplicate id '1001'"),
        (
            lambda c: c["entries"].append({"number": "1000", "flow": "promo"}),
            "entries: duplicate number '1000'",
        ),
        (
            lambda c: c["asterisk"]["ami"].update(port=70000),
            "asterisk.ami.port: Input should be less than or equal to 65535",
        ),
        (lambda c: c.update(colour="blue"), "colour: unknown key"),
        (
            lambda c: c["agents"][0].update(endpoint="agent 1001\n[evil]"),
            "agents[0].endpoint: 'agent 1001\\n[evil]' is not allowed here",
        ),
        (lambda c: c.pop("skills"), "skills: Field required"),
        (lambda c: c["redis"].update(url="http://x"), "redis.url: 'http://x' is not allowed here"),
        (
            lambda c: c.update(callbacks={"hours": "nights"}),
            "callbacks.hours: 'nights' is not a key of hours",
        ),
        (
            lambda c: c.update(breaker={"failure_rate": 1.5}),
            "breaker.failure_rate: Input should be less than or equal to 1",
        ),
        (
            lambda c: c.update(breaker={"saturation": 0}),
            "breaker.saturation: Input should be greater than 0",
        ),
        (
            lambda c: c.update(callbacks={"ring_timeout": 8}, breaker={"progress_timeout": 8}),
            "breaker.progress_timeout (8 s) must be shorter than callbacks.ring_timeout (8 s)",
        ),
        (
            lambda c: c["skills"][0].update(overflow_to={"number": "12;Dial(x)"}),
            "skills[0].overflow_to.number: '12;Dial(x)' is not allowed here",
        ),
        (
            lambda c: c.update(nodes={"node-a": {"host": "10.0.0.1", "port": 5060}}),
            "nodes.node-a: list the other nodes only, not this one",
        ),
    ],
)
def test_mistakes_are_reported_with_file_and_key(tmp_path: Path, mutate, message: str) -> None:
    """Each kind of mistake gives a ConfigError naming the file and the dotted key."""
    config = _sample()
    mutate(config)
    path = _write(tmp_path, config)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and the line."""
    path = _write(tmp_path, "entries:\n  - {number: 1000\nskills: []\n")
    with pytest.raises(ConfigError, match=r"acd\.yaml:\d+: not valid YAML"):
        load_settings(path)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A configuration path that does not exist is reported as such."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("url", "file", "env", "expected"),
    [
        ("redis://127.0.0.1:6379/0", None, None, "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "s3cret", None, "redis://:s3cret@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "s3cret", "p@ss/w", "redis://:p%40ss%2Fw@127.0.0.1:6379/0"),
        ("redis://:own@127.0.0.1:6379/0", "s3cret", None, "redis://:own@127.0.0.1:6379/0"),
        ("rediss://acd@[::1]:6380/2", "s3cret", None, "rediss://acd:s3cret@[::1]:6380/2"),
        ("unix:///run/r.sock?db=1", "s3cret", None, "unix:///run/r.sock?db=1&password=s3cret"),
    ],
)
def test_the_redis_password_joins_the_url_when_it_has_none(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    file: str | None,
    env: str | None,
    expected: str,
) -> None:
    """Redis's password: the URL's own, else ACD_REDIS_PASSWORD, else the generated file's when
    it exists; the clients log in with the URL that carries it."""
    monkeypatch.delenv("ACD_REDIS_PASSWORD", raising=False)
    if env is not None:
        monkeypatch.setenv("ACD_REDIS_PASSWORD", env)
    if file is not None:
        (tmp_path / "redis.secret").write_text(file + "\n")
    settings = load_settings(
        REPO / "acd.yaml",
        {"redis": {"url": url, "password_file": str(tmp_path / "redis.secret")}},
    )
    assert redis_url(settings) == expected
    address = parse_url(expected)
    assert address.password == (env or ("own" if ":own@" in url else file) or "")
