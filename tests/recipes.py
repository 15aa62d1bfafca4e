"""The README's framework recipes, loaded exactly as written, and servers to run them under.

Each recipe in README.md follows a ``<!-- recipe: NAME -->`` line; :func:`load_recipe`
writes its code block to a file and imports it as a module, so a test runs the very code
a reader copies.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

import anyio
import uvicorn

README: Final = Path(__file__).resolve().parent.parent / "README.md"
SERVER_WAIT: Final = 20.0
"""Seconds a server may take to start, or to stop (its lifespan drains the queue)."""


def recipe_source(name: str) -> str:
    """Return the code block that follows ``<!-- recipe: NAME -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    marker = f"<!-- recipe: {name} -->\n```python\n"
    if marker not in text:
        raise LookupError(f"README.md has no recipe {name!r}")
    return text.split(marker, 1)[1].split("\n```", 1)[0] + "\n"


@contextmanager
def loaded_recipe(name: str, directory: Path) -> Iterator[ModuleType]:
    """Import recipe ``name`` as module ``recipe_<name>`` from a file in ``directory``."""
    module_name = "recipe_" + name.replace("-", "_")
    path = directory / f"{module_name}.py"
    path.write_text(recipe_source(name), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(module_name, None)


@asynccontextmanager
async def uvicorn_serving(app: Any, *, lifespan: Literal["on", "off"] = "on"
                          ) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in this event loop.

    Yields the base URL once the server (and the app's lifespan startup) is up; on exit
    asks it to stop and waits, bounded, for the lifespan shutdown to finish.
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every answer waits about 40 ms (Nagle against delayed ACKs).
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", access_log=False,
                            ws="none", http="h11", loop="none")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    try:
        with anyio.fail_after(SERVER_WAIT):
            while not server.started:
                if serving.done():
                    serving.result()
                    raise RuntimeError("uvicorn stopped while starting")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with anyio.fail_after(SERVER_WAIT):
            await serving
        listener.close()
