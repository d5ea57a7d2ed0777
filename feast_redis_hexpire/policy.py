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

from .config import RedisHexpireOnlineStoreConfig
from .constants import TAG_FIELD_TTL, TAG_KEY_TTL, TAG_MODE
from .exceptions import ConfigError

__all__ = ["ViewPolicy", "is_streaming", "mode_reason", "policy_for"]


@dataclass(frozen=True)
class ViewPolicy:
    streaming: bool
    key_ttl_ms: int  # batch views: key-level TTL re-pinned on every write; 0 = none
    field_ttl_ms: int  # streaming views: per-field TTL; 0 for batch views

    @property
    def mode(self) -> str:
        return "streaming" if self.streaming else "batch"


def _tag_seconds(view: Any, tag: str) -> int | None:
    raw = (getattr(view, "tags", None) or {}).get(tag)
    if raw is None:
        return None
    try:
        seconds = int(str(raw).strip())
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise ConfigError(f"feature view {view.name!r}: tag {tag}={raw!r} must be a positive integer")
    return seconds


def mode_reason(view: Any) -> tuple[bool, str]:
    """Whether ``view`` is streaming, and why (for ``feast-hexpire layout``)."""
    mode = (getattr(view, "tags", None) or {}).get(TAG_MODE)
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
    """The TTLs a write to ``view`` applies. Raises ConfigError naming a bad tag."""
    streaming = is_streaming(view)
    key_ttl = _tag_seconds(view, TAG_KEY_TTL) or config.key_ttl_seconds or 0
    field_ttl = _tag_seconds(view, TAG_FIELD_TTL) or config.stream_field_ttl_seconds
    if streaming:
        return ViewPolicy(True, 0, field_ttl * 1000)
    return ViewPolicy(False, key_ttl * 1000, 0)
