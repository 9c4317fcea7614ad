"""Every error evolve raises on purpose, and the exit code the CLI gives it.

    EvolveError                      base; exit 1 ("failed")
    ├── UsageError                   bad flags, config or arguments; exit 2
    ├── InputError                   a seed file or record that cannot be used; exit 2
    │   ├── RecordError              one bad line (file:line and the reason)
    │   └── ImageError               an unreadable, non-image, huge or out-of-root image
    │       └── ImageMissingError    an image file that does not exist
    ├── EndpointError                the model endpoint failed; exit 1
    │   ├── AuthenticationError      401/403: the key is wrong, the run stops at once
    │   ├── ImageInputRejected       the endpoint does not take images, the run stops at once
    │   ├── EndpointUnreachable      refused, DNS, TLS, silent: the run stops at once
    │   ├── RequestRejected          400/404 and other answers not worth retrying
    │   ├── UnreadableAnswer         a 200 whose body is not a chat completion: counted once, not retried
    │   └── TransientEndpointError   429, 5xx, timeouts, resets: retried
    ├── AnswerParseError             a model answer that cannot be read, with its raw text
    ├── MissingModelError            a spaCy or benepar model is not installed
    ├── FailureBudgetExceeded        more failed samples than --max-failures; exit 3
    ├── RunLockedError               another run holds the run folder's lock; exit 4
    └── Interrupted                  SIGINT/SIGTERM/SIGHUP stopped the run cleanly; exit 128 + signal

    AnswerDeferred                   not an error: the answer will come from a Batch API batch

Only `evolve.cli` turns these into exit codes; the core raises them and never exits.
"""

from __future__ import annotations


class EvolveError(Exception):
    """Base of every error evolve raises on purpose; the message is one line a user can act on."""

    exit_code = 1


class UsageError(EvolveError):
    """A flag, argument or configuration value that cannot work."""

    exit_code = 2


class InputError(EvolveError):
    """Input data (a seed file, a record, an image) that cannot be used."""

    exit_code = 2


class RecordError(InputError):
    """One record of a seed file is unusable; `where` is `file:line`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class ImageError(InputError):
    """An image that is missing, unreadable, not an image, too large, or outside --image-root."""


class ImageMissingError(ImageError):
    """An image file that does not exist."""


class EndpointError(EvolveError):
    """The model endpoint could not give an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(EndpointError):
    """The endpoint refused the API key (401/403); nothing else will work."""


class ImageInputRejected(EndpointError):
    """The endpoint rejected a request because it carried an image."""


class EndpointUnreachable(EndpointError):
    """The endpoint cannot be reached at all (connection refused, DNS, TLS, no answer): nothing else will work."""


class RequestRejected(EndpointError):
    """An answer that retrying cannot fix (400, 404, 422 ...)."""


class UnreadableAnswer(EndpointError):
    """A 200 whose body is not JSON, not UTF-8 or not a chat completion: an answer (maybe billed), not retried."""


class TransientEndpointError(EndpointError):
    """429, 5xx, timeouts and connection errors: worth retrying after `retry_after` seconds if given;
    `connection` marks a connection that could not be made (the breaker counts those)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        connection: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.connection = connection


class AnswerParseError(EvolveError):
    """A model answer from which no valid item could be read; `raw` keeps the text."""

    def __init__(self, reason: str, raw: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class MissingModelError(EvolveError):
    """A language model the analysis needs (spaCy, benepar) is not installed."""

    exit_code = 2


class FailureBudgetExceeded(EvolveError):
    """More samples failed than --max-failures allows; the run stopped cleanly."""

    exit_code = 3


class RunLockedError(EvolveError):
    """Another evolve process holds the lock of this run folder."""

    exit_code = 4


class Interrupted(EvolveError):
    """The run was stopped by a signal after flushing what it had finished."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"stopped by signal {signal_number}; run the same command again to resume")
        self.exit_code = 128 + signal_number


class AnswerDeferred(Exception):
    """A request was queued for the Batch API: its sample-round ends here, unrecorded, and a later invocation
    completes it from the response cache once the batch is collected."""


FatalEndpointErrors = (AuthenticationError, ImageInputRejected, EndpointUnreachable)
"""Endpoint errors that stop the whole run: every further request would fail the same way."""
