"""cio-queue's benchmark suite: ``python -m benchmarks [--quick | --smoke]``, from the repo root.

One command measures cio-queue beside the raw limit and its peers against a loopback
server in a process of its own, checks that every operation arrived exactly once, and
writes a markdown report, ``results.json`` and ten figures. The modules, in the order the
data flows:

* ``_sizes``: the named sizes of each mode (full, quick, smoke) and the shared conditions.
* ``_server`` / ``_posthog_endpoint``: the child process (``FakeTrackAPI`` and a minimal
  PostHog ``/batch/`` endpoint on uvloop), its ledger of delivered event ids and its CPU.
* ``_harness``: the workload (one event, 100 producers), the probe that times a run, and
  the delivery check.
* ``_enqueue``: figure 1, the enqueue CPU of cio-queue, the raw loop and ``put_nowait``.
* ``_cio``, ``_raw``, ``_gather_queue``, ``_peers``: the clients under test.
* ``_suite``: every phase in order, each run checked as it ends.
* ``_report`` / ``_plots``: the goals with PASS/FAIL, the tables, JSON and PNG figures.
* ``_cli``: the command line and its exit status.

``python -m benchmarks.typed_events`` stands apart: the per-call cost of a TypedEventQueue
and of ``validate_events=True`` beside EventQueue's. So do the spool's:
``python -m benchmarks.spool`` (the store alone), ``python -m benchmarks.spool_queue``
(enqueue cost and throughput with a spool, ``batched`` and ``sync``, beside the in-memory
queue) and ``python -m benchmarks.spool_outage`` (the README's FastAPI example through a
60 s outage of the API). ``python -m benchmarks.before_send_cost`` measures what a
``before_send`` hook adds per operation, passing, editing in place or replacing the view.
And the fleet's: ``python -m benchmarks.redis_fleet`` (the producer's and the pacer's
costs against redis-server) and ``python -m benchmarks.fleet_throughput`` (a fleet of 1,
2 and 4 processes beside one in-memory queue).
"""
