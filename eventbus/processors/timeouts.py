"""Time limits for processing an event, in any thread, for sync and asyncio processors.

``deadline(seconds)`` raises ``ProcessingTimeout`` inside the block once the
time is up:

- in the main thread, through SIGALRM, which also interrupts a blocking
  system call (a socket read without a timeout, a sleep);
- in any other thread (``process_queue --all``), through
  ``PyThreadState_SetAsyncExc``, raised at the thread's next bytecode.

An asyncio processor never gets either: a signal raising inside the event
loop's own code would wreck the loop (why Zulip turned its SIGALRM timeout off
for those). Its coroutine runs under ``asyncio.wait_for`` instead, which
cancels it cleanly; ``run_coroutine`` does that.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any


class ProcessingTimeout(BaseException):
    """Processing took longer than its limit.

    A BaseException, so that a processor's ``except Exception`` cannot swallow it.
    """


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise ProcessingTimeout in this block after ``seconds`` (None: no limit)."""
    if seconds is None:
        yield
    elif threading.current_thread() is threading.main_thread():
        with _alarm.within(seconds):
            yield
    else:
        with _watchdog.within(seconds):
            yield


class _Alarm:
    """The process's SIGALRM handler, installed once: installing it per event cost a worker a quarter of its
    time (``signal.signal`` is slow). It raises only while a deadline is active."""

    def __init__(self) -> None:
        self.installed = False
        self.seconds: float | None = None  # the active deadline's limit, None when none is active

    def on_alarm(self, _signum: int, _frame: object) -> None:
        if self.seconds is not None:  # an alarm delivered just after the block ended is ignored
            raise ProcessingTimeout(f"took longer than {self.seconds:g} s")

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        if not self.installed:
            signal.signal(signal.SIGALRM, self.on_alarm)
            self.installed = True
        self.seconds = seconds
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            self.seconds = None
            signal.setitimer(signal.ITIMER_REAL, 0)


_alarm = _Alarm()


class _Watchdog:
    """One thread that raises ProcessingTimeout in the other threads whose deadline passed.

    A ``threading.Timer`` per event cost a thread start each (about 170 µs, 20
    times the main thread's alarm). The watchdog sleeps until the earliest
    deadline, and is woken only when a new one comes earlier than that.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._due: dict[int, float] = {}  # thread id -> monotonic time its deadline passes
        self._fired: set[int] = set()
        self._wakes_at = float("inf")
        self._thread: threading.Thread | None = None

    @contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        me = threading.get_ident()
        due = time.monotonic() + seconds
        with self._condition:
            self._due[me] = due
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="deadline watchdog", daemon=True)
                self._thread.start()
            elif due < self._wakes_at:
                self._condition.notify()
        fired = False
        try:
            yield
        finally:
            with self._condition:
                self._due.pop(me, None)
                fired = me in self._fired
                if fired:
                    self._fired.discard(me)
                    _set_async_exc(me, None)  # drop it if it is still pending
        if fired:
            # It fired as the block ended, so it was not raised inside: the block still took too long.
            raise ProcessingTimeout(f"took longer than {seconds:g} s")

    def _watch(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for thread_id, due in list(self._due.items()):
                    if due <= now:
                        del self._due[thread_id]
                        self._fired.add(thread_id)
                        _set_async_exc(thread_id, ProcessingTimeout)
                self._wakes_at = min(self._due.values(), default=float("inf"))
                self._condition.wait(None if self._wakes_at == float("inf") else self._wakes_at - now)


_watchdog = _Watchdog()


def _set_async_exc(thread_id: int, exception: type[BaseException] | None) -> None:
    """Make ``thread_id`` raise ``exception`` at its next bytecode; None clears a pending one."""
    argument = ctypes.py_object(exception) if exception is not None else ctypes.c_void_p(None)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), argument)


def run_coroutine(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any],
                  seconds: float | None) -> Any:
    """Run ``coroutine`` to completion on ``loop``; ProcessingTimeout after ``seconds``."""
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, seconds))
    except TimeoutError:
        raise ProcessingTimeout(f"took longer than {seconds:g} s") from None
