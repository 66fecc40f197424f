"""One error tree for the project.

Every error the controller raises on purpose is an `AcdError`. `retriable` is a class attribute: a
caller that catches an error can ask whether trying again may help without knowing every subclass.
Foreign errors (OSError, redis errors, YAML errors) are translated into these at the adapter
boundary.
"""

from __future__ import annotations


class AcdError(Exception):
    """Base of every error the project raises on purpose."""

    retriable = False


class ConfigError(AcdError):
    """The deployment or a flow is invalid; the message names file, key and problem."""


class ProtocolError(AcdError):
    """A peer sent bytes that do not follow the protocol (too long, malformed)."""


class AmiError(AcdError):
    """Base of AMI client errors."""


class AmiDisconnected(AmiError):
    """The AMI connection is down or dropped while an action was pending."""

    retriable = True


class AmiLoginFailed(AmiError):
    """Asterisk refused the AMI credentials."""


class AmiActionFailed(AmiError):
    """Asterisk answered an action with `Response: Error`."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"AMI action {action} failed: {message}")
        self.action = action
        self.message = message


class AmiTimeout(AmiError):
    """No response to an AMI action within its timeout."""

    retriable = True


class AgiError(AcdError):
    """Base of FastAGI errors."""


class AgiHangup(AgiError):
    """The channel hung up, or Asterisk closed the AGI connection."""


class AgiTimeout(AgiError):
    """Asterisk did not answer an AGI command within its timeout."""


class AgiCommandFailed(AgiError):
    """Asterisk answered an AGI command with an error status (510, 511, 520)."""

    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"AGI command {command!r} failed with {code}: {message}")
        self.command = command
        self.code = code
        self.message = message


class UnknownName(AcdError):
    """A queue, agent, trunk or entry number the deployment does not have (the API's 404)."""

    code = "not_found"  # the error code in the API's response, e.g. unknown_agent


class InvalidInput(AcdError):
    """Caller-supplied data (digits, caller ID) failed validation."""


class StoreUnavailable(AcdError):
    """Redis could not be reached."""

    retriable = True


class StoreReplyError(StoreUnavailable):
    """Redis answered a command with an error (a script that failed, a wrong type): trying the
    same again will not help. A StoreUnavailable, so that every caller that falls back when Redis
    cannot serve it falls back here too."""

    retriable = False


class DialRefused(AcdError):
    """A number outside the dial policy (acd.domain.dialing): never dialled."""

    def __init__(self, number: str, why: str) -> None:
        super().__init__(f"number of {len(number)} characters refused by the dial policy: {why}")
        self.why = why
