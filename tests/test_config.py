"""Unit tests of QueueConfig and RetryPolicy validation."""

from __future__ import annotations

from typing import Any

import pytest

from cio_queue import ConfigError, QueueConfig, Region, RetryPolicy

SECRET = "sk_live_very_secret_value"


def test_defaults_match_the_documented_design() -> None:
    """The defaults are 100 operations, 5 seconds, 10,000 pending, US region, 100 req/s."""
    config = QueueConfig(site_id="site", api_key=SECRET)
    assert (config.batch_size, config.flush_interval, config.max_queue_size) == (100, 5.0, 10_000)
    assert config.track_url == "https://track.customer.io"
    assert config.rate_limit == 100
    assert config.transport == "batch"
    assert QueueConfig(site_id="s", api_key="k", region=Region.EU).track_url == (
        "https://track-eu.customer.io")


def test_the_api_key_never_appears_in_a_repr() -> None:
    """repr() and str() of a config hide the API key."""
    config = QueueConfig(site_id="site", api_key=SECRET)
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


def test_config_is_frozen_and_keyword_only() -> None:
    """A config cannot be changed after construction or built positionally."""
    config = QueueConfig(site_id="site", api_key="key")
    with pytest.raises(AttributeError):
        config.batch_size = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        QueueConfig("site", "key")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"site_id": ""}, "site_id"),
        ({"api_key": " "}, "api_key"),
        ({"region": "us"}, "region"),
        ({"base_url": "track.customer.io"}, "base_url"),
        ({"base_url": "http://127.0.0.1:80/api/v1"}, "appends"),
        ({"base_url": "http://127.0.0.1:99999"}, "port"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 20_000}, "max_queue_size"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": float("nan")}, "flush_interval"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"request_timeout": -1}, "request_timeout"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout"),
        ({"rate_limit": 0}, "rate_limit"),
        ({"overflow": "spill"}, "overflow"),
        ({"enqueue_timeout": -0.5}, "enqueue_timeout"),
        ({"retry": {"attempts": 3}}, "RetryPolicy"),
        ({"on_outcome": "print"}, "on_outcome"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(overrides: dict[str, Any],
                                                            words: str) -> None:
    """Each invalid value raises ConfigError (a ValueError) whose message names the problem."""
    values: dict[str, Any] = {"site_id": "site", "api_key": SECRET, **overrides}
    with pytest.raises(ConfigError, match=words) as info:
        QueueConfig(**values)
    assert isinstance(info.value, ValueError)
    assert SECRET not in str(info.value)


def test_from_env_reads_the_three_variables() -> None:
    """from_env reads site id, key and region, and keyword overrides win."""
    env = {"CUSTOMERIO_SITE_ID": "s1", "CUSTOMERIO_API_KEY": "k1", "CUSTOMERIO_REGION": "EU"}
    config = QueueConfig.from_env(env, batch_size=10)
    assert (config.site_id, config.api_key, config.region, config.batch_size) == (
        "s1", "k1", Region.EU, 10)


@pytest.mark.parametrize("missing", ["CUSTOMERIO_SITE_ID", "CUSTOMERIO_API_KEY"])
def test_from_env_names_the_missing_variable(missing: str) -> None:
    """A missing variable is named in the ConfigError."""
    env = {"CUSTOMERIO_SITE_ID": "s1", "CUSTOMERIO_API_KEY": "k1"}
    del env[missing]
    with pytest.raises(ConfigError, match=missing):
        QueueConfig.from_env(env)


def test_from_env_refuses_an_unknown_region() -> None:
    """CUSTOMERIO_REGION must be us or eu."""
    env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_API_KEY": "k", "CUSTOMERIO_REGION": "ap"}
    with pytest.raises(ConfigError, match="CUSTOMERIO_REGION"):
        QueueConfig.from_env(env)


@pytest.mark.parametrize(
    "overrides",
    [{"attempts": 0}, {"attempts": 2.5}, {"timeout": -1}, {"wait_max": float("nan")},
     {"wait_exp_base": 0.5}],
)
def test_retry_policy_validates(overrides: dict[str, Any]) -> None:
    """RetryPolicy refuses impossible values with ConfigError."""
    with pytest.raises(ConfigError):
        RetryPolicy(**overrides)
