"""The supervisor's part of the deployment file: the admin API's tokens and their users, the
entries' default menu mode, and the overload governor's failure delay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.config import admin_tokens, load_settings, viewer_tokens
from acd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
ADMIN = "generated-admin-token-0123456789"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACD_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("ACD_ADMIN_TOKENS", raising=False)
    monkeypatch.delenv("ACD_VIEWER_TOKENS", raising=False)


def _deployment(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], object] = lambda c: None
) -> Path:
    config = yaml.safe_load((REPO / "acd.yaml").read_text())
    config["admin"] = {"token_file": "admin.token"}
    mutate(config)
    path = tmp_path / "acd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _file(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text + "\n")


def test_the_generated_token_belongs_to_admin(tmp_path: Path) -> None:
    """Alone, the generated token file is user admin's token."""
    _file(tmp_path, "admin.token", ADMIN)
    assert admin_tokens(load_settings(_deployment(tmp_path))) == {ADMIN: "admin"}


def test_named_tokens_from_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """admin.tokens maps users to token files, ACD_ADMIN_TOKENS adds USER:TOKEN pairs; each
    token is known by its own user, beside the generated one."""
    _file(tmp_path, "admin.token", ADMIN)
    _file(tmp_path, "alice.token", ALICE)
    monkeypatch.setenv("ACD_ADMIN_TOKENS", f"bob:{BOB}, carol.w@floor:carol-token-0123456789")
    path = _deployment(tmp_path, lambda c: c["admin"].update(tokens={"alice": "alice.token"}))
    assert admin_tokens(load_settings(path)) == {
        ADMIN: "admin",
        ALICE: "alice",
        BOB: "bob",
        "carol-token-0123456789": "carol.w@floor",
    }


def test_acd_admin_token_replaces_the_generated_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ACD_ADMIN_TOKEN, when set, is admin's token (the file need not exist)."""
    monkeypatch.setenv("ACD_ADMIN_TOKEN", ADMIN)
    assert admin_tokens(load_settings(_deployment(tmp_path))) == {ADMIN: "admin"}


def test_named_tokens_may_replace_the_generated_one(tmp_path: Path) -> None:
    """With named tokens configured, a deployment without the generated file has no admin user
    (and no default token of any kind)."""
    _file(tmp_path, "alice.token", ALICE)
    path = _deployment(tmp_path, lambda c: c["admin"].update(tokens={"alice": "alice.token"}))
    assert admin_tokens(load_settings(path)) == {ALICE: "alice"}


def test_no_token_at_all_is_an_error(tmp_path: Path) -> None:
    """Nothing configured and no generated file: a clear error, never a default token."""
    with pytest.raises(ConfigError, match=r"admin\.token cannot be read .*run `make setup`"):
        admin_tokens(load_settings(_deployment(tmp_path)))


@pytest.mark.parametrize(
    ("files", "tokens", "env", "message"),
    [
        ({}, {"alice": "alice.token"}, "", r"admin\.tokens\.alice: token file .* cannot be read"),
        ({"alice.token": ""}, {"alice": "alice.token"}, "", "the token of 'alice' from admin"),
        ({"alice.token": "short"}, {"alice": "alice.token"}, "", "at least 16 characters"),
        ({"alice.token": ALICE + " x"}, {"alice": "alice.token"}, "", "at least 16 characters"),
        ({"alice.token": ALICE}, {"alice": "alice.token"}, f"bob:{ALICE}",
         "users 'alice' and 'bob' have the same token"),
        ({"alice.token": ALICE}, {"alice": "alice.token"}, f"alice:{BOB}",
         "user 'alice' already has a token from admin.tokens.alice"),
        ({}, {}, f"admin:{BOB}", "user 'admin' already has a token from admin.token_file"),
        ({}, {}, BOB, "ACD_ADMIN_TOKENS: entry 1 is not USER:TOKEN"),
        ({}, {}, f"bob:{BOB},bad user:{ALICE}", "ACD_ADMIN_TOKENS: entry 2 is not USER:TOKEN"),
        ({}, {}, "bob:", "the token of 'bob' from ACD_ADMIN_TOKENS entry 1 must be"),
    ],
)  # fmt: skip
def test_bad_token_entries_are_clear_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    tokens: dict[str, str],
    env: str,
    message: str,
) -> None:
    """An unreadable, empty, short or malformed token, a user defined twice and a token shared
    by two users are each refused with a message saying which entry and why."""
    _file(tmp_path, "admin.token", ADMIN)
    for name, text in files.items():
        _file(tmp_path, name, text)
    if env:
        monkeypatch.setenv("ACD_ADMIN_TOKENS", env)
    path = _deployment(tmp_path, lambda c: c["admin"].update(tokens=tokens))
    with pytest.raises(ConfigError, match=message):
        admin_tokens(load_settings(path))


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ({"admin": "x.token"}, "admin.tokens: 'admin' is the user of token_file"),
        ({"bad user": "x.token"}, "admin.tokens.bad user.[key]: 'bad user' is not allowed here"),
    ],
)
def test_bad_user_names_in_the_file_are_reported_with_their_key(
    tmp_path: Path, tokens: dict[str, str], message: str
) -> None:
    """A user name that is not allowed, or `admin` (the generated token's user), is a
    configuration error naming the key."""
    with pytest.raises(ConfigError) as info:
        load_settings(_deployment(tmp_path, lambda c: c["admin"].update(tokens=tokens)))
    assert message in str(info.value)


def test_entries_default_to_auto_and_may_pin_a_mode(tmp_path: Path) -> None:
    """The shipped entry is in auto mode (the simplified menu takes over by itself under
    overload); an entry's `mode` sets another; an unknown mode is refused."""
    assert [e.mode for e in load_settings(REPO / "acd.yaml").entries] == ["auto"]
    path = _deployment(tmp_path, lambda c: c["entries"][0].pop("mode"))
    assert load_settings(path).entries[0].mode == "auto"
    path = _deployment(tmp_path, lambda c: c["entries"][0].update(mode="normal"))
    assert load_settings(path).entries[0].mode == "normal"
    path = _deployment(tmp_path, lambda c: c["entries"][0].update(mode="lite"))
    with pytest.raises(ConfigError, match=r"entries\[0\]\.mode: Input should be 'normal'"):
        load_settings(path)


def test_the_failure_delay_of_the_overload_governor(tmp_path: Path) -> None:
    """overload.failure_after defaults to 10 s and is bounded."""
    assert load_settings(REPO / "acd.yaml").overload.failure_after == 10
    path = _deployment(tmp_path, lambda c: c["overload"].update(failure_after=-1))
    with pytest.raises(ConfigError, match=r"overload\.failure_after: Input should be greater"):
        load_settings(path)


VIEWER = "viewer-token-0123456789abcdef"


def test_viewers_tokens_come_from_the_generated_file_files_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated viewer token (when its file exists), admin.viewers files and
    ACD_VIEWER_TOKENS; none of them needed."""
    _file(tmp_path, "admin.token", ADMIN)
    settings = load_settings(
        _deployment(tmp_path, lambda c: c["admin"].update(viewer_token_file="viewer.token"))
    )
    assert viewer_tokens(settings, admin_tokens(settings)) == {}
    _file(tmp_path, "viewer.token", VIEWER)
    _file(tmp_path, "wall.token", "wall-token-0123456789abcdef")
    monkeypatch.setenv("ACD_VIEWER_TOKENS", "grafana:grafana-token-0123456789")
    path = _deployment(
        tmp_path,
        lambda c: c["admin"].update(
            viewer_token_file="viewer.token", viewers={"wall": "wall.token"}
        ),
    )
    settings = load_settings(path)
    assert viewer_tokens(settings, admin_tokens(settings)) == {
        VIEWER: "viewer",
        "wall-token-0123456789abcdef": "wall",
        "grafana-token-0123456789": "grafana",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (f"alice:{VIEWER}", "shares a name or a token with a supervisor"),
        (f"wall:{ADMIN}", "shares a name or a token with a supervisor"),
        ("wall:short", "must be at least"),
        ("wall", "is not USER:TOKEN"),
    ],
)
def test_a_viewer_cannot_be_a_supervisor_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, message: str
) -> None:
    """A read-only token that is a supervisor's, or a viewer named like one, would make the
    audit log or the roles ambiguous: refused with the reason."""
    _file(tmp_path, "admin.token", ADMIN)
    _file(tmp_path, "alice.token", ALICE)
    monkeypatch.setenv("ACD_VIEWER_TOKENS", env)
    settings = load_settings(
        _deployment(tmp_path, lambda c: c["admin"].update(tokens={"alice": "alice.token"}))
    )
    with pytest.raises(ConfigError, match=message):
        viewer_tokens(settings, admin_tokens(settings))


def test_a_viewer_named_viewer_is_refused(tmp_path: Path) -> None:
    path = _deployment(tmp_path, lambda c: c["admin"].update(viewers={"viewer": "v.token"}))
    with pytest.raises(ConfigError, match="is the user of viewer_token_file"):
        load_settings(path)
