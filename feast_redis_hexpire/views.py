"""Where one feature view's values live: its key builder, hash fields and value decoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feast import RepoConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from . import codec, layout
from .config import RedisHexpireOnlineStoreConfig

try:  # Feast >= 0.63: online feature-view versioning (a "_v<N>" suffix when enabled)
    from feast.infra.online_stores.helpers import compute_versioned_name
except ImportError:  # older Feast has no versioned views: a view's name is its name

    def compute_versioned_name(table: Any, enable_versioning: bool = False) -> str:
        return str(table.name)


__all__ = ["ViewLayout"]

_LAYOUT_ATTR = "_hexpire_layout"


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view's values live: its key builder, fields and value types."""

    name: str
    ts_field: str
    keys: layout.KeyBuilder
    fields: dict[str, tuple[str, str | None]]  # feature -> (hash field, codec kind)
    encoding: str
    decoders: dict[str, Callable[[bytes], ValueProto]]  # feature -> codec.decoder(kind)

    @classmethod
    def of(cls, config: RepoConfig, table: Any) -> ViewLayout:
        """The layout of ``table``, cached on the view object (Feast's registry cache hands
        the same objects to every read) and rebuilt when a setting it depends on changes."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        signature = (
            config.project,
            cfg.key_prefix,
            cfg.field_names,
            cfg.value_encoding,
            versioning,
            len(table.features),
        )
        cached = getattr(table, _LAYOUT_ATTR, None)
        if cached is not None and cached[0] == signature:
            return cached[1]
        built = cls._build(config, table, versioning)
        try:
            setattr(table, _LAYOUT_ATTR, (signature, built))
        except AttributeError:  # a view type that refuses new attributes: just don't cache
            pass
        return built

    @classmethod
    def _build(cls, config: RepoConfig, table: Any, versioning: bool) -> ViewLayout:
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        name = compute_versioned_name(table, versioning)
        join_keys = set(getattr(table, "join_keys", None) or ())
        fields = {
            f.name: (
                layout.feature_field(name, f.name, cfg.field_names),
                codec.expected_kind(f.dtype.to_value_type()),
            )
            for f in table.features
            if f.name not in join_keys
        }
        entities = [e for e in (getattr(table, "entities", None) or ())]
        return cls(
            name=name,
            ts_field=layout.ts_field(name),
            keys=layout.KeyBuilder(cfg.prefix_for(config.project), entities),
            fields=fields,
            encoding=cfg.value_encoding,
            decoders={f: codec.decoder(kind, cfg.value_encoding) for f, (_, kind) in fields.items()},
        )
