"""Where one feature view's values live: its key builder, hash fields and value decoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feast import RepoConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from . import codec, layout, naming
from .config import RedisHexpireOnlineStoreConfig
from .constants import PACKED_FORMAT
from .exceptions import ConfigError
from .policy import is_streaming

try:  # Feast >= 0.63: online feature-view versioning (a "_v<N>" suffix when enabled)
    from feast.infra.online_stores.helpers import compute_versioned_name
except ImportError:  # older Feast has no versioned views: a view's name is its name

    def compute_versioned_name(table: Any, enable_versioning: bool = False) -> str:
        return str(table.name)


__all__ = ["ViewLayout", "check_stored_layout", "view_names"]

# At feast apply, how many keys of each entity are sampled for data in the other value_layout.
LAYOUT_SAMPLE_KEYS = 100

_LAYOUT_ATTR = "_hexpire_layout"


@dataclass(frozen=True)
class ViewLayout:
    """Where one feature view's values live: its key builder, fields and value types."""

    name: str
    ts_field: str
    segment: str  # the <entity> part of the keys
    keys: layout.KeyBuilder
    fields: dict[str, tuple[str, str | None]]  # feature -> (hash field, codec kind)
    encoding: str
    decoders: dict[str, Callable[[bytes], ValueProto]]  # feature -> codec.decoder(kind)
    # value_layout: packed: every feature's field (and ts_field) is the view's one field, whose
    # values start with ``head`` (codec.packed_head); ``order``: feature -> position in them.
    packed: bool = False
    head: bytes = b""
    order: dict[str, int] | None = None

    @classmethod
    def of(cls, config: RepoConfig, table: Any, client: Any = None) -> ViewLayout:
        """The layout of ``table``, cached on the view object (Feast's registry cache hands
        the same objects to every read) and rebuilt when a setting it depends on changes or
        this process applied. With ``field_names: auto`` a first build looks up the view's field
        names in Redis (naming.py; one HMGET per view per process) through ``client``, or
        through a short-lived client when None."""
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
        signature = (
            config.project,
            cfg.key_prefix,
            cfg.field_names,
            cfg.value_encoding,
            cfg.value_layout,
            versioning,
            len(table.features),
            naming.generation(),
        )
        cached = getattr(table, _LAYOUT_ATTR, None)
        if cached is not None and cached[0] == signature:
            return cached[1]
        built = cls._build(config, table, versioning, client)
        try:
            setattr(table, _LAYOUT_ATTR, (signature, built))
        except AttributeError:  # a view type that refuses new attributes: just don't cache
            pass
        return built

    @classmethod
    def _build(cls, config: RepoConfig, table: Any, versioning: bool, client: Any) -> ViewLayout:
        cfg: RedisHexpireOnlineStoreConfig = config.online_store
        names = view_names(table, versioning, streaming=False)
        kinds = {f.name: codec.expected_kind(f.dtype.to_value_type()) for f in table.features}
        packed = cfg.value_layout == "packed"
        if packed:  # one field per view, named by the view: no per-feature names to look up
            stored = [names.name] * len(names.features)
        else:
            stored = naming.feature_fields(config, client, names)
        fields = {f: (field, kinds[f]) for f, field in zip(names.features, stored)}
        entities = [e for e in (getattr(table, "entities", None) or ())]
        return cls(
            name=names.name,
            ts_field=names.name if packed else layout.ts_field(names.name),
            segment=names.segment,
            keys=layout.KeyBuilder(cfg.prefix_for(config.project), entities),
            fields=fields,
            encoding=cfg.value_encoding,
            decoders={f: codec.decoder(kind, cfg.value_encoding) for f, (_, kind) in fields.items()},
            packed=packed,
            head=codec.packed_head(names.features, cfg.value_encoding) if packed else b"",
            order={f: i for i, f in enumerate(names.features)} if packed else None,
        )


def view_names(table: Any, versioning: bool, streaming: bool | None = None) -> naming.ViewNames:
    """The (versioned) name, entity segment and stored features (join keys excluded) of a view;
    ``streaming`` None: decided from the view (policy.py), for the claim order at apply."""
    join_keys = list(getattr(table, "join_keys", None) or ())
    segment = layout.entity_segment(list(getattr(table, "entities", None) or ()), join_keys)
    return naming.ViewNames(
        name=compute_versioned_name(table, versioning),
        segment=segment,
        features=tuple(f.name for f in table.features if f.name not in set(join_keys)),
        streaming=is_streaming(table) if streaming is None else streaming,
    )


def check_stored_layout(config: RepoConfig, client: Any, tables: Any) -> None:
    """At ``feast apply``: refuse the ``value_layout`` setting when a sample of the views' hashes
    (up to LAYOUT_SAMPLE_KEYS keys per entity) holds a view's data in the other layout. Nothing
    is changed or deleted: switching layouts means writing the data again."""
    cfg: RedisHexpireOnlineStoreConfig = config.online_store
    packed = cfg.value_layout == "packed"
    versioning = getattr(config.registry, "enable_online_feature_view_versioning", False)
    prefix = cfg.prefix_for(config.project)
    segments: dict[str, list[str]] = {}
    for table in tables:
        names = view_names(table, versioning, streaming=False)
        segments.setdefault(names.segment, []).append(names.name)
    for segment, views in sorted(segments.items()):
        # Where the other layout keeps each view: fields layout "_ts:<view>", packed "<view>".
        probes = [view if not packed else layout.ts_field(view) for view in views]
        keys = []
        for key in client.scan_iter(match=layout.scan_pattern(prefix, segment), count=1000):
            keys.append(key)
            if len(keys) >= LAYOUT_SAMPLE_KEYS:
                break
        if not keys:
            continue
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, probes)
            replies = pipe.execute(raise_on_error=False)
        for key, reply in zip(keys, replies):
            if not isinstance(reply, list):
                continue  # not a hash: not ours
            for view, value in zip(views, reply):
                if value is None or (not packed and not value.startswith(PACKED_FORMAT)):
                    continue
                other = "fields" if packed else "packed"
                raise ConfigError(
                    f"value_layout: {cfg.value_layout}, but key {key.decode(errors='replace')} holds "
                    f"feature view {view!r} in the {other} layout; nothing was changed. Set value_layout: "
                    f"{other} again, or write the data anew: `feast teardown` (removes this project's "
                    f"keys) or a new key_prefix, then `feast apply` and materialize"
                )
