"""Run a fake Customer.io Track API on loopback for tests, demos and benchmarks.

Stage: outside the pipeline; the testing kit.

`FakeTrackAPI` is a real `aiohttp.web` server, so clients exercise their actual HTTP stack
(connection pooling, timeouts, disconnects) instead of a mock. It validates requests the way
the real Track API documents it (v1 and v2), records what it accepted, and injects faults
(server errors, 429s, dropped connections, ambiguous deliveries, slow answers) either from a
script or at random with a seeded, deterministic generator.

Typical use::

    async with FakeTrackAPI(faults=FaultRates(server_error=0.1), seed=7) as fake:
        client = MyClient(fake.url, site_id=fake.site_id, api_key=fake.api_key)
        ...
        await fake.wait_for_requests(10)
        assert [op.op for op in fake.operations] == [...]

For code without an event loop, `serve_in_thread()` runs the fake on a thread of its own,
and `wait_for_operations_blocking(n, timeout)` waits from any thread. The pytest plugin
(`_cio_queue_pytest_plugin`, loaded by pytest itself) gives tests both as fixtures.
"""

from ._faults import Fault, FaultRates
from ._ports import refused_url, reserved_port
from ._records import AcceptedOperation, RecordedRequest
from ._server import FakeTrackAPI
from ._thread import serve_in_thread
from ._validation import validate_request

__all__ = [
    "AcceptedOperation",
    "FakeTrackAPI",
    "Fault",
    "FaultRates",
    "RecordedRequest",
    "refused_url",
    "reserved_port",
    "serve_in_thread",
    "validate_request",
]
