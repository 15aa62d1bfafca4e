"""Where requests go: the data centres, the region setting, the base URL's and Redis URL's rules.

Stage: none; part of the configuration, read when a QueueConfig is made or read from the
environment. The rules keep the API key safe: a base URL is only scheme, host and port,
never carries credentials, and uses plain http only to this machine unless allowed.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from typing import Any, Final, Literal, Protocol
from urllib.parse import SplitResult, urlsplit

from ._exceptions import ConfigError

__all__ = ["Region", "RegionName", "check_base_url", "check_redis_url", "endpoint_from",
           "region_of"]

_BOOLEANS: Final = {"1": True, "true": True, "yes": True, "0": False, "false": False,
                    "no": False}


class RegionName(Protocol):
    """Anything named after a region, such as the official SDK's ``customerio.Regions.US``."""

    @property
    def name(self) -> str:
        """``"us"`` or ``"eu"``, in any case."""
        ...


class Region(enum.Enum):
    """A Customer.io data centre; its value is the Track API's scheme and host."""

    US = "https://track.customer.io"
    EU = "https://track-eu.customer.io"


def region_of(value: object) -> Region | Literal["auto"]:
    """Normalise a region: a Region, "us"/"eu"/"auto", or an object named so.

    The official SDK's ``customerio.Regions.US`` is a namedtuple whose ``name`` is "us".
    """
    if isinstance(value, Region):
        return value
    name = value if isinstance(value, str) else getattr(value, "name", None)
    key = name.strip().lower() if isinstance(name, str) else ""
    if key == "auto":
        return "auto"
    if key in ("us", "eu"):
        return Region[key.upper()]
    raise ConfigError("region must be Region.US, Region.EU, 'us', 'eu' or 'auto' "
                      "(the official SDK's customerio.Regions.US and .EU work too)")


def endpoint_from(env: Mapping[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The region, base URL and http permission the environment gives."""
    values: dict[str, Any] = {}
    region = env.get("CUSTOMERIO_REGION", "").strip().lower()
    if region:
        if region not in ("us", "eu", "auto"):
            raise ConfigError(f"CUSTOMERIO_REGION must be 'us', 'eu' or 'auto', not {region!r}")
        values["region"] = region
    insecure = env.get("CUSTOMERIO_ALLOW_INSECURE_HTTP", "").strip().lower()
    if insecure:
        if insecure not in _BOOLEANS:
            raise ConfigError("CUSTOMERIO_ALLOW_INSECURE_HTTP must be true or false")
        values["allow_insecure_http"] = _BOOLEANS[insecure]
    base_url = "" if "base_url" in overrides else env.get("CUSTOMERIO_BASE_URL", "").strip()
    if base_url:
        # Checked here too, so the error names the variable (and never repeats it).
        allowed = overrides.get("allow_insecure_http", values.get("allow_insecure_http"))
        check_base_url(base_url, name="CUSTOMERIO_BASE_URL", allow_insecure_http=allowed is True)
        values["base_url"] = base_url
    return values


def _split_base_url(url: object, name: str) -> SplitResult:
    """Parse a base URL that carries no credentials; the messages never repeat it."""
    if not isinstance(url, str):
        raise ConfigError(f"{name} must be a string such as 'https://track.customer.io'")
    if "@" in url:
        raise ConfigError(f"{name} must not contain credentials or '@'; pass the Track API "
                          "key as api_key and the Site ID as site_id")
    # urlsplit silently drops tabs and newlines, so the URL checked would not be the URL used.
    if not url.isprintable() or " " in url:
        raise ConfigError(f"{name} must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{name} has an invalid host or port; it must look like "
                          "'https://host[:port]'") from None
    return parts


def check_base_url(url: object, *, allow_insecure_http: bool, name: str = "base_url") -> None:
    """Refuse a base URL that is more than scheme://host[:port], or would leak the key.

    Whatever is wrong with the URL may hold a secret (a password, a key in the query), so
    no message repeats it; plain http is allowed only to loopback unless opted in.
    """
    parts = _split_base_url(url, name)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must look like 'https://host[:port]'")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"{name} takes only scheme, host and port; the library appends "
                          "/api/v1/... itself")
    if parts.scheme == "http" and not (allow_insecure_http or _is_loopback(parts.hostname)):
        raise ConfigError(f"{name} uses plain http to {parts.hostname}, which would send the "
                          "API key unencrypted; use https, or set allow_insecure_http=True "
                          "if a trusted network or proxy protects the connection")


def _is_loopback(host: str) -> bool:
    """Tell whether a host is this machine: localhost, 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_redis_url(url: object) -> None:
    """Refuse a Redis URL redis-py would choke on; the messages never repeat it (a password)."""
    if not (isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://"))):
        raise ConfigError("redis_url must be a redis://, rediss:// or unix:// URL")
    if not url.isprintable() or " " in url:
        raise ConfigError("redis_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("redis_url has an invalid host or port; it must look like "
                          "'redis://[:password@]host[:port][/db]'") from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError("redis_url names no host; it must look like "
                          "'redis://[:password@]host[:port][/db]'")
    database = parts.path.strip("/")
    if parts.scheme != "unix" and database and not database.isdigit():
        raise ConfigError("redis_url's path must be a database number, e.g. '/0'")
