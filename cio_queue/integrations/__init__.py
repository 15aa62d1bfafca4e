"""Helpers that wire a queue into a web framework's or task queue's lifecycle.

Stage: outside the pipeline; integrations.

One module per framework: ``starlette`` and ``fastapi`` (a lifespan), ``litestar`` (a
plugin), ``aiohttp`` (a cleanup context and an ``AppKey``), ``flask``, ``django`` and
``celery`` (a :class:`~cio_queue.SyncEventQueue` per process, closed where the framework
stops). None of these frameworks is a dependency of cio-queue: importing ``cio_queue``
never imports them, and each module imports its framework only when a helper needs it.
"""
