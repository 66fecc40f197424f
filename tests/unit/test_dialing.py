"""The dial policy (acd.domain.dialing) and its configuration, table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from acd.config import load_settings
from acd.domain.dialing import Allowed, DialPolicy, refusal
from acd.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHOP = DialPolicy(allowed=(Allowed("1", 11, 11), Allowed("0", 10, 12), Allowed("400", 10, 10)))
ABROAD = DialPolicy(international=True, blocked=("900",))


@pytest.mark.parametrize(
    ("policy", "number", "why"),
    [
        (DialPolicy(), "13800000000", None),
        (DialPolicy(), "5551234", None),
        (DialPolicy(), "1234", "length"),
        (DialPolicy(), "12345678901234567", "length"),
        (DialPolicy(), "+8613800000000", "international"),
        (DialPolicy(), "008613800000000", "international"),
        (DialPolicy(), "9001234567", "premium"),
        (DialPolicy(), "09001234567", "premium"),
        (DialPolicy(), "19001234567", "premium"),
        (DialPolicy(), "", "malformed"),
        (DialPolicy(), "1380000000#", "malformed"),
        (DialPolicy(), "138 0000 0000", "malformed"),
        (DialPolicy(), "13800000000\n", "malformed"),
        (SHOP, "13800000000", None),
        (SHOP, "02161234567", None),
        (SHOP, "4008001234", None),
        (SHOP, "400800123", "not_allowed"),  # a 400 number is ten digits
        (SHOP, "5551234", "not_allowed"),
        (ABROAD, "+441234567890", None),
        (ABROAD, "00441234567890", None),
        (ABROAD, "+9001234567", "premium"),  # the prefix is judged after + or 00
        (ABROAD, "009001234567", "premium"),
    ],
)
def test_refusal(policy: DialPolicy, number: str, why: str | None) -> None:
    assert refusal(policy, number) == why


def _settings(tmp_path: Path, **changes: Any) -> Path:
    config = yaml.safe_load((REPO / "acd.yaml").read_text())
    config.update(changes)
    path = tmp_path / "acd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_policy_comes_from_the_deployment_file(tmp_path: Path) -> None:
    policy = {
        "allowed": [{"prefix": "1", "min_length": 11, "max_length": 11}],
        "international": True,
        "blocked_prefixes": ["1900"],
    }
    settings = load_settings(_settings(tmp_path, dial_policy=policy))
    assert settings.dial_policy.to_domain() == DialPolicy(
        allowed=(Allowed("1", 11, 11),), international=True, blocked=("1900",)
    )
    assert load_settings(REPO / "acd.yaml").dial_policy.to_domain() == DialPolicy()


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"allowed": []}, "dial_policy.allowed"),
        ({"allowed": [{"prefix": "1", "min_length": 12, "max_length": 11}]}, "min_length"),
        ({"allowed": [{"prefix": "+1"}]}, r"dial_policy.allowed\[0\].prefix"),
        ({"blocked_prefixes": ["9x"]}, "dial_policy.blocked_prefixes"),
        ({"premium": True}, "dial_policy.premium"),
    ],
)
def test_a_bad_policy_is_a_clear_error(
    tmp_path: Path, policy: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_settings(tmp_path, dial_policy=policy))


def test_an_overflow_number_outside_the_policy_is_refused_at_load(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "acd.yaml").read_text())
    skills = config["skills"]
    skills[0]["overflow_to"] = {"number": "0044123456789", "ewt_above": 60}
    with pytest.raises(ConfigError, match=r"overflow_to.number: '0044123456789' is outside"):
        load_settings(_settings(tmp_path, skills=skills))
