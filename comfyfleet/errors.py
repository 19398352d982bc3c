"""comfyfleet's one error tree.

Every failure a user can see is one of these. Third-party errors (botocore, httpx,
huggingface_hub, websockets) are translated at exactly one boundary per integration
(``store/s3.py``, ``sources/*``, ``comfy/client.py``) with ``raise ... from exc``.

Each error carries a one-line ``message`` that names the thing and the fact, and a
``hint`` that says what to do. ``str(error)`` joins them. Tokens never appear in either.

Errors that a retry can cure also derive from :class:`TransientError`; flows retry those
and nothing else (see ``is_transient``).

The retry rule: one layer owns each kind of retry, so attempts never multiply.

- The library retries *cheap local units* only: one byte range of a pull, one reopen of a
  source stream after a dropped connection (resuming where the bytes stopped), one S3 call
  (botocore's own retries). These are seconds of work and lose nothing.
- A *whole unit* (a file mirrored, a file pulled, a warm-up phase, a batch job) is retried by
  exactly one owner: the CLI's library driver when run from the command line, or the Prefect
  task when run as a flow. A flow therefore passes ``file_attempts=1``
  (:data:`FLOW_FILE_ATTEMPTS`) and lets its task's ``retries`` + ``transient_only`` decide.
  For a batch job the one owner is the generate engine in both faces
  (``BatchOptions.retries``); the flow's batch task has no retries of its own.
- Nothing retries a non-transient error: 401/403/404, a sha256 mismatch that repeats, bad
  input. They fail at once with their hint.

::

    ComfyfleetError
    ├── ConfigError                  bad input from the user: arguments, files, settings
    │   ├── CatalogError             a catalog file/entry/field is wrong (file, entry, field)
    │   ├── StoreConfigError         unknown store URI scheme, missing bucket name, bad block
    │   └── BlockNotFound            no saved Prefect block of that type and name
    ├── StoreError                   the object store refused or failed (names the store)
    │   ├── StoreUnavailable         endpoint unreachable, 5xx, throttled    (+ TransientError)
    │   ├── StoreAuthError           wrong or missing credentials
    │   ├── BucketNotFound           the bucket does not exist
    │   ├── ObjectNotFound           no such key                             (+ FileNotFoundError)
    │   ├── PreconditionFailed       a conditional put lost the race
    │   └── UploadNotFound           a multipart upload id is gone (aborted or completed)
    ├── SourceError                  an upstream (Hugging Face, CivitAI, URL) failed
    │   ├── SourceAuthError          401/403: token missing, wrong or lacking access
    │   │   └── GatedRepoError       gated Hugging Face repo: accept the terms first
    │   ├── SourceNotFound           404: repo, revision, file or model version does not exist
    │   ├── RegionBlocked            451: the source refuses this region
    │   ├── SourceUnavailable        connection drop, timeout, 5xx               (+ TransientError)
    │   │   └── RateLimited          429, carries ``retry_after`` seconds
    │   └── SourceProtocolError      the source answered something we cannot use
    ├── IntegrityError               sha256 or size mismatch (expected and actual both named)
    │   └── UpstreamChanged          the source now reports other bytes than the catalog pins
    ├── InsufficientDiskError        not enough free space (needed, free, missing bytes)
    ├── LockHeldError                another process holds the warm-up lock for this root
    ├── InstanceError                GPU/disk facts could not be read (nvidia-smi failed)
    ├── Cancelled                    the run was interrupted (Ctrl-C); unfinished work is kept
    ├── ComfyError                   ComfyUI answered with an error
    │   ├── ComfyValidationError     HTTP 400 from /prompt, with every node error listed
    │   │   └── ComfyPartialPrompt       200 with node_errors: part of the prompt was queued
    │   ├── ComfyExecutionError      execution_error: node id, node type, exception message
    │   ├── ComfyInterrupted         the prompt was interrupted
    │   ├── ComfyTimeout             the prompt did not finish in time           (+ TransientError)
    │   ├── ComfyConnectionError     ComfyUI cannot be reached or dropped us     (+ TransientError)
    │   ├── InputImageError          an input image is missing, too large or not PNG/JPEG/WebP
    │   └── ComfyAuthError           401/403 from ComfyUI's gateway: token missing or wrong
    ├── FalError                     fal.ai's queue API failed (transient ones + TransientError)
    └── FleetError                   renting, listing or releasing GPU instances failed
        └── VastError                vast.ai's REST API refused or failed (never names the key)
            ├── VastAuthError        401/403: VAST_API_KEY missing, wrong or under-scoped
            ├── VastUnavailable      connection drop, timeout, 5xx               (+ TransientError)
            │   └── VastRateLimited  429 after the bounded retries; ``retry_after`` seconds
            ├── OfferGone            the offer was rented by someone else (404/410 no_such_ask)
            ├── InsufficientCredit   the account lacks credit (missing_billing)
            └── InstanceNotFound     no such instance (destroyed, or another account's)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from comfyfleet.units import format_bytes


class ComfyfleetError(Exception):
    """Base of every comfyfleet error: a message (the fact) and a hint (the fix)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")

    def one_line(self) -> str:
        """The error as a single line, for tables and artifacts."""
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class TransientError(ComfyfleetError):
    """A failure that may go away on its own: retry with backoff."""


def is_transient(exc: BaseException) -> bool:
    """True when a retry may cure ``exc`` (used by Prefect ``retry_condition_fn``)."""
    return isinstance(exc, TransientError)


# A flow's task owns whole-unit retries (see the retry rule above): the library starts the
# unit once per task attempt.
FLOW_FILE_ATTEMPTS = 1


# ---------------------------------------------------------------- configuration


class ConfigError(ComfyfleetError):
    """The user's input is wrong; nothing was done."""


class BlockNotFound(ConfigError):
    """No saved Prefect block of the type and name asked for (the hint says how to save it)."""


class CatalogError(ConfigError):
    """One or more catalog problems; ``problems`` lists them, each naming file, entry, field."""

    def __init__(
        self, message: str, *, problems: Sequence[str] = (), hint: str | None = None
    ) -> None:
        self.problems = list(problems)
        full = (
            message
            if not self.problems
            else message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        )
        super().__init__(full, hint=hint)


class StoreConfigError(ConfigError):
    """A store URI or block cannot be turned into a store."""


# ---------------------------------------------------------------- object store


class StoreError(ComfyfleetError):
    """The object store failed; ``store`` is its display URI (never credentials)."""

    def __init__(self, message: str, *, store: str = "", hint: str | None = None) -> None:
        self.store = store
        super().__init__(message, hint=hint)


class StoreUnavailable(StoreError, TransientError):
    """Endpoint unreachable, timed out, 5xx or throttling."""


class StoreAuthError(StoreError):
    """Credentials missing, wrong, or not allowed to do this."""


class BucketNotFound(StoreError):
    """The bucket does not exist."""


class ObjectNotFound(StoreError, FileNotFoundError):
    """No object under this key."""


class PreconditionFailed(StoreError):
    """A conditional write found the key already taken."""


class UploadNotFound(StoreError):
    """The multipart upload no longer exists."""


# ---------------------------------------------------------------- sources


class SourceError(ComfyfleetError):
    """An upstream source failed; ``source`` names it (URL without query or token)."""

    def __init__(self, message: str, *, source: str = "", hint: str | None = None) -> None:
        self.source = source
        super().__init__(message, hint=hint)


class SourceAuthError(SourceError):
    """401/403: the token is missing, wrong, or lacks access."""


class GatedRepoError(SourceAuthError):
    """A gated Hugging Face repo whose terms the token's user has not accepted."""


class SourceNotFound(SourceError):
    """404: the repo, revision, file or version does not exist."""


class RegionBlocked(SourceError):
    """451: the source refuses requests from this region."""


class SourceUnavailable(SourceError, TransientError):
    """Connection drop, timeout or 5xx."""


class RateLimited(SourceUnavailable):
    """429; ``retry_after`` is the wait the server asked for, in seconds (None if unsaid)."""

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, source=source, hint=hint)


class SourceProtocolError(SourceError):
    """The source answered, but not in a form we can use."""


# ---------------------------------------------------------------- integrity and instance


class IntegrityError(ComfyfleetError):
    """Bytes did not match: sha256 or size differs from what was expected."""

    def __init__(
        self,
        name: str,
        *,
        expected_sha256: str | None = None,
        actual_sha256: str | None = None,
        expected_size: int | None = None,
        actual_size: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.name = name
        self.expected_sha256 = expected_sha256
        self.actual_sha256 = actual_sha256
        self.expected_size = expected_size
        self.actual_size = actual_size
        if expected_size is not None and actual_size is not None and expected_size != actual_size:
            msg = f"{name}: size mismatch, expected {expected_size} bytes, got {actual_size}"
        else:
            msg = f"{name}: sha256 mismatch, expected {expected_sha256}, got {actual_sha256}"
        super().__init__(
            msg,
            hint=hint
            or "the bytes were discarded and nothing was placed; retry, and if it repeats "
            "the source changed: re-pin the catalog entry",
        )


class UpstreamChanged(IntegrityError):
    """The source reports a sha256 or size other than the catalog's pin; nothing was fetched."""


class InsufficientDiskError(ComfyfleetError):
    """Not enough free space at ``path`` for ``needed`` bytes."""

    def __init__(self, path: str, *, needed: int, free: int, hint: str | None = None) -> None:
        self.path = path
        self.needed = needed
        self.free = free
        self.missing = max(0, needed - free)
        super().__init__(
            f"not enough disk at {path}: need {format_bytes(needed)}, "
            f"free {format_bytes(free)}, missing {format_bytes(self.missing)}",
            hint=hint
            or "free space, attach a bigger disk, or pick a smaller profile (--profile minimal)",
        )


class LockHeldError(ComfyfleetError):
    """Another process holds an exclusive lock."""


class InstanceError(ComfyfleetError):
    """Facts about this instance (GPU, disk) could not be read."""


class Cancelled(ComfyfleetError):
    """The run was interrupted (Ctrl-C, a cancelled flow run); unfinished work was kept
    (a multipart upload, a ``.part`` file) so that the next run resumes it."""


# ---------------------------------------------------------------- ComfyUI and fal.ai


class ComfyError(ComfyfleetError):
    """ComfyUI answered with an error."""


@dataclass(frozen=True)
class NodeError:
    """One problem ComfyUI found in a node of a submitted workflow."""

    node_id: str
    class_type: str
    input_name: str
    message: str
    details: str = ""

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.class_type})"
        if self.input_name:
            where += f" input '{self.input_name}'"
        extra = f": {self.details}" if self.details else ""
        return f"{where}: {self.message}{extra}"


class ComfyValidationError(ComfyError):
    """HTTP 400 from ``/prompt``; ``node_errors`` lists every problem."""

    def __init__(
        self,
        message: str,
        *,
        node_errors: Sequence[NodeError] = (),
        hint: str | None = None,
    ) -> None:
        self.node_errors = list(node_errors)
        full = message
        if self.node_errors:
            full += "\n" + "\n".join(f"  - {e}" for e in self.node_errors)
        super().__init__(full, hint=hint)


class ComfyExecutionError(ComfyError):
    """The prompt failed while running (``execution_error``)."""

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str,
        node_type: str,
        exception_message: str,
        exception_type: str = "",
        hint: str | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_message = exception_message
        self.exception_type = exception_type
        super().__init__(
            f"prompt {prompt_id} failed in node {node_id} ({node_type}): "
            f"{exception_type + ': ' if exception_type else ''}{exception_message.strip()}",
            hint=hint,
        )


class ComfyInterrupted(ComfyError):
    """The prompt was interrupted before it finished."""


class ComfyTimeout(ComfyError, TransientError):
    """The prompt did not finish within the allowed time."""


class ComfyConnectionError(ComfyError, TransientError):
    """ComfyUI cannot be reached, or the connection dropped."""


class InputImageError(ComfyError):
    """An input image cannot be used (missing, too large, not PNG/JPEG/WebP)."""


class ComfyPartialPrompt(ComfyValidationError):
    """ComfyUI answered 200 with ``node_errors``: it queued the valid outputs of a prompt and
    dropped the rest. ``prompt_id`` names what it queued (cancelled at once, but it may have
    run and written files before the cancel arrived)."""

    def __init__(
        self,
        message: str,
        *,
        prompt_id: str,
        node_errors: Sequence[NodeError] = (),
        hint: str | None = None,
    ) -> None:
        self.prompt_id = prompt_id
        super().__init__(message, node_errors=node_errors, hint=hint)


class ComfyAuthError(ComfyError):
    """The authenticating gateway in front of ComfyUI refused us (401/403): the bearer token
    is missing or wrong. Not transient: the same token is refused again."""


class FalError(ComfyfleetError):
    """fal.ai's queue API failed."""


class FalUnavailable(FalError, TransientError):
    """fal.ai is unreachable or answered 5xx/429."""


# ---------------------------------------------------------------- fleet (vast.ai)


class FleetError(ComfyfleetError):
    """Renting, listing or releasing GPU instances failed."""


class VastError(FleetError):
    """vast.ai's API refused or failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0, hint: str | None = None) -> None:
        self.status = status
        super().__init__(message, hint=hint)


class VastAuthError(VastError):
    """401/403: the API key is missing, wrong, expired or lacks the permission."""


class VastUnavailable(VastError, TransientError):
    """vast.ai could not be reached, timed out or answered 5xx."""


class VastRateLimited(VastUnavailable):
    """429 after the client's bounded retries; ``retry_after`` is the server's wait, if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, hint=hint)


class OfferGone(VastError):
    """The offer can no longer be rented (taken by someone else): pick the next one."""


class InsufficientCredit(VastError):
    """The vast.ai account lacks credit to rent (or start) an instance."""


class InstanceNotFound(VastError):
    """No instance with this id on the account (destroyed already, or never existed)."""
