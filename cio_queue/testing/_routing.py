"""Route a raw Track API path to its endpoint, so an encoded slash (%2F) stays in one segment.

Stage: outside the pipeline; the testing kit's fake Track API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

# (API version, method, path segments after /api/<version>/ with "*" for an id, kind)
_ROUTES: Final[tuple[tuple[str, str, tuple[str, ...], str], ...]] = (
    ("v1", "PUT", ("customers", "*"), "identify"),
    ("v1", "DELETE", ("customers", "*"), "delete"),
    ("v1", "POST", ("customers", "*", "events"), "event"),
    ("v1", "POST", ("events",), "anonymous_event"),
    ("v1", "PUT", ("customers", "*", "devices"), "add_device"),
    ("v1", "DELETE", ("customers", "*", "devices", "*"), "delete_device"),
    ("v1", "POST", ("customers", "*", "suppress"), "suppress"),
    ("v1", "POST", ("customers", "*", "unsuppress"), "unsuppress"),
    ("v1", "POST", ("merge_customers",), "merge"),
    ("v1", "GET", ("accounts", "region"), "region"),
    ("v2", "POST", ("entity",), "entity"),
    ("v2", "POST", ("batch",), "batch"),
)
_APIS: Final = frozenset({"v1", "v2"})


@dataclass(frozen=True, slots=True)
class Route:
    """A matched endpoint: API version, operation kind and decoded path parameters."""

    api: str
    kind: str
    ids: tuple[str, ...]


def match(method: str, raw_path: str) -> Route | set[str] | None:
    """Route a raw path: a `Route`, the allowed methods (wrong method) or None (unknown)."""
    split = _split(raw_path)
    if split is None:
        return None
    api, rest = split
    allowed: set[str] = set()
    for route_api, route_method, pattern, kind in _ROUTES:
        if route_api != api or not _fits(pattern, rest):
            continue
        if route_method != method:
            allowed.add(route_method)
            continue
        ids = tuple(unquote(seg) for p, seg in zip(pattern, rest, strict=True) if p == "*")
        return Route(api, kind, ids)
    return allowed or None


def _split(raw_path: str) -> tuple[str, list[str]] | None:
    """Split ``/api/<version>/rest...`` into the version and the remaining segments."""
    parts = raw_path.split("/")
    if len(parts) < 3 or parts[:2] != ["", "api"] or parts[2] not in _APIS:
        return None
    return parts[2], parts[3:]


def _fits(pattern: tuple[str, ...], segments: list[str]) -> bool:
    """Tell whether path segments fit a route pattern ("*" matches any one segment)."""
    return len(pattern) == len(segments) and all(
        p in ("*", seg) for p, seg in zip(pattern, segments, strict=True)
    )
