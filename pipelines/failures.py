"""Expected failures end in one line that names the cause and the fix; everything else keeps its traceback.

``entry(main, argv)`` is the one place a command's errors are handled (the ``braindino`` CLI and every
``python pipelines/JOB.py`` driver go through it). ``explain`` maps the errors a user can fix (bad
config, missing key or credentials, unreachable services, a missing manifest, a registry alias that
names nothing, ...) to their line; anything it does not know is a bug and is shown in full.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
_entered = False  # whether this process runs a command through ``entry``


class UserFacingError(Exception):
    """An expected failure: its message is one line naming the cause and what to do about it."""


def entry(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a command's ``main(argv)``; exit 2 with one line on an expected failure, 130 when interrupted.

    On any failure the Ray the command started or joined is shut down; a Ray that was already up when the
    command began (a notebook's, a test session's) belongs to its caller and stays.
    """
    global _entered
    _entered = True
    signal.signal(signal.SIGTERM, _interrupt)
    ray_was_up = _ray_is_up()
    try:
        main(argv)
    except BaseException as error:  # noqa: BLE001 - sorted into expected and unexpected in _exit_for
        if not ray_was_up:
            _stop_local_ray()
        _exit_for(error)


def _exit_for(error: BaseException) -> None:
    if isinstance(error, KeyboardInterrupt):
        _finish("interrupted; stopped", EXIT_INTERRUPTED)
    if isinstance(error, SystemExit):
        if isinstance(error.code, str):  # sys.exit("message"): stderr may be the log file by now
            _finish(error.code, EXIT_USER_ERROR)
        raise error
    line = explain(error)
    logged = _log_hint()  # the log file, once the command opened its console
    if line is None:
        if logged:
            logging.getLogger("braindino").error("unexpected error", exc_info=error)
        traceback.print_exception(error, file=_user_stderr())
        _finish(f"unexpected error (a bug: please report it){logged}", 1)
    if logged:
        logging.getLogger("braindino").error("%s", line)
    _finish(line, EXIT_USER_ERROR)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def reclaim_sigterm() -> None:
    """Make SIGTERM an interruption again after ``ray.init`` (a no-op outside ``entry``).

    ``ray.init`` replaces the handler with a bare exit and its core worker then installs a native one that
    aborts the process: either way the driver would end without shutting down the local Ray it started.
    """
    if _entered and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _user_stderr():
    from pipelines.console import console

    return console().err


def _log_hint() -> str:
    from pipelines.console import console

    path = console().log_path
    return f"; full log: {path}" if path else ""


def _finish(line: str, code: int) -> None:
    print(f"error: {line}" if code != EXIT_INTERRUPTED else line, file=_user_stderr(), flush=True)
    raise SystemExit(code)


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _stop_local_ray() -> None:
    """Shut down the Ray this process started or joined, so its local raylet and workers do not outlive it."""
    if _ray_is_up():
        sys.modules["ray"].shutdown()


def explain(error: BaseException) -> str | None:
    """The one line for an error a user can fix, or None for one that is a bug."""
    for cause in _chain(error):
        line = _known(cause)
        if line:
            return line
    return None


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        wrapped = getattr(error, "cause", None)  # a Ray task error carries the task's own exception here
        error = wrapped if isinstance(wrapped, BaseException) else (error.__cause__ or error.__context__)


# (module, exception class, what the line starts with): the project's own expected failures. A module not
# yet imported cannot have raised its exception, so none is imported here.
EXPECTED = (
    ("braindino.config", "ConfigError", "config error: "),
    ("ingest.deid", "PseudonymKeyMissing", "pseudonym key not set: "),
    ("datastore.manifest", "ManifestMissing", ""),
    ("datastore.manifest", "ManifestLayoutError", ""),
    ("ingest.planning", "PreprocessMismatch", "preprocessing differs from the output root's: "),
    ("ingest.lease", "LeaseHeld", "ingest refused: "),
    ("datastore.retry", "StoreUnavailable", "object storage failed after its retries: "),
    ("pipelines.registry", "RegistryError", ""),
    ("pipelines.train.resources", "ClusterTooSmall", "pretrain cannot start: "),
    ("pipelines.train.loop", "TrainingDiverged", "pretrain stopped: "),
    ("pipelines.train.watchdog", "DataStalled", "pretrain stopped: "),
    ("serving.auth", "NoTokenConfigured", ""),
)


def _known(error: BaseException) -> str | None:
    if isinstance(error, UserFacingError):
        return str(error)
    for module, name, prefix in EXPECTED:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(error, kind):
            return f"{prefix}{error}".splitlines()[0] if prefix or str(error) else name
    return _storage(error) or _tracking(error)


CREDENTIAL_MARKERS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied",
                      "NoCredentialsError", "Unable to locate credentials", "No response body")
UNREACHABLE_MARKERS = ("Could not connect", "Connection refused", "Failed to connect", "curlCode: 7",
                       "Could not resolve host", "EndpointConnectionError", "Could not connect to the endpoint URL")


def _storage(error: BaseException) -> str | None:
    """S3 credentials refused or the endpoint unreachable (boto3, s3fs and pyarrow word these differently)."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, (OSError, PermissionError)) or "botocore" in type(error).__module__:
        if any(marker in text for marker in CREDENTIAL_MARKERS):
            return ("object storage refused the credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "(or the storage section's key settings) to a key with access to the bucket")
        if any(marker in text for marker in UNREACHABLE_MARKERS):
            where = _endpoint_in(text) or os.environ.get("AWS_ENDPOINT_URL")
            return (f"object storage{f' at {where}' if where else ''} is unreachable: start it or fix "
                    "storage.endpoint_url (AWS_ENDPOINT_URL)")
    return None


def _endpoint_in(text: str) -> str | None:
    import re

    found = re.search(r"https?://[\w.\-]+(:\d+)?", text)
    return found.group(0) if found else None


def _tracking(error: BaseException) -> str | None:
    """The MLflow tracking server does not answer."""
    module = type(error).__module__
    text = str(error)
    if (module.startswith("mlflow") or module.startswith("requests")) and any(
            marker in text for marker in ("Max retries exceeded", "Connection refused", "Failed to establish")):
        where = _endpoint_in(text) or os.environ.get("MLFLOW_TRACKING_URI", "the tracking URI")
        return (f"MLflow server at {where} is unreachable: start it, or point tracking.tracking_uri "
                "(MLFLOW_TRACKING_URI) at a running one")
    return None
