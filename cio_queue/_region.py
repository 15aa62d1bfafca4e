"""Region discovery: which data centre the credentials belong to.

Stage: delivery, before the first request (``region="auto"``), and ``EventQueue.check()``.
``GET /api/v1/accounts/region`` answers on either regional host with the workspace's
``url``, ``region`` and ``environment_id`` (track-api.md §1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from ._config import QueueConfig, Region
from ._exceptions import ConfigError, DeliveryError, UnauthorizedError
from ._sender import Request, Response, Sender, classify

__all__ = ["REGION_REQUEST", "AccountRegion", "check_account", "read_region"]

REGION_REQUEST: Final = Request("GET", "/api/v1/accounts/region", b"")


@dataclass(frozen=True, slots=True)
class AccountRegion:
    """Where a workspace lives, as the Track API says.

    Attributes:
        region: the data centre.
        url: the Track API host of that data centre.
        environment_id: the workspace's environment id, when the API gives one.
    """

    region: Region
    url: str
    environment_id: int | None = None


def read_region(response: Response) -> AccountRegion:
    """Read a 200 answer to :data:`REGION_REQUEST`.

    Raises:
        DeliveryError: the body is not the documented ``{"region": "us"|"eu", ...}``.
    """
    try:
        body = json.loads(response.body)
        region = Region[str(body["region"]).upper()]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise DeliveryError("the region answer is not {\"region\": \"us\"|\"eu\", ...}",
                            status=response.status) from None
    environment = body.get("environment_id")
    valid_id = isinstance(environment, int) and not isinstance(environment, bool)
    return AccountRegion(region, region.value, environment if valid_id else None)


async def check_account(sender: Sender, config: QueueConfig) -> AccountRegion:
    """Ask where the credentials belong; refuse a config that does not match (``check()``).

    Raises:
        ConfigError: the credentials were refused, or ``config.region`` is the wrong one.
        DeliveryError: no usable answer.
    """
    response = await sender.send(REGION_REQUEST)
    error = classify(response)
    if isinstance(error, UnauthorizedError):
        raise ConfigError(f"the Track API refused these credentials (HTTP {error.status}): "
                          "check site_id and api_key") from None
    if error is not None:
        raise error
    account = read_region(response)
    region = config.data_centre
    if region != "auto" and account.region is not region:
        right = account.region.name
        raise ConfigError(f"this workspace is in the {right} region, but region is "
                          f"{region.name}: set region=Region.{right} (or region='auto')")
    return account
