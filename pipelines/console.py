"""How a command talks to its user: what it is about to do, progress, warnings, a closing summary.

``open_console(job)`` gives the command its voice and moves everyone else's into a log file
(``$BRAINDINO_LOG_DIR`` or ``.local/logs/JOB-TIME.log``): the loggers of Ray, Ray Data and MLflow, Python
warnings, and, when this process owns its standard streams, whatever else writes to them (Ray's worker
lines, its C++ core, the processes it starts). With ``verbose`` the same chatter also shows live on
stderr. Progress is one live bar per phase on a terminal, else a plain line every
``$BRAINDINO_PROGRESS_SECONDS`` (30) seconds, so ``ray job submit`` logs read as cleanly as a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TextIO

LOG_DIR_ENV = "BRAINDINO_LOG_DIR"
PROGRESS_SECONDS_ENV = "BRAINDINO_PROGRESS_SECONDS"
# Loggers that install their own console handlers; their records go to the log file instead.
LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "urllib3", "botocore", "s3fs", "fsspec", "py.warnings")
QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's own bars are drawn by the driver into its stderr
    "TQDM_DISABLE": "1",  # any other library's tqdm bars (ours pass disable=False explicitly)
    "RAY_DEDUP_LOGS": "0",  # every worker line reaches the log file as it was written
}


class Console:
    """One command's output stream (``out``), its log file and its progress style."""

    def __init__(self, job: str, streams: tuple[TextIO, TextIO] | None, log_path: Path | None,
                 verbose: bool = False) -> None:
        self.job = job
        self.diverted = streams  # streams on the original stdout and stderr once fds 1 and 2 point at the log
        self.log_path = log_path
        self.verbose = verbose
        self.started = time.monotonic()
        self.live_bars = 0  # terminal progress bars on screen: lines are printed above them

    @property
    def out(self) -> TextIO:
        return self.diverted[0] if self.diverted else sys.stdout

    @property
    def err(self) -> TextIO:
        """Where one-line errors and tracebacks go: the user's stderr."""
        return self.diverted[1] if self.diverted else sys.stderr

    def say(self, text: str = "") -> None:
        if self.live_bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def intro(self, doing: str, details: dict[str, object] = {}) -> None:
        """The first lines: ``braindino JOB: DOING`` and the inputs, outputs and places to look."""
        self.say(f"braindino {self.job}: {doing}")
        self.table({**details, **({"log": self.log_path} if self.log_path else {})})

    def table(self, rows: dict[str, object]) -> None:
        width = max((len(key) for key in rows), default=0)
        for key, value in rows.items():
            self.say(f"  {key:<{width}}  {value}")

    def warn(self, text: str) -> None:
        """A problem the user has to act on (also written to the log)."""
        logging.getLogger(f"braindino.{self.job}").warning(text)
        self.say(f"warning: {text}")

    def summary(self, rows: dict[str, object] = {}) -> None:
        """The closing table (if any rows), then the last line: how long it took and where the full log is."""
        if rows:
            self.say("summary:")
            self.table(rows)
        seconds = time.monotonic() - self.started
        where = f"; full log: {self.log_path}" if self.log_path else ""
        self.say(f"braindino {self.job}: done in {seconds:.1f} s{where}")

    @contextmanager
    def progress(self, label: str, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
        """Yield ``advance(n)``: a live bar with rate and ETA on a terminal, else a plain line now and then."""
        if self.out.isatty():
            from tqdm import tqdm

            self.live_bars += 1
            try:
                with tqdm(total=total, desc=f"  {label}", unit=f" {unit}", file=self.out, dynamic_ncols=True,
                          disable=False) as bar:
                    yield bar.update
            finally:
                self.live_bars -= 1
            return
        line = PlainProgress(label, total, unit, self.say, float(os.environ.get(PROGRESS_SECONDS_ENV, 30)))
        yield line.advance
        line.finish()

    @contextmanager
    def follow(self, label: str, total: int | None, unit: str, read_done: Callable[[], int | None],
               every_s: float = 2.0) -> Iterator[None]:
        """Progress of work done in other processes (Ray Train workers) while the block runs:
        ``read_done()`` (how much is done, or None when unknown) is polled every ``every_s`` seconds, and once more at the end."""
        stop = threading.Event()
        with self.progress(label, total, unit) as advance:
            shown = 0

            def catch_up() -> None:
                nonlocal shown
                try:
                    done = read_done()
                except Exception:  # noqa: BLE001 - progress is a courtesy: an unreadable count never stops the job
                    logging.getLogger(f"braindino.{self.job}").warning("progress of %s unreadable", label, exc_info=True)
                    return
                if done is not None and done > shown:
                    advance(done - shown)
                    shown = done

            def poll() -> None:
                while not stop.wait(every_s):
                    catch_up()

            poller = threading.Thread(target=poll, name=f"progress {label}", daemon=True)
            poller.start()
            try:
                yield
            finally:
                stop.set()
                poller.join()
            catch_up()


class PlainProgress:
    """Progress as plain lines: one at most every ``interval_s`` seconds, and one at the end."""

    def __init__(self, label: str, total: int | None, unit: str, say: Callable[[str], None], interval_s: float) -> None:
        self.label, self.total, self.unit, self.say, self.interval_s = label, total, unit, say, interval_s
        self.done = 0
        self.started = self.last = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.say(f"  {self.label}: {self.position()}{self.rate(now)}{self.eta(now)}")

    def finish(self) -> None:
        now = time.monotonic()
        self.say(f"  {self.label}: {self.position()} in {now - self.started:.1f} s{self.rate(now)}")

    def position(self) -> str:
        if not self.total:
            return f"{self.done} {self.unit}"
        return f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"

    def rate(self, now: float) -> str:
        elapsed = now - self.started
        return f", {self.done / elapsed:.2f} {self.unit}/s" if elapsed > 0 and self.done else ""

    def eta(self, now: float) -> str:
        if not self.total or not self.done:
            return ""
        return f", about {(self.total - self.done) * (now - self.started) / self.done:.0f} s left"


_current: Console | None = None


def console() -> Console:
    """The console the running command opened; a plain one on stdout (no log file) when none was."""
    return _current or Console("job", None, None)


def open_console(job: str, verbose: bool = False) -> Console:
    """Give ``job`` its own voice on stdout and send library chatter to a fresh log file (see module doc)."""
    global _current
    os.environ.update({key: value for key, value in QUIET_ENV.items() if key not in os.environ})
    log_dir = Path(os.environ.get(LOG_DIR_ENV) or ".local/logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir / f"{job}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log").resolve()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler, *([logging.StreamHandler(sys.stderr)] if verbose else [])]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    diverted = divert_standard_streams(log_path) if not verbose and owns_standard_streams() else None
    _current = Console(job, diverted, log_path, verbose)
    route_library_logs()
    return _current


def owns_standard_streams() -> bool:
    """True when sys.stdout/stderr are this process's own file descriptors 1 and 2 (not a test's capture)."""
    try:
        return sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__ and sys.stdout.fileno() == 1
    except (AttributeError, ValueError, OSError):
        return False


def divert_standard_streams(log_path: Path) -> tuple[TextIO, TextIO]:
    """Point file descriptors 1 and 2 at the log (children inherit it); return streams on the old stdout and stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return out, err


def route_library_logs() -> None:
    """Strip the console handlers Ray, Ray Data and MLflow install on import so their records reach the log.

    Call again after importing one of them (``connect_ray`` does): they configure themselves lazily.
    Does nothing until a command opened its console.
    """
    if _current is None:
        return
    names = [name for name in logging.Logger.manager.loggerDict
             if any(name == lib or name.startswith(f"{lib}.") for lib in LIBRARY_LOGGERS)]
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
        logger.propagate = True
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def route_worker_output() -> None:
    """Ray prints its workers' lines on the driver; send them to the log (and stderr with ``verbose``)."""
    from ray._private.worker import global_worker_stdstream_dispatcher

    logger = logging.getLogger("ray.workers")

    def log_lines(data: dict) -> None:
        origin = data.get("actor_name") or data.get("task_name") or "worker"
        for line in data.get("lines", []):
            logger.info("(%s pid=%s) %s", origin, data.get("pid"), line)

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.add_handler("ray_print_logs", log_lines)
