"""The order in which a run takes its tasks: the planned order, passing by tasks another process is running.

Several runs may share an output directory (``--tasks``, `locks.py`). When the next task a run wants is locked
by another live process, the run takes another task that is ready (every task it reads has been dealt with in
this run: run, reused, cached, left out or blocked) and comes back to the locked one later, first thing after
each task it takes. Only when every task left is locked by another process, or reads one that is, does it wait
(polling the locks, as a single waiting run does). A task is yielded once; whether it runs here or is reused is
decided under its lock (`locks.claim`), so no task runs twice.

`schedule` knows nothing of stages or files: the runner gives it `needs_claim(task)` (the task must be run
unless another process finished it) and `claim(task)` (`locks.claim` on the task's lock).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from . import locks

logger = logging.getLogger(__name__)

NO_CLAIM = "no-claim"  # yielded for a task that needed no lock (cached, left out by --tasks, blocked)


def schedule(tasks: list, needs_claim: Callable[[object], bool], claim: Callable[[object], object], *,
             poll_s: float | None = None, on_wait: Callable[[list], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[object, object]]:
    """Yield ``(task, claim)`` for every task of `tasks` (in dependency order) once: `claim` is `NO_CLAIM` when
    `needs_claim(task)` is false, else what `claim(task)` returned (a lock: run it; None: reuse it). A task is
    yielded only after every task it depends on was yielded and the caller came back for the next one (it has
    dealt with it). A task whose `claim` is `locks.HELD` is passed by and tried again after the next task taken;
    when all tasks left are held or wait for held ones, `on_wait(held tasks)` is called and the loop sleeps
    `poll_s` (default `locks.POLL_S`) before trying them again."""
    left = list(tasks)
    names = {t.name for t in left}
    handled: set[str] = set()
    passed: set[str] = set()  # held by another process when last tried
    while left:
        held = []
        for i, task in enumerate(left):
            if any(dep in names and dep not in handled for dep in task.deps.values()):
                continue
            got = claim(task) if needs_claim(task) else NO_CLAIM
            if got == locks.HELD:
                held.append(task)
                if task.name not in passed:
                    passed.add(task.name)
                    logger.info("%s: running in another process; taking other ready tasks meanwhile, then waiting "
                                "for it", task.name)
                continue
            passed.discard(task.name)
            del left[i]
            yield task, got
            handled.add(task.name)
            break
        else:  # nothing could be taken: wait for the held tasks (never a deadlock: their holders are alive)
            if on_wait is not None:
                on_wait(held)
            sleep(locks.POLL_S if poll_s is None else poll_s)


def steps(state, is_main: bool, planned: list, needs_claim, claim) -> Iterator[tuple[object, object]]:
    """``(task, claim)`` in the order the main process takes them (`schedule`): `NO_CLAIM`, a lock
    (run it) or None (finished by another run: reuse it). Under ``accelerate launch`` only the main process takes
    locks; it tells the others each task and its decision (``"run"`` on them for a lock), so all walk alike."""
    taken = schedule(planned, needs_claim, claim) if is_main else None
    if state is None or state.num_processes == 1:
        yield from taken
        return
    from accelerate.utils import broadcast_object_list

    by_name = {t.name: t for t in planned}
    while True:
        step = next(taken, None) if is_main else None
        box = [None if step is None else (step[0].name, step[1] if isinstance(step[1], str) or step[1] is None
                                          else "run")]
        broadcast_object_list(box, from_process=0)
        if box[0] is None:
            return
        name, decision = box[0]
        yield (step if is_main else (by_name[name], decision))
