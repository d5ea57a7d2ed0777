"""The plugin's errors; every message names what was wrong."""

from __future__ import annotations

__all__ = [
    "BadValueError",
    "ConfigError",
    "FieldCollisionError",
    "FieldTTLError",
    "HexpireError",
    "MissingExtraError",
    "PortInUseError",
    "ServerUnsupportedError",
    "StoreUnavailableError",
]


class HexpireError(Exception):
    """Base class of every error this plugin raises."""


class ConfigError(HexpireError, ValueError):
    """A setting or a view tag has a value the plugin cannot use."""


class ServerUnsupportedError(HexpireError):
    """The server has no hash-field expiration (HPEXPIRE)."""


class FieldCollisionError(ConfigError):
    """Two feature views would write the same field of the same hash."""


class FieldTTLError(HexpireError):
    """A streaming write could not give every written field its TTL (the seed's loud error)."""


class BadValueError(HexpireError, ValueError):
    """A row could not be encoded; nothing of its batch was written."""


class StoreUnavailableError(HexpireError, ConnectionError):
    """Redis could not be reached or failed mid-write; names the address and what was not written."""


class MissingExtraError(HexpireError, ImportError):
    """A command needs the optional ``[local]`` extra (embedded servers, demo web app)."""


class PortInUseError(HexpireError, OSError):
    """A local server could not start: something else listens on the requested port."""
