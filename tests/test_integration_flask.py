"""The Flask recipe: under Flask's test client, and under a real threaded WSGI server.

The acceptance test runs the recipe's app in a process of its own under werkzeug's
threaded server, 8 client connections (so 8 handler threads) enqueue 10,000 operations,
the process exits, and the fake Track API must have every event id exactly once: the
``atexit`` handler drained the queue.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlencode

import pytest

from .recipes import SERVER_WAIT, loaded_recipe
from .threaded_fake import ThreadedFake, threaded_fake

THREADS = 8
OPERATIONS = 10_000
PER_REQUEST = 10
"""Operations one request of the acceptance test enqueues."""

# Serves the recipe's app with werkzeug's threaded server, one thread per keep-alive
# connection, plus a route that enqueues several operations per request; prints the port,
# and stops when its stdin closes, leaving the queue to the interpreter's exit.
SERVER_SCRIPT = textwrap.dedent("""
    import sys
    import threading

    from flask import request
    from werkzeug.serving import WSGIRequestHandler, make_server

    from recipe_flask import app, cio

    @app.post("/signup-many")
    def signup_many():
        start, count = int(request.form["start"]), int(request.form["count"])
        ids = [cio.track(f"user-{n}@example.com", "signed_up", {"n": n}).event_id
               for n in range(start, start + count)]
        return {"event_ids": ids}

    class KeepAlive(WSGIRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_request(self, *args, **kwargs):
            pass

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=KeepAlive)
    print(server.port, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
    server.serve_forever()
    server.server_close()
""")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedFake]:
    with threaded_fake() as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.fixture
def recipe(fake: ThreadedFake, tmp_path: Path) -> Iterator[ModuleType]:
    with loaded_recipe("flask", tmp_path) as module:
        yield module


def test_flask_recipe_under_the_test_client(recipe: ModuleType, fake: ThreadedFake) -> None:
    """The recipe's view enqueues through init_app's queue; closing it delivers each event."""
    from cio_queue.integrations.flask import get_queue  # noqa: PLC0415

    client = recipe.app.test_client()
    event_ids = []
    for n in range(20):
        response = client.post("/signup", data={"email": f"user-{n}@example.com"})
        assert response.status_code == 200
        event_ids.append(response.get_json()["event_id"])
    with recipe.app.app_context():
        assert get_queue() is recipe.cio
    stats = recipe.cio.close()  # what the process's exit does
    assert (stats.enqueued, stats.delivered) == (20, 20)
    assert fake.event_ids() == Counter(event_ids)


def read_line(stream: object) -> str:
    """Read one line from a child's stdout within SERVER_WAIT seconds."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()))  # type: ignore[attr-defined]
    reader.start()
    reader.join(SERVER_WAIT)
    assert lines, "the server printed nothing"
    return lines[0]


def test_ten_thousand_operations_from_eight_threads_are_delivered_once_at_exit(
        recipe: ModuleType, fake: ThreadedFake, tmp_path: Path) -> None:
    """8 threads of a threaded WSGI server enqueue 10,000 operations; exit delivers each once."""
    env = {**os.environ, **fake.env(), "PYTHONPATH": str(tmp_path)}
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT], env=env, cwd=tmp_path, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
        try:
            port = int(read_line(server.stdout))
            event_ids: list[str] = []
            lock = threading.Lock()
            per_thread = OPERATIONS // THREADS

            def client(index: int) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=SERVER_WAIT)
                try:
                    for start in range(index * per_thread, (index + 1) * per_thread,
                                       PER_REQUEST):
                        body = urlencode({"start": start, "count": PER_REQUEST})
                        connection.request("POST", "/signup-many", body, {
                            "Content-Type": "application/x-www-form-urlencoded"})
                        response = connection.getresponse()
                        assert response.status == 200
                        ids = json.loads(response.read())["event_ids"]
                        with lock:
                            event_ids.extend(ids)
                finally:
                    connection.close()

            threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(SERVER_WAIT)
            assert len(event_ids) == OPERATIONS
        finally:
            assert server.stdin is not None
            server.stdin.close()  # the server stops, and the process exits
            code = server.wait(timeout=SERVER_WAIT)
            assert server.stdout is not None
            server.stdout.close()
    assert code == 0, (tmp_path / "server.log").read_text()
    accepted = fake.event_ids()
    assert len(accepted) == OPERATIONS
    assert accepted == Counter(event_ids)
    assert set(accepted.values()) == {1}
