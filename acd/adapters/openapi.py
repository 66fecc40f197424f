"""The admin API's OpenAPI 3.1 document, served at /openapi.json.

Built from the deployment, so that queue, agent, trunk and entry names are enumerated: a client
(or a contract test) knows every valid value. Kept next to the handlers in admin_api.py; the
contract test (tests/adapters/test_api_contract.py) checks one against the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from acd.domain.agent import AgentState

JSON = "application/json"


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    # Unknown fields are refused (a typo must not pass for a change that was made).
    return {
        "required": True,
        "content": {JSON: {"schema": {**schema, "additionalProperties": False}}},
    }


def _obj(props: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def _closed(props: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these properties, every one present: a field the code adds or
    drops without the document saying so fails the contract test."""
    return {**_obj(props, list(props)), "additionalProperties": False}


def _path_param(name: str, values: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": list(values)},
    }


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: dict[str, Any] | None = None,
    params: Sequence[dict[str, Any]] = (),
    errors: Sequence[int] = (),
    auth: bool = True,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": ok}
    texts = {
        400: "Bad request: the body or a header is invalid; nothing was changed",
        404: "No such queue, agent, trunk or entry; nothing was changed",
        409: "Not allowed in the agent's current state",
        422: "Refused: the change is invalid (e.g. a broken flow); the running one stays",
        503: "Redis or Asterisk is unavailable",
    }
    for code in (*errors, 503):
        responses[str(code)] = _error(texts[code])
    if auth:
        responses["401"] = _error("Missing or wrong bearer token")
        responses["403"] = _error("A viewer's token: it only reads status, metrics, wallboard")
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = _body(body)
    if body is not None or any(p.get("in") == "header" for p in params):
        responses["400"] = _error(texts[400])
    if params:
        op["parameters"] = list(params)
    if not auth:
        op["security"] = []
    return op


def build_spec(
    *, skills: Sequence[str], agents: Sequence[str], trunks: Sequence[str], entries: Sequence[str]
) -> dict[str, Any]:
    anything = {"type": "object"}
    modes = {"type": "object", "additionalProperties": {"type": "string"}}
    who = {
        "name": "X-Acd-User",
        "in": "header",
        "required": False,
        "description": "who is behind the change, recorded as detail beside the bearer "
        "token's user (who the audit log names): `alice (cli:root)`",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.@:-]{1,64}$"},
    }
    level = {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 4}, {"const": "auto"}]}
    overload = _obj(
        {
            "level": {"type": "integer"},
            "computed": {"type": "integer"},
            "pinned": {"type": ["integer", "null"]},
        },
        ["level", "computed", "pinned"],
    )
    queue = _obj(
        {
            "state": {"enum": ["open", "closed", "paused"]},
            "callbacks": {"enum": ["on", "off"]},
            "waiting": {"type": "integer"},
            "longest_wait": {"type": "number"},
            "ewt": {"type": "number"},
            "service_level": {"type": ["number", "null"]},
            "agents": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        ["state", "callbacks", "waiting", "longest_wait", "ewt", "agents"],
    )
    trunk = _obj(
        {
            "state": {"enum": ["closed", "open", "half_open"]},
            "reason": {"enum": ["failures", "tripped", None]},
            "tripped": {"type": "boolean"},
            "probes_out": {"type": "integer"},
            "role": {"enum": ["primary", "standby"]},
            "capacity": {"type": "integer"},
            "in_use": {"type": "integer"},
            "window_calls": {"type": "integer"},
            "window_failures": {"type": "integer"},
        },
        [
            "state",
            "reason",
            "tripped",
            "probes_out",
            "role",
            "capacity",
            "in_use",
            "window_calls",
            "window_failures",
        ],
    )
    agent_status = _closed(
        {
            "state": {"enum": [str(state) for state in AgentState]},
            "reason": {"type": ["string", "null"]},
            "call": {"type": ["string", "null"]},
        }
    )
    counter = {"type": "integer", "minimum": 0}
    flag = {"type": "boolean"}
    status = _closed(
        {
            "node": {"type": "string"},
            "components": _closed(
                {
                    "ami": _closed({"connected": flag, "reconnects": counter, "resyncs": counter}),
                    "redis": _closed({"ok": flag}),
                    "agi": _closed({"listening": flag}),
                    "admin": _closed({"listening": flag}),
                }
            ),
            "queues": _closed({skill: queue for skill in skills}),
            "agents": {"type": "object", "additionalProperties": agent_status},
            "overload": overload,
            "menu_modes": _closed(
                {entry: {"enum": ["normal", "fallback", "auto"]} for entry in entries}
            ),
            "flows": {"type": "array", "items": {"type": "string"}},
            "connects": counter,
            "trunks": _closed({name: trunk for name in trunks}),
            "callbacks": {"type": "object", "additionalProperties": counter},
            "callbacks_dialled": counter,
            "ivr_turns": counter,
        }
    )
    agent_change = _obj(
        {"agent": {"type": "string"}, "before": {"type": "string"}, "state": {"type": "string"}},
        ["agent", "before", "state"],
    )
    paths: dict[str, Any] = {
        "/healthz": {"get": _op("The process answers", _json(anything), auth=False)},
        "/readyz": {
            "get": {
                **_op("AMI, Redis and the AGI listener are up", _json(anything)),
                "responses": {
                    "200": _json(_obj({"ready": {"type": "boolean"}}, ["ready"])),
                    "503": _json(_obj({"ready": {"type": "boolean"}}, ["ready"]), "Not ready"),
                    "401": _error("Missing or wrong bearer token"),
                },
            }
        },
        "/status": {"get": _op("Everything a supervisor sees", _json(status))},
        "/openapi.json": {"get": _op("This document", _json(anything))},
        "/metrics": {
            "get": _op(
                "Prometheus text exposition",
                {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            )
        },
        "/wallboard": {
            "get": _op(
                "The live wallboard page (the token may be passed as ?token=)",
                {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}},
            )
        },
        "/events": {
            "get": _op(
                "Server-sent events: `status` every second, `problem` instead while the "
                "status cannot be built (Redis down); the stream goes on (the token may be "
                "passed as ?token=)",
                {
                    "description": "An endless event stream",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
            )
        },
        "/menu": {
            "get": _op("Menu mode per entry number", _json(_obj({"modes": modes}, ["modes"]))),
            "put": _op(
                "Set the menu mode of every entry",
                _json(_obj({"modes": modes}, ["modes"])),
                body=_obj({"mode": {"enum": ["normal", "fallback", "auto"]}}, ["mode"]),
                params=[who],
            ),
        },
        "/menu/{number}": {
            "put": _op(
                "Set the menu mode of one entry",
                _json(_obj({"modes": modes}, ["modes"])),
                body=_obj({"mode": {"enum": ["normal", "fallback", "auto"]}}, ["mode"]),
                params=[_path_param("number", entries), who],
                errors=[404],
            )
        },
        "/overload": {
            "get": _op("The overload level", _json(overload)),
            "put": _op(
                "Pin the level (0-4) or give it back to the governor (auto)",
                _json(overload),
                body=_obj({"level": level}, ["level"]),
                params=[who],
            ),
        },
        "/flows/reload": {
            "post": _op(
                "Reload and check every flow; a broken one is refused, the running ones stay",
                _json(_obj({"flows": {"type": "array", "items": {"type": "string"}}}, ["flows"])),
                params=[who],
                errors=[422],
            )
        },
        "/agents": {
            "get": _op(
                "Agents and their states",
                _json(_obj({"agents": {"type": "object"}}, ["agents"])),
            )
        },
        "/agents/{agent}": {
            "put": _op(
                "Log in, log out, pause or resume an agent",
                _json(agent_change),
                body=_obj(
                    {
                        "action": {"enum": ["login", "logout", "pause", "resume"]},
                        "reason": {"type": "string", "pattern": "^[a-z0-9_-]{0,32}$"},
                    },
                    ["action"],
                ),
                params=[_path_param("agent", agents), who],
                errors=[404, 409],
            )
        },
        "/agents/{agent}/skills": {
            "put": _op(
                "Set an agent's skills and levels (kept over restarts)",
                _json(
                    _obj(
                        {
                            "agent": {"type": "string"},
                            "before": {"type": "string"},
                            "skills": {"type": "string"},
                        },
                        ["agent", "before", "skills"],
                    )
                ),
                body=_obj(
                    {
                        "skills": {
                            "type": "object",
                            "minProperties": 1,
                            "propertyNames": {"enum": list(skills)},
                            "additionalProperties": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 10,
                            },
                        }
                    },
                    ["skills"],
                ),
                params=[_path_param("agent", agents), who],
                errors=[404],
            )
        },
        "/tiers": {
            "put": _op(
                "Merge customer tiers by caller ID (tier 'regular' removes)",
                _json(_obj({"updated": {"type": "integer"}}, ["updated"])),
                body=_obj(
                    {
                        "tiers": {
                            "type": "object",
                            "minProperties": 1,
                            "propertyNames": {"pattern": "^\\+?[0-9]{2,32}$"},
                            "additionalProperties": {
                                "type": "string",
                                "pattern": "^[a-z][a-z0-9_-]{0,39}$",
                            },
                        }
                    },
                    ["tiers"],
                ),
                params=[who],
            )
        },
        "/queues": {
            "get": _op(
                "Every queue",
                _json(
                    _obj({"queues": {"type": "object", "additionalProperties": queue}}, ["queues"])
                ),
            )
        },
        "/queues/{queue}": {
            "put": _op(
                "Open, close or pause a queue",
                _json(queue),
                body=_obj({"state": {"enum": ["open", "closed", "paused"]}}, ["state"]),
                params=[_path_param("queue", skills), who],
                errors=[404],
            )
        },
        "/callbacks": {
            "get": _op(
                "Every callback request and its state",
                _json(_obj({"callbacks": {"type": "array"}}, ["callbacks"])),
            )
        },
        "/callbacks/mode": {
            "put": _op(
                "Callback offers on or off, for one queue or all",
                _json(_obj({"modes": modes}, ["modes"])),
                body=_obj(
                    {"mode": {"enum": ["on", "off"]}, "queue": {"enum": list(skills)}}, ["mode"]
                ),
                params=[who],
                errors=[404],
            )
        },
        "/trunks": {
            "get": _op(
                "Outbound trunks with their breakers",
                _json(
                    _obj({"trunks": {"type": "object", "additionalProperties": trunk}}, ["trunks"])
                ),
            )
        },
        "/trunks/{trunk}/{action}": {
            "post": _op(
                "Trip a trunk's breaker by hand, or reset it",
                _json(trunk),
                params=[
                    _path_param("trunk", trunks),
                    _path_param("action", ["trip", "reset"]),
                    who,
                ],
                errors=[404],
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "acd admin API",
            "version": "1",
            "description": "Steer a running acd controller. JSON in and out; errors are "
            '{"error": {"code", "message"}}. Bearer token on every call but /healthz; '
            "each token belongs to a user, whom the audit log names.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": _obj(
                    {
                        "error": _obj(
                            {"code": {"type": "string"}, "message": {"type": "string"}},
                            ["code", "message"],
                        )
                    },
                    ["error"],
                )
            },
        },
    }
