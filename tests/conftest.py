import pytest

from tests.redis_support import redis, redis_server  # noqa: F401 - fixtures for the Redis tests


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio-marked tests on asyncio only."""
    return "asyncio"


# Files that type checkers read (tests/test_typing.py); some must fail, none is to be run.
collect_ignore = ["typing"]
