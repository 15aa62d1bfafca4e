"""The Celery recipe under a real worker (in-memory broker, threads pool of 8).

The worker runs the recipe's task 10,000 times on 8 threads (in chunks of 10 per broker
message), each run enqueueing one operation; when the worker stops, the
``worker_shutdown`` hook closes the queue, and the fake Track API must have every event id
the tasks returned exactly once.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_success

from cio_queue import QueueClosedError

from .recipes import loaded_recipe, recipe_source
from .threaded_fake import WAIT, ThreadedFake, threaded_fake

TASKS = 10_000
THREADS = 8
PER_MESSAGE = 10
"""Signups per broker message (Celery's ``chunks``): the broker, not the queue, is slow."""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedFake]:
    with threaded_fake() as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.fixture
def recipe(fake: ThreadedFake, tmp_path: Path) -> Iterator[ModuleType]:
    """The README's Celery app, on the in-memory broker instead of its Redis URL."""
    with loaded_recipe("celery", tmp_path) as module:
        module.app.conf.update(
            broker_url="memory://", task_always_eager=False, task_ignore_result=True,
            # The memory transport polls; poll often and fetch ahead, or it runs 30 tasks/s.
            broker_transport_options={"polling_interval": 0.005},
            worker_prefetch_multiplier=64)
        yield module


def test_ten_thousand_tasks_on_eight_threads_are_delivered_once_at_worker_shutdown(
        recipe: ModuleType, fake: ThreadedFake) -> None:
    """The worker's 8 threads enqueue 10,000 operations; its shutdown delivers each once."""
    results: list[str] = []
    finished = threading.Event()
    lock = threading.Lock()

    def collect(result: Any = None, **_: Any) -> None:
        with lock:
            results.extend(result)  # a chunk's task returns its signups' event ids
            if len(results) == TASKS:
                finished.set()

    task_success.connect(collect, weak=False)
    try:
        with start_worker(recipe.app, pool="threads", concurrency=THREADS,
                          perform_ping_check=False, shutdown_timeout=WAIT) as worker:
            people = [(f"user-{n}@example.com",) for n in range(TASKS)]
            for chunk in recipe.signup.chunks(people, PER_MESSAGE).group().tasks:
                chunk.apply_async()
            assert finished.wait(WAIT), f"only {len(results)} tasks ran"
            worker.stop()  # the warm shutdown that SIGTERM gives `celery worker`
    finally:
        task_success.disconnect(collect)

    stats = recipe.cio.statistics()  # worker_shutdown closed the queue: these are final
    assert (stats.enqueued, stats.delivered, stats.pending) == (TASKS, TASKS, 0)
    with pytest.raises(QueueClosedError):
        recipe.cio.track("late", "signed_up")
    accepted = fake.event_ids()
    assert len(accepted) == TASKS
    assert accepted == Counter(results)
    assert set(accepted.values()) == {1}


# The recipe's app on kombu's filesystem broker and a file result backend, so that a
# prefork worker in another process and this test can share them.
PREFORK_APP = textwrap.dedent("""
    import os

    import recipe_celery
    from recipe_celery import app, signup

    from cio_queue import QueueConfig
    from cio_queue.integrations.celery import setup

    # The recipe's queue, but with a flush interval no test outlasts: only a close sends.
    recipe_celery.cio = setup(app, QueueConfig.from_env(flush_interval=600))
    shared = os.environ["CIO_TEST_CELERY_DIR"]
    app.conf.update(
        broker_url="filesystem://", result_backend=f"file://{shared}/results",
        # Every folder of the transport in the test's directory: kombu's default
        # control_folder, "control", is relative to whichever process binds a queue
        # first (this test's, in the repository).
        broker_transport_options={"data_folder_in": f"{shared}/broker",
                                  "data_folder_out": f"{shared}/broker",
                                  "control_folder": f"{shared}/control",
                                  "processed_folder": f"{shared}/processed",
                                  "polling_interval": 0.05},
        task_always_eager=False, worker_prefetch_multiplier=1)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the prefork pool forks")
def test_prefork_children_deliver_what_they_queued_when_they_stop(
        fake: ThreadedFake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefork children leave by os._exit; worker_process_shutdown still drains their queues."""
    (tmp_path / "broker").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "recipe_celery.py").write_text(recipe_source("celery"), encoding="utf-8")
    (tmp_path / "prefork_app.py").write_text(PREFORK_APP, encoding="utf-8")
    monkeypatch.setenv("CIO_TEST_CELERY_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "prefork_app", "worker", "--pool=prefork",
             "--concurrency=2", "--loglevel=WARNING", "--without-heartbeat",
             "--without-gossip", "--without-mingle"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
        try:
            prefork_app = importlib.import_module("prefork_app")
            pending = [prefork_app.signup.delay(f"user-{n}@example.com") for n in range(20)]
            event_ids = [result.get(timeout=WAIT, interval=0.05) for result in pending]
        finally:
            worker.send_signal(signal.SIGTERM)  # a warm shutdown: children finish and exit
            code = worker.wait(timeout=WAIT)
            for name in ("prefork_app", "recipe_celery"):
                sys.modules.pop(name, None)
    assert code == 0, (tmp_path / "worker.log").read_text()
    # Fewer than a batch, long before the flush interval: only a close sent them.
    assert fake.event_ids() == Counter(event_ids)
