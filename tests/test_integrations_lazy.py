"""The frameworks stay optional: importing cio-queue or a helper module imports none of them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FRAMEWORKS = ("fastapi", "starlette", "litestar", "django", "flask", "celery", "uvicorn")


def test_importing_the_helpers_imports_no_framework() -> None:
    """cio_queue and every cio_queue.integrations module import their framework only on use."""
    script = textwrap.dedent(f"""
        import sys

        import cio_queue
        import cio_queue.integrations.aiohttp
        import cio_queue.integrations.celery
        import cio_queue.integrations.django
        import cio_queue.integrations.fastapi
        import cio_queue.integrations.flask
        import cio_queue.integrations.litestar
        import cio_queue.integrations.starlette

        loaded = sorted(name for name in {FRAMEWORKS!r} if name in sys.modules)
        print(" ".join(loaded))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == ""
