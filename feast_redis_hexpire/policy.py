"""Which TTL layer a feature view gets: batch (key-level EXPIRE) or streaming (per-field HPEXPIRE).

Only the view definition reaches the online store, never the call path (materialize or push), so
the decision is made from the view: the tag ``hexpire.mode`` wins; otherwise a StreamFeatureView,
or a view whose source is a push/Kafka/Kinesis stream source, is streaming; everything else is
batch. A streaming view is streaming on every path, its materialization from the batch source
included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feast.stream_feature_view import StreamFeatureView

from .config import RedisHexpireOnlineStoreConfig, check_ttl_seconds
from .constants import KNOWN_TAGS, TAG_FIELD_TTL, TAG_KEY_TTL, TAG_MODE, TAG_PREFIX
from .exceptions import ConfigError

__all__ = ["NO_KEY_TTL", "ViewPolicy", "is_streaming", "mode_reason", "policy_for"]

# ViewPolicy.key_ttl_ms of a batch view with `key_ttl_seconds: null` and no tag: each write
# removes any key TTL (PERSIST), so the setting means what it says on keys written before.
NO_KEY_TTL = -1

_POLICY_ATTR = "_hexpire_policy"


@dataclass(frozen=True)
class ViewPolicy:
    streaming: bool
    # Batch views: > 0 the key TTL re-pinned on every write, NO_KEY_TTL to remove it.
    # Streaming views: 0, the key TTL is left as it is.
    key_ttl_ms: int
    field_ttl_ms: int  # streaming views: per-field TTL; 0 for batch views

    @property
    def mode(self) -> str:
        return "streaming" if self.streaming else "batch"


def _tags(view: Any) -> dict[str, Any]:
    tags = getattr(view, "tags", None) or {}
    unknown = sorted(t for t in tags if t.startswith(TAG_PREFIX) and t not in KNOWN_TAGS)
    if unknown:
        raise ConfigError(
            f"feature view {view.name!r}: unknown tag {', '.join(unknown)}; the {TAG_PREFIX}* tags "
            f"are {', '.join(KNOWN_TAGS)}"
        )
    return tags


def _tag_seconds(view: Any, tags: dict[str, Any], tag: str) -> int | None:
    raw = tags.get(tag)
    if raw is None:
        return None
    try:
        seconds = int(str(raw).strip())
    except ValueError:
        raise ConfigError(
            f"feature view {view.name!r}: tag {tag}={raw!r} must be a whole number of seconds"
        ) from None
    try:
        return check_ttl_seconds(f"tag {tag}", seconds)
    except ValueError as e:
        raise ConfigError(f"feature view {view.name!r}: {e}") from None


def _setting(config: RedisHexpireOnlineStoreConfig, name: str) -> int | None:
    """A TTL setting, checked again: a program may change the config after it was loaded."""
    value = getattr(config, name)
    if value is None:
        return None
    try:
        return check_ttl_seconds(name, value)
    except ValueError as e:
        raise ConfigError(f"online_store {e}") from None


def mode_reason(view: Any) -> tuple[bool, str]:
    """Whether ``view`` is streaming, and why (for ``feast-hexpire layout``)."""
    mode = _tags(view).get(TAG_MODE)
    if mode is not None:
        if mode not in ("batch", "streaming"):
            raise ConfigError(
                f"feature view {view.name!r}: tag {TAG_MODE}={mode!r} must be 'batch' or 'streaming'"
            )
        return mode == "streaming", f"tag {TAG_MODE}={mode}"
    if isinstance(view, StreamFeatureView):
        return True, "a StreamFeatureView"
    source = getattr(view, "stream_source", None)
    if source is not None:
        return True, f"its source {source.name!r} is a {type(source).__name__}"
    return False, "no stream source and no hexpire.mode tag"


def is_streaming(view: Any) -> bool:
    return mode_reason(view)[0]


def policy_for(view: Any, config: RedisHexpireOnlineStoreConfig) -> ViewPolicy:
    """The TTLs a write to ``view`` applies. Raises ConfigError naming a bad or unknown tag.
    Cached on the view object (Feast's registry cache hands the same object to every write until
    it is refreshed) and decided again when its tags, its stream source or a TTL setting change."""
    tags = getattr(view, "tags", None) or {}
    signature = (
        config.key_ttl_seconds,
        config.stream_field_ttl_seconds,
        tuple(tags.items()),
        id(getattr(view, "stream_source", None)),
    )
    cached = getattr(view, _POLICY_ATTR, None)
    if cached is not None and cached[0] == signature:
        return cached[1]  # type: ignore[no-any-return]
    policy = _policy(view, config)
    try:
        setattr(view, _POLICY_ATTR, (signature, policy))
    except AttributeError:  # a view type that refuses new attributes: just don't cache
        pass
    return policy


def _policy(view: Any, config: RedisHexpireOnlineStoreConfig) -> ViewPolicy:
    tags = _tags(view)
    streaming = is_streaming(view)
    key_ttl = _tag_seconds(view, tags, TAG_KEY_TTL) or _setting(config, "key_ttl_seconds")
    field_ttl = _tag_seconds(view, tags, TAG_FIELD_TTL) or _setting(config, "stream_field_ttl_seconds") or 0
    if streaming:
        return ViewPolicy(True, 0, field_ttl * 1000)
    return ViewPolicy(False, key_ttl * 1000 if key_ttl else NO_KEY_TTL, 0)
