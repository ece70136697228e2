"""The recorder's background checkpoint writer: one job in flight, in order, errors raised in the caller."""
from __future__ import annotations

import errno
import threading

import pytest

from nnctl.runs.recorder import _BackgroundWriter


def test_jobs_run_one_at_a_time_in_order_off_the_calling_thread():
    writer, done, threads = _BackgroundWriter(), [], set()
    gate = threading.Event()

    def job(i):
        def run():
            if i == 0:
                assert gate.wait(5)   # holds the first job until the caller has moved on
            threads.add(threading.get_ident())
            done.append(i)
        return run

    writer.submit(job(0))
    assert done == []                 # submit returned while job 0 is still blocked
    gate.set()
    for i in range(1, 4):
        writer.submit(job(i))         # waits for the job before it (job i itself may be done too)
        assert done[:i] == list(range(i))
    writer.wait()
    assert done == [0, 1, 2, 3] and threading.get_ident() not in threads


def test_a_failed_write_is_raised_at_the_next_wait_or_submit_then_cleared():
    writer = _BackgroundWriter()
    err = OSError(errno.ENOSPC, "No space left on device")

    def fail():
        raise err

    writer.submit(fail)
    with pytest.raises(OSError) as caught:
        writer.submit(lambda: None)
    assert caught.value is err        # the same error object, so its message and type are kept
    writer.submit(fail)
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()                     # raised once, then cleared
