"""The one error tree of flowyard.

Every error the project raises on purpose derives from ``FlowyardError``; its
docstring is its default message. Adapters translate driver errors into these at
the edge, the HTTP API maps them to status codes in one table
(``services/api/errors.py``) and the CLI prints one line and exits non-zero.

    FlowyardError
    ├── ConfigError              bad settings, unsupported URL scheme, SQLite in server mode
    ├── InvalidInput             a request field is wrong (carries ``field``)
    │   ├── UnsafeFileName
    │   ├── RequestTooLarge      a body, an input file or ``params`` over its limit (HTTP 413)
    │   │   ├── UploadTooLarge
    │   │   └── ParamsTooLarge
    │   ├── UnsupportedMediaType a body whose content type the route cannot read (HTTP 415)
    │   └── WeakPassword
    ├── Unauthenticated          no, wrong, expired or revoked credentials (HTTP 401)
    │   └── TooManyAttempts      failed sign-ins are throttled for this user or address (429)
    ├── Forbidden                signed in, but the role does not allow it (HTTP 403)
    ├── NotFound
    │   ├── TaskNotFound
    │   ├── FlowNotFound
    │   ├── OutputNotFound
    │   ├── WebhookNotFound
    │   ├── UserNotFound
    │   └── TokenNotFound
    ├── Conflict
    │   ├── DataDirInUse         another ``flowyard serve`` holds this data folder
    │   ├── UserExists
    │   ├── IllegalTransition    an event that the task's state does not allow
    │   ├── StaleAttempt         an event from an attempt that is no longer current (fencing)
    │   └── TaskFinished         cancelling or changing a finished task
    ├── LeaseLost                a worker's claim was taken away (expired, re-claimed, cancelled)
    ├── FlowFailed               a flow raised; the message is shown to the user
    │   ├── DoNotRetry           a failure retrying cannot fix (never retried, whatever the policy)
    │   └── FlowTimedOut         the flow ran past its timeout ("timed out after N s")
    ├── FlowCancelled            a flow stopped because cancellation was requested
    ├── SchemaMissing            the database has no (or an old) flowyard schema
    └── Unavailable              a backing service (database, NATS) cannot be reached
"""

from __future__ import annotations


class FlowyardError(Exception):
    """flowyard failed."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or "").strip()
        super().__init__(self.message)


class ConfigError(FlowyardError):
    """The configuration is invalid."""


class InvalidInput(FlowyardError):
    """The request is invalid."""

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class UnsafeFileName(InvalidInput):
    """The file name is not allowed (path separators, '..' or an absolute path)."""


class RequestTooLarge(InvalidInput):
    """The request body is larger than the configured limit."""


class UploadTooLarge(RequestTooLarge):
    """The upload is larger than the configured limit."""


class ParamsTooLarge(RequestTooLarge):
    """params is larger than the configured limit."""


class UnsupportedMediaType(InvalidInput):
    """The request body's content type is not one this route reads."""


class WeakPassword(InvalidInput):
    """The password is too weak."""


class Unauthenticated(FlowyardError):
    """Sign in first: send a token (Authorization: Bearer), a user and password, or a session."""


class TooManyAttempts(Unauthenticated):
    """Too many failed sign-ins; wait before trying again."""

    def __init__(self, message: str | None = None, *, retry_after: float = 60.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Forbidden(FlowyardError):
    """Your role does not allow this."""


class NotFound(FlowyardError):
    """Not found."""


class TaskNotFound(NotFound):
    """No task has this id."""


class FlowNotFound(NotFound):
    """No flow has this name."""


class OutputNotFound(NotFound):
    """The task has no output of this name."""


class WebhookNotFound(NotFound):
    """No webhook subscription has this id."""


class UserNotFound(NotFound):
    """No user has this name."""


class TokenNotFound(NotFound):
    """No token has this id."""


class Conflict(FlowyardError):
    """The request conflicts with the current state."""


class DataDirInUse(Conflict):
    """Another flowyard server is running on this data folder."""


class UserExists(Conflict):
    """A user with this name exists already."""


class IllegalTransition(Conflict):
    """The task's state does not allow this event."""


class StaleAttempt(Conflict):
    """The event belongs to an attempt that is no longer current."""


class TaskFinished(Conflict):
    """The task has already finished."""


class LeaseLost(FlowyardError):
    """The worker no longer holds this task (lease expired, re-claimed or cancelled)."""


class FlowFailed(FlowyardError):
    """The flow failed."""


class DoNotRetry(FlowFailed):
    """The flow failed in a way another attempt cannot fix."""


class FlowTimedOut(FlowFailed):
    """The flow ran past its timeout."""


class FlowCancelled(FlowyardError):
    """The flow was cancelled."""


class SchemaMissing(FlowyardError):
    """The database has no flowyard schema: run 'flowyard db upgrade' or start the server once."""


class Unavailable(FlowyardError):
    """A backing service is unavailable."""
