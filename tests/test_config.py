"""Unit tests of QueueConfig and RetryPolicy validation."""

from __future__ import annotations

import traceback
from pathlib import Path
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
        ({"region": "mars"}, "region"),
        ({"base_url": "track.customer.io"}, "base_url"),
        ({"base_url": "http://127.0.0.1:80/api/v1"}, "appends"),
        ({"base_url": "http://127.0.0.1:99999"}, "port"),
        ({"base_url": b"https://track.customer.io"}, "base_url"),
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
        ({"spool_path": 42}, "spool_path"),
        ({"spool_path": "spool", "spool_durability": "fsync"}, "spool_durability"),
        ({"spool_path": "spool", "spool_commit_interval": 0}, "spool_commit_interval"),
        ({"spool_path": "spool", "spool_commit_interval": float("nan")},
         "spool_commit_interval"),
        ({"spool_path": "spool", "max_spool_bytes": 0}, "max_spool_bytes"),
        ({"spool_path": "spool", "max_spool_bytes": 1.5}, "max_spool_bytes"),
        ({"spool_durability": "sync"}, "need spool_path"),
        ({"max_spool_bytes": 1_000_000}, "need spool_path"),
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


def test_the_spool_is_off_by_default_and_takes_a_directory() -> None:
    """No spool unless spool_path is set; then batched commits every 50 ms, no size limit."""
    config = QueueConfig(site_id="site", api_key=SECRET)
    assert config.spool_directory is None
    assert (config.spool_durability, config.spool_commit_interval) == ("batched", 0.05)
    spooled = QueueConfig(site_id="site", api_key=SECRET, spool_path=Path("/var/spool/cio"),
                          spool_durability="sync", max_spool_bytes=10_000_000)
    assert spooled.spool_directory == Path("/var/spool/cio")
    assert spooled.max_spool_bytes == 10_000_000


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
    """CUSTOMERIO_REGION must be us, eu or auto."""
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


# --- base_url: credentials and plain http (issue item 12) ------------------------------------

def _refusal(**overrides: Any) -> str:
    """The whole printed traceback of the ConfigError the overrides cause."""
    values: dict[str, Any] = {"site_id": "site", "api_key": SECRET, **overrides}
    with pytest.raises(ConfigError) as info:
        QueueConfig(**values)
    return "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("url", [
    "https://user:hunter2@track.customer.io",
    "https://:hunter2@track.customer.io",
    "https://hunter2@track.customer.io",
    "http://user:hunter2@127.0.0.1:8080",
    "ftp://user:hunter2@127.0.0.1",
    "user:hunter2@track.customer.io",
    "https://track.customer.io/?api_key=hunter2",
    "https://track.customer.io/hunter2",
    "https://track.customer.io#hunter2",
    "https://track.customer.io:hunter2",
])
def test_base_url_secrets_are_refused_and_never_echoed(url: str) -> None:
    """Credentials (or anything but scheme, host, port) in base_url: refused, not repeated."""
    printed = _refusal(base_url=url)
    assert "hunter2" not in printed
    assert "base_url" in printed


def test_base_url_userinfo_is_refused_with_a_pointer_to_api_key() -> None:
    """The message says where the key goes instead."""
    assert "api_key" in _refusal(base_url="https://:k@track.customer.io").splitlines()[-1]


@pytest.mark.parametrize("url", [
    "http://track.customer.io", "http://10.0.0.5:8080", "http://0.0.0.0:80",
    "http://localhost.example.com", "http://127.0.0.1.nip.io", "http://[2001:db8::1]:80",
])
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    """The API key would travel in clear text, so http needs allow_insecure_http=True."""
    assert "allow_insecure_http" in _refusal(base_url=url).splitlines()[-1]
    config = QueueConfig(site_id="s", api_key="k", base_url=url, allow_insecure_http=True)
    assert config.track_url == url


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080", "http://127.9.8.7", "http://localhost:9", "http://LOCALHOST",
    "http://[::1]:8080", "https://track.customer.io", "https://10.0.0.5:8443",
])
def test_https_and_loopback_http_need_no_opt_in(url: str) -> None:
    """https anywhere, and http to 127.0.0.0/8, ::1 or localhost, are accepted as they are."""
    config = QueueConfig(site_id="s", api_key="k", base_url=url)
    assert config.allow_insecure_http is False
    assert config.track_url == url


def test_allow_insecure_http_does_not_allow_credentials_and_must_be_a_bool() -> None:
    """The opt-in lifts only the https rule; it is a real bool."""
    assert "hunter2" not in _refusal(base_url="http://u:hunter2@proxy.internal",
                                     allow_insecure_http=True)
    assert "allow_insecure_http" in _refusal(allow_insecure_http="yes").splitlines()[-1]


def test_from_env_applies_the_same_base_url_rules() -> None:
    """CUSTOMERIO_BASE_URL is refused like base_url, named, never echoed; the opt-in works."""
    env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_API_KEY": "k",
           "CUSTOMERIO_BASE_URL": "https://:hunter2@track.customer.io"}
    with pytest.raises(ConfigError, match="CUSTOMERIO_BASE_URL") as info:
        QueueConfig.from_env(env)
    assert "hunter2" not in "".join(traceback.format_exception(info.value))
    env["CUSTOMERIO_BASE_URL"] = "http://proxy.internal:8080"
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        QueueConfig.from_env(env)
    config = QueueConfig.from_env(env, allow_insecure_http=True)
    assert config.track_url == "http://proxy.internal:8080"
    env["CUSTOMERIO_BASE_URL"] = "http://127.0.0.1:8080"
    assert QueueConfig.from_env(env).track_url == "http://127.0.0.1:8080"


@pytest.mark.parametrize("url", [
    "https://track.customer.io\n", "http://local\thost:8080", "https://track.customer.io /",
    "https://tra ck.customer.io", "https://track.customer.io\x00", "\nhttps://track.customer.io",
])
def test_base_url_with_whitespace_or_control_characters_is_refused(url: str) -> None:
    """The URL checked must be the URL used: urlsplit drops tabs and newlines, HTTP does not."""
    assert "base_url" in _refusal(base_url=url).splitlines()[-1]


def test_from_env_may_allow_plain_http_to_a_remote_fake() -> None:
    """CUSTOMERIO_ALLOW_INSECURE_HTTP=true lets a compose file point at a fake container."""
    env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_API_KEY": "k",
           "CUSTOMERIO_BASE_URL": "http://fake-track-api:8080"}
    with pytest.raises(ConfigError, match="plain http"):
        QueueConfig.from_env(env)
    config = QueueConfig.from_env({**env, "CUSTOMERIO_ALLOW_INSECURE_HTTP": "true"})
    assert (config.base_url, config.allow_insecure_http) == ("http://fake-track-api:8080", True)
    with pytest.raises(ConfigError, match="CUSTOMERIO_ALLOW_INSECURE_HTTP"):
        QueueConfig.from_env({**env, "CUSTOMERIO_ALLOW_INSECURE_HTTP": "maybe"})


@pytest.mark.parametrize(("value", "allowed"), [
    ("true", True), ("1", True), ("yes", True), (" TRUE ", True), ("Yes", True),
    ("false", False), ("0", False), ("no", False), ("False", False), ("", False),
])
def test_from_env_reads_allow_insecure_http_as_a_boolean(value: str, allowed: bool) -> None:
    """true/1/yes and false/0/no, in any case (README "Security"); empty means unset."""
    env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_API_KEY": "k",
           "CUSTOMERIO_ALLOW_INSECURE_HTTP": value}
    assert QueueConfig.from_env(env).allow_insecure_http is allowed
    remote = {**env, "CUSTOMERIO_BASE_URL": "http://fake-track-api:8080"}
    if allowed:
        assert QueueConfig.from_env(remote).base_url == "http://fake-track-api:8080"
    else:
        with pytest.raises(ConfigError, match="plain http"):
            QueueConfig.from_env(remote)


@pytest.mark.parametrize("value", ["maybe", "on", "off", "2", "y", "n", "truee", "-1"])
def test_from_env_refuses_any_other_allow_insecure_http(value: str) -> None:
    env = {"CUSTOMERIO_SITE_ID": "s", "CUSTOMERIO_API_KEY": "k",
           "CUSTOMERIO_ALLOW_INSECURE_HTTP": value}
    with pytest.raises(ConfigError, match="CUSTOMERIO_ALLOW_INSECURE_HTTP must be true or false"):
        QueueConfig.from_env(env)
