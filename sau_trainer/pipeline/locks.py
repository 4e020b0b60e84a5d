"""One lock per task, so that several `sau-trainer run` processes can share an output directory.

Grids are spread over many jobs (a Slurm job array, submitit, plain shells): each runs
``sau-trainer run RECIPE --output-dir D --tasks GLOB`` on the same directory, often on a cluster's shared
filesystem, and some tasks (the tokenizer, the finetuned and pruned models) are needed by all of them.
Whoever creates a task's lock file first runs the task; the others wait for the lock to go and then
reuse the finished output.

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3 and later),
holding the holder's pid, host and a random token. While the task runs, a thread touches the file every
`heartbeat_s` seconds. A lock is stale, and is broken, when its holder is a process of this host that no
longer exists, or when its file has not been touched for `stale_s` seconds (a holder on another host that
was killed: clocks of the hosts must agree to well within `stale_s`), or when it is still empty (or not
JSON) `empty_s` seconds after it was last written (a holder killed between creating it and writing it: a live
holder writes it at once). Breaking is serialised by a second,
short-lived lock file (``<lock>.break``) so that two waiters never both break the same lock and then
remove each other's fresh one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

HEARTBEAT_S = float(os.environ.get("SAU_TRAINER_LOCK_HEARTBEAT_S", 30))
STALE_S = float(os.environ.get("SAU_TRAINER_LOCK_STALE_S", 600))
POLL_S = float(os.environ.get("SAU_TRAINER_LOCK_POLL_S", 2))
EMPTY_S = float(os.environ.get("SAU_TRAINER_LOCK_EMPTY_S", 30))


def lock_path(task_dir: Path) -> Path:
    """``stages/models/.x.lock`` for the task directory ``stages/models/x`` (beside its temporary directory)."""
    return task_dir.parent / f".{task_dir.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@dataclass
class TaskLock:
    """A held lock: `release()` it when the task's output is published (or the task failed)."""

    path: Path
    token: str
    heartbeat_s: float = HEARTBEAT_S
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:  # broken by someone who judged it stale: nothing to keep alive
                    return
        self._thread = threading.Thread(target=beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = read_lock(self.path)
        if holder is not None and holder.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file (pid, host, token, created), or None if there is no lock."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # there, but unreadable now: judged by its heartbeat like a holder on another host
        return {"unreadable": True}
    try:
        doc = json.loads(text)
    except ValueError:  # being written right now (created, not yet filled): a live holder
        return {}
    return doc if isinstance(doc, dict) else {}


def _age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def stale_reason(path: Path, holder: dict, stale_s: float = STALE_S, empty_s: float = EMPTY_S) -> str | None:
    """Why the lock at `path` is stale, or None when its holder may still be running."""
    if not holder:  # empty or half written: its holder writes it right after creating it
        age = _age(path)
        if age is not None and age > min(empty_s, stale_s):
            return f"it has held no holder for {age:.0f} s (its holder died before writing it)"
        return None
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
            and not _pid_alive(holder["pid"]):
        return f"its holder, pid {holder['pid']} on this host, is gone"
    age = _age(path)
    if age is not None and age > stale_s:
        return f"no heartbeat for {age:.0f} s (more than {stale_s:g} s)"
    return None


def try_acquire(path: Path, heartbeat_s: float = HEARTBEAT_S) -> TaskLock | None:
    """Create the lock file if nobody holds it; None if somebody does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    token = uuid.uuid4().hex
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": token,
                   "created": time.time()}, f)
    lock = TaskLock(path, token, heartbeat_s)
    lock.start_heartbeat()
    return lock


def break_if_stale(path: Path, stale_s: float = STALE_S) -> bool:
    """Remove the lock at `path` if it is stale (checked again under the breaker lock); True if removed."""
    holder = read_lock(path)
    if holder is None or stale_reason(path, holder, stale_s) is None:
        return False
    breaker = path.with_name(path.name + ".break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        age = _age(breaker)
        if age is not None and age > max(60.0, stale_s):  # a breaker that died while breaking
            try:
                os.unlink(breaker)
            except FileNotFoundError:
                pass
        return False
    os.close(fd)
    try:
        again = read_lock(path)
        reason = None if again is None else stale_reason(path, again, stale_s)
        if reason is None or again.get("token") != holder.get("token"):
            return False
        os.unlink(path)
        logger.warning("broke the lock %s (held by pid %s on %s): %s", path, holder.get("pid"), holder.get("host"),
                       reason)
        return True
    finally:
        os.unlink(breaker)


HELD = "held"  # claim(): another live process holds the lock


def claim(path: Path, is_done, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> TaskLock | str | None:
    """One attempt, without waiting: the lock (this process runs the task), None when `is_done()` says another
    process finished the task (reuse its output), or `HELD` while another live process holds the lock. Stale
    locks are broken on the way."""
    while True:
        if is_done():
            return None
        lock = try_acquire(path, heartbeat_s)
        if lock is not None:
            if is_done():  # finished (and its lock released) between the check above and now
                lock.release()
                return None
            return lock
        if not break_if_stale(path, stale_s):
            return HELD


def holder_text(path: Path) -> str:
    """``pid 12 on host`` of a lock's holder, for the log."""
    holder = read_lock(path) or {}
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def acquire(path: Path, is_done, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
            poll_s: float | None = None, name: str = "") -> TaskLock | None:
    """Wait until this process holds the lock at `path` (returned) or `is_done()` says another process finished
    the task (None: reuse its output). Stale locks are broken on the way."""
    waiting = False
    while True:
        got = claim(path, is_done, heartbeat_s=heartbeat_s, stale_s=stale_s)
        if got is not HELD:
            return got
        if not waiting:
            waiting = True
            logger.info("%s: running in another process (%s); waiting for it", name or path, holder_text(path))
        time.sleep(POLL_S if poll_s is None else poll_s)
