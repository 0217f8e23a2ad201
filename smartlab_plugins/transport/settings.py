"""Where the transport finds its broker, read from the environment or a config file.

The environment wins over the file, and a command-line option over both:

``SMARTLAB_BROKER_URI``
    The Redis server documents travel through (``redis://host:port/db``;
    ``rediss://`` for TLS, a password as ``redis://:password@host``).
    Default ``redis://127.0.0.1:6379/0``.
``SMARTLAB_BROKER_PREFIX``
    The prefix of every key SmartLab uses in that Redis (streams, group,
    leases), so several beamlines can share one broker. Default ``smartlab``.
``SMARTLAB_BROKER_SHARDS``
    How many streams the documents are spread over; a run stays on one, and
    each is owned by one worker at a time. Default 8 (the most workers that
    share the analysis of one prefix).
``SMARTLAB_BROKER_LEASE``
    Seconds a worker owns a shard without renewing it: how long a dead
    worker's runs wait before another takes them over. Default 10.
``SMARTLAB_CONFIG``
    A TOML file with the same settings in a ``[broker]`` table (``uri``,
    ``prefix``, ``shards``, ``lease_s``) and the worker's in ``[worker]``
    (``name``, ``plugins``, ``tiled_uri``). Default ``smartlab.toml`` in
    ``$XDG_CONFIG_HOME`` (``~/.config``), used if it exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from smartlab_plugins.settings import ConfigurationError, read_config, redact, scrub

DEFAULT_URI = "redis://127.0.0.1:6379/0"
ENVIRONMENT = {
    "uri": "SMARTLAB_BROKER_URI",
    "prefix": "SMARTLAB_BROKER_PREFIX",
    "shards": "SMARTLAB_BROKER_SHARDS",
    "lease_s": "SMARTLAB_BROKER_LEASE",
}


@dataclass(frozen=True)
class BrokerSettings:
    """The broker and the layout of SmartLab's keys in it."""

    uri: str = DEFAULT_URI
    prefix: str = "smartlab"
    shards: int = 8
    lease_s: float = 10.0
    source: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def shown_uri(self) -> str:
        """The broker URI with its password as ``***``: what logs and messages show."""
        return redact(self.uri)

    @classmethod
    def load(cls, config: dict[str, Any] | None = None, **overrides: Any) -> BrokerSettings:
        """Defaults, then the config file's ``[broker]`` table, the environment, ``overrides``
        (None values ignored); ``source`` says where each value came from."""
        config = read_config() if config is None else config
        table = config.get("broker", {})
        values: dict[str, Any] = {}
        source: dict[str, str] = {}
        for item in fields(cls):
            name = item.name
            if name == "source":
                continue
            if name in table:
                values[name], source[name] = table[name], "config file"
            if env := os.environ.get(ENVIRONMENT[name]):
                values[name], source[name] = env, ENVIRONMENT[name]
            if overrides.get(name) is not None:
                values[name], source[name] = overrides[name], "argument"
        try:
            if "shards" in values:
                values["shards"] = int(values["shards"])
            if "lease_s" in values:
                values["lease_s"] = float(values["lease_s"])
        except ValueError as exc:
            raise ConfigurationError(f"broker setting: {exc}") from None
        settings = cls(**values, source=source)
        if settings.shards < 1 or settings.lease_s <= 0:
            raise ConfigurationError(
                f"broker shards must be >= 1 and lease_s > 0, got shards={settings.shards} "
                f"({source.get('shards', 'default')}), lease_s={settings.lease_s} "
                f"({source.get('lease_s', 'default')})"
            )
        return settings

    def stream(self, shard: int) -> str:
        return f"{self.prefix}:docs:{shard}"

    def lease(self, shard: int) -> str:
        return f"{self.prefix}:lease:{shard}"

    @property
    def group(self) -> str:
        return f"{self.prefix}-workers"

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def shards_key(self) -> str:
        return f"{self.prefix}:shards"


def connect(settings: BrokerSettings):
    """A Redis client of the broker, checked by a ping; BrokerUnreachable names the URI."""
    import redis

    try:
        client = redis.Redis.from_url(settings.uri, socket_timeout=5.0, socket_connect_timeout=3.0)
        client.ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        raise BrokerUnreachable(
            f"cannot reach the SmartLab broker at {settings.shown_uri} "
            f"(from {settings.source.get('uri', 'the default')}): {type(exc).__name__}: "
            f"{scrub(str(exc), settings.uri)}. "
            "Start a Redis server there (Debian: redis-server) or set SMARTLAB_BROKER_URI"
        ) from None
    agree_on_shards(client, settings)
    return client


def agree_on_shards(client, settings: BrokerSettings) -> None:
    """Record the shard count under the prefix, or check it matches the recorded one: a
    publisher and a worker that disagreed would put and look for runs in different streams."""
    client.set(settings.shards_key, settings.shards, nx=True)
    recorded = int(client.get(settings.shards_key))
    if recorded != settings.shards:
        raise ConfigurationError(
            f"the broker at {settings.shown_uri} has {recorded} shards under prefix "
            f"{settings.prefix!r}, this process was set up for {settings.shards} "
            f"({settings.source.get('shards', 'default')}); use the same SMARTLAB_BROKER_SHARDS "
            "everywhere, or another SMARTLAB_BROKER_PREFIX"
        )


class BrokerUnreachable(ConnectionError):
    """The broker did not answer; the message names the URI tried and where it came from."""
