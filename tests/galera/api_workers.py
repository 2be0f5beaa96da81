"""API workers as OS processes, each with its own app attached to one Galera node, released together.

As in tests/functional/test_quota_concurrency.py, each worker is a process of its own (forkserver: never a
fork of pytest) that builds the app with `configure(settings)` and sends requests through WebTest: its own
interpreter, engine and pool, so the writers race on the usage row from different connections to different
nodes. The release is not the row-lock gate of that module: a lock taken on one Galera node holds only that
node's sessions. Each worker says when its app is built, and the parent releases them all at once with an
Event once every one has. A worker sends its requests one after the other and reports each outcome as it
comes, so the parent can act in the middle of the run (kill a node once enough outcomes are in).
"""

import multiprocessing
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pytest
from webtest import TestApp

from locquota.app import configure

# Bounds for waits on real processes; reaching one is a failure, never a synchronisation.
READY_DEADLINE = 60
OUTCOME_DEADLINE = 60
# What a worker puts on the results queue: (worker, kind, detail).
READY, OUTCOME, FAILED, DONE = "ready", "outcome", "failed", "done"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    worker: int
    number: int  # the request's place in its worker's list
    status: int
    body: object  # the JSON body, or None


def work_in_own_process(
    index: int, settings: dict[str, str], requests: list[Request], start: Event, results: "Queue[tuple]"
) -> None:
    """Child body: build the app, say so, wait for the release, send each request and report its outcome.

    A worker stops after a 503: its database node is gone (or its writes keep losing), and a client that is
    told to try again later does not push the rest of its plan through the same API node.
    """
    try:
        wsgi = configure(settings).make_wsgi_app()
        try:
            app = TestApp(wsgi)
            results.put((index, READY, None))
            if not start.wait(READY_DEADLINE):
                raise RuntimeError("never released")
            for number, request in enumerate(requests):
                response = app.request(
                    request.path,
                    method=request.method,
                    body=request.body,
                    headers=request.headers,
                    content_type=request.content_type,
                    expect_errors=True,
                )
                body = response.json if response.content_type == "application/json" else None
                results.put((index, OUTCOME, Outcome(index, number, response.status_int, body)))
                if response.status_int == 503:
                    break
        finally:
            wsgi.registry["locquota.engine"].dispose()
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        results.put((index, FAILED, traceback.format_exc()))
        return
    results.put((index, DONE, None))


def run_workers(
    settings: list[dict[str, str]],
    plans: list[list[Request]],
    *,
    after: int | None = None,
    action: Callable[[], None] | None = None,
) -> list[Outcome]:
    """Run one worker per settings (its plan of requests), all released at once; every outcome, in arrival order.

    after/action: once `after` outcomes are in, call action() (in this process) while the workers go on.
    A worker that crashed (a traceback, not a response) fails the test.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    results = context.Queue()
    start = context.Event()
    processes = [
        context.Process(target=work_in_own_process, args=(index, worker, plan, start, results), daemon=True)
        for index, (worker, plan) in enumerate(zip(settings, plans, strict=True))
    ]
    outcomes: list[Outcome] = []
    try:
        for process in processes:
            process.start()
        ready = 0
        while ready < len(processes):
            index, kind, detail = _next(results, READY_DEADLINE, "became ready")
            assert kind == READY, f"worker {index}: {detail}"
            ready += 1
        start.set()
        done = 0
        while done < len(processes):
            index, kind, detail = _next(results, OUTCOME_DEADLINE, "reported")
            if kind == FAILED:
                pytest.fail(f"worker {index} crashed: {detail}")
            if kind == DONE:
                done += 1
                continue
            outcomes.append(detail)
            if action is not None and after is not None and len(outcomes) == after:
                action()
    finally:
        for process in processes:
            if not start.is_set():  # the run failed before the release: nothing to wait for
                process.kill()
            process.join(timeout=OUTCOME_DEADLINE)
            if process.is_alive():
                process.kill()
                process.join()
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]
    return outcomes


def _next(results: "Queue[tuple]", deadline_seconds: float, doing: str) -> tuple[int, object, object]:
    started = time.monotonic()
    try:
        return results.get(timeout=deadline_seconds)
    except queue.Empty:
        pytest.fail(f"no worker {doing} within {time.monotonic() - started:.0f} s")
