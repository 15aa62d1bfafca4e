"""Hold a TCP port: reserved (bound, not listening) while the fake is down, listened on while up.

Stage: outside the pipeline; the testing kit's fake Track API.

A port freed by a stopped server can be taken before it starts again: by another server, or
as the ephemeral source port of any outgoing connection. A socket bound to the port but not
listening keeps it: the kernel refuses connections to it at once (nothing listens, so no
backlog to hang in) and lets no other socket bind it, except those with SO_REUSEPORT of the
same user, which is how the fake's own listening socket shares it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Linux, macOS and the BSDs have it; Windows does not, and there the port is not held.
_REUSE_PORT: Final[int | None] = getattr(socket, "SO_REUSEPORT", None)


def _bound_socket(host: str, port: int, *options: int) -> socket.socket:
    """Bind a non-blocking TCP socket to host:port (0: a free port) with socket options set."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        for option in options:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_port(sock: socket.socket) -> int:
    """Return the port a socket is bound to."""
    return int(sock.getsockname()[1])


def port_reservation(host: str, port: int) -> socket.socket | None:
    """Hold host:port (0: a free port) for a server that will listen on it now and then.

    SO_REUSEPORT alone lets the server's listening socket share the port. SO_REUSEADDR must
    stay off: two unlistened sockets that both have it may share an address, so any other
    SO_REUSEADDR socket could bind the port and listen on it while the server is down.

    Returns:
        The bound socket, or None where SO_REUSEPORT does not exist (Windows).
    """
    if _REUSE_PORT is None:
        return None
    return _bound_socket(host, port, _REUSE_PORT)


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind the socket a server listens on, beside a `port_reservation` of the same port.

    SO_REUSEADDR lets it bind while the previous run's connections linger in TIME_WAIT.
    """
    options = [socket.SO_REUSEADDR] if _REUSE_PORT is None else [socket.SO_REUSEADDR, _REUSE_PORT]
    return _bound_socket(host, port, *options)


@contextmanager
def reserved_port(host: str = "127.0.0.1") -> Iterator[int]:
    """Hold a free TCP port on `host` with nothing listening on it, for the `with` block.

    Connections to it are refused at once and no other socket can bind it, so it stands for
    "the API is down" without the risk that someone else answers there.

    Args:
        host: The address to hold the port on.

    Yields:
        The port number; it is released when the block ends.
    """
    with _bound_socket(host, 0) as sock:
        yield bound_port(sock)


@contextmanager
def refused_url(host: str = "127.0.0.1") -> Iterator[str]:
    """Give a base URL where the API is down (connections refused), for the `with` block.

    Args:
        host: The address to hold a port on.

    Yields:
        A URL such as ``http://127.0.0.1:40123`` (no trailing slash), refused until the
        block ends.
    """
    with reserved_port(host) as port:
        yield f"http://{host}:{port}"
