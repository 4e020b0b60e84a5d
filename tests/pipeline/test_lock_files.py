"""Lock files left empty by a holder killed between creating and writing them are broken by their age."""

import os
import time

from sau_trainer.pipeline import locks


def test_an_empty_lock_file_is_broken_by_its_age_not_after_the_heartbeat_timeout(tmp_path):
    path = tmp_path / ".task.lock"
    path.write_text("")  # created with O_EXCL, then the holder was killed before writing it
    old = time.time() - 60
    os.utime(path, (old, old))
    assert locks.break_if_stale(path, stale_s=600)  # broken now, not after the 10-minute heartbeat timeout
    path.write_text("")
    os.utime(path, (old, old))
    start = time.monotonic()
    lock = locks.acquire(path, lambda: False, stale_s=600, poll_s=0.01, heartbeat_s=600)
    assert lock is not None and time.monotonic() - start < 5
    assert locks.read_lock(path)["pid"] == os.getpid()
    lock.release()


def test_a_fresh_empty_lock_file_is_a_live_holder(tmp_path):
    path = tmp_path / ".task.lock"
    path.write_text("")  # a holder writing it right now
    assert locks.stale_reason(path, locks.read_lock(path), stale_s=600, empty_s=30) is None
    assert not locks.break_if_stale(path, stale_s=600)
    old = time.time() - 31
    os.utime(path, (old, old))
    assert "died before writing it" in locks.stale_reason(path, locks.read_lock(path), stale_s=600, empty_s=30)
