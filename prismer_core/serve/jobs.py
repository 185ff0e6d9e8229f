"""A bounded queue of page requests, worked one at a time by one thread, with progress.

The model and experts use every core for one image, so requests run one after another. A
request that arrives while others run waits, and its state says how many are ahead of it;
when ``max_waiting`` requests already wait, :meth:`JobQueue.submit` refuses with
:class:`QueueFull` at once instead of letting the wait grow without bound. Finished jobs are
kept (the ``keep_finished`` newest) until their owner has read the result.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PrismerError

log = logging.getLogger(__name__)

#: ``work(payload, progress)`` does one job; ``progress(stage, done, total)`` reports on it.
Work = Callable[[Any, Callable[[str, int, int], None]], Any]


class QueueFull(PrismerError):
    """Too many requests wait already: the caller should try again shortly."""

    def __init__(self, waiting: int, retry_after: float) -> None:
        self.waiting, self.retry_after = waiting, retry_after
        super().__init__(
            f"the server is busy: {waiting} requests are waiting already, as many as its queue holds; "
            f"try again in about {retry_after:.0f} s"
        )


@dataclass
class Job:
    id: str
    payload: Any
    state: str = "waiting"  # waiting | running | done | failed
    stage: str = ""
    done: int = 0
    total: int = 0
    result: Any = None
    error: str = ""
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of a job for the page: ``ahead`` counts the jobs before it (the running one included)."""

    id: str
    state: str
    ahead: int
    stage: str
    done: int
    total: int
    result: Any
    error: str
    waited: float  # seconds in the queue
    seconds: float  # seconds running (so far, or in all)


class JobQueue:
    """Runs ``work`` on submitted payloads in one background thread, in order of arrival."""

    def __init__(self, work: Work, max_waiting: int = 8, keep_finished: int = 64) -> None:
        if max_waiting < 1:
            raise PrismerError(f"the queue must hold at least one waiting request, got {max_waiting}")
        self.work, self.max_waiting, self.keep_finished = work, max_waiting, keep_finished
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._running: Job | None = None
        self._closed = False
        self._counter = itertools.count(1)
        self._recent: deque[float] = deque(maxlen=8)  # seconds of the last jobs, for retry hints
        self._thread = threading.Thread(target=self._loop, name="prismer-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, payload: Any) -> JobStatus:
        """Queue ``payload``; raise :class:`QueueFull` when ``max_waiting`` jobs wait already."""
        with self._lock:
            if self._closed:
                raise PrismerError("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(len(self._waiting), self._retry_after())
            job = Job(f"{next(self._counter)}-{secrets.token_hex(8)}", payload)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._forget_old()
            self._lock.notify_all()
            return self._status(job)

    def status(self, job_id: str) -> JobStatus | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return self._status(job) if job is not None else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"waiting": len(self._waiting), "running": int(self._running is not None), "max_waiting": self.max_waiting}

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout)

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state, job.started, self._running = "running", time.monotonic(), job
            try:
                result = self.work(job.payload, lambda stage, done, total: self._progress(job, stage, done, total))
            except PrismerError as exc:
                self._finish(job, "failed", error=str(exc))
            except Exception as exc:  # the server keeps serving whatever one request does
                log.exception("request %s failed", job.id)
                self._finish(job, "failed", error=f"internal error: {type(exc).__name__}: {exc}")
            else:
                self._finish(job, "done", result=result)

    def _progress(self, job: Job, stage: str, done: int, total: int) -> None:
        with self._lock:
            job.stage, job.done, job.total = stage, done, total

    def _finish(self, job: Job, state: str, result: Any = None, error: str = "") -> None:
        with self._lock:
            job.state, job.result, job.error, job.finished = state, result, error, time.monotonic()
            job.payload = None  # the image is not needed any more
            self._recent.append(job.finished - (job.started or job.finished))
            self._running = None
            self._forget_old()

    def _forget_old(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.state in ("done", "failed")]
        for job_id in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job_id]

    def _retry_after(self) -> float:
        typical = sum(self._recent) / len(self._recent) if self._recent else 1.0
        return max(1.0, typical * (len(self._waiting) + 1) / 2)

    def _status(self, job: Job) -> JobStatus:
        if job.state == "waiting":
            ahead = next(i for i, waiting in enumerate(self._waiting) if waiting is job) + int(self._running is not None)
        else:
            ahead = 0
        now = time.monotonic()
        waited = (job.started or now) - job.submitted
        seconds = ((job.finished or now) - job.started) if job.started is not None else 0.0
        return JobStatus(job.id, job.state, ahead, job.stage, job.done, job.total, job.result, job.error, waited, seconds)
