import pytest

from tests.redis_support import redis_server  # noqa: F401 - a fixture for the Redis tests


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio-marked tests on asyncio only."""
    return "asyncio"
