"""What the store does with each view of a repo: mode and why, key pattern, TTLs, the field of
every feature (``feast-hexpire layout --repo .``), so redis-cli users can find a feature::

    for view in describe_views(FeatureStore("feature_repo")):
        print(view.render())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from feast import FeatureStore

from .naming import owners_key
from .online_store import hexpire_store
from .policy import mode_reason, policy_for
from .views import ViewLayout

__all__ = ["ViewDescription", "describe_views", "owners_note"]


@dataclass
class ViewDescription:
    view: str
    mode: str  # "batch" or "streaming"
    reason: str
    key_pattern: str  # fs:user:<user_id>
    key_ttl: str
    field_ttl: str
    ts_field: str
    fields: dict[str, str] = field(default_factory=dict)  # feature -> hash field
    value_layout: str = "fields"  # packed: ts_field holds the event time and every feature

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self) -> str:
        lines = [
            f"{self.view}  {self.mode} ({self.reason})",
            f"  key        {self.key_pattern}",
            f"  key TTL    {self.key_ttl}",
            f"  field TTL  {self.field_ttl}",
            f"  timestamp  {self.ts_field}",
        ]
        if self.value_layout == "packed":
            lines[-1] = (
                f"  timestamp  {self.ts_field} (value_layout: packed: this one field holds the "
                f"event time and every value)"
            )
        width = max([len(f) for f in self.fields] + [7])
        lines += [f"  {feature.ljust(width)} -> {fld}" for feature, fld in self.fields.items()]
        return "\n".join(lines)


def _key_pattern(prefix: str, view: ViewLayout, table: Any, join_key_of: dict[str, str]) -> str:
    join_keys = list(getattr(table, "join_keys", None) or ())
    if len(view.keys.entity_names) == 1:
        name = view.keys.entity_names[0]
        join_keys = [join_key_of.get(name, join_keys[0] if join_keys else name)]
    ids = ":".join(f"<{k}>" for k in sorted(join_keys))
    return f"{prefix}{view.segment}:{ids}"


def describe_views(store: FeatureStore) -> list[ViewDescription]:
    """Every feature view and stream feature view of the repo's registry, by name."""
    config = store.config
    cfg = config.online_store
    client = hexpire_store(store).client(config)
    prefix = cfg.prefix_for(config.project)
    join_key_of = {e.name: e.join_key for e in store.list_entities()}
    tables = [*store.list_feature_views(), *store.list_stream_feature_views()]
    described = []
    for table in sorted(tables, key=lambda t: t.name):
        view = ViewLayout.of(config, table, client)
        streaming, reason = mode_reason(table)
        policy = policy_for(table, cfg)
        if streaming:
            key_ttl = "none from this view (a batch view's write sets the key TTL)"
            field_ttl = f"{policy.field_ttl_ms // 1000} s per field (HPEXPIRE), from the {cfg.ttl_from}"
        else:
            key_ttl = f"{policy.key_ttl_ms // 1000} s (EXPIRE, re-pinned on every write)"
            if not policy.key_ttl_ms:
                key_ttl = "none"
            field_ttl = "none (the fields expire with the key)"
        described.append(
            ViewDescription(
                view=view.name,
                mode="streaming" if streaming else "batch",
                reason=reason,
                key_pattern=_key_pattern(prefix, view, table, join_key_of),
                key_ttl=key_ttl,
                field_ttl=field_ttl,
                ts_field=view.ts_field,
                fields={
                    feature: f"{spec[0]}[{feature}]" if view.packed else spec[0]
                    for feature, spec in view.fields.items()
                },
                value_layout=cfg.value_layout,
            )
        )
    return described


def owners_note(store: FeatureStore) -> str:
    """Where the owners of shared feature names are recorded (one line for the CLI)."""
    cfg = store.config.online_store
    if cfg.value_layout == "packed":
        return (
            "value_layout: packed; each view of an entity is one field named by the view, "
            "`feast-hexpire inspect` shows it unpacked"
        )
    return (
        f"value_layout: fields, field_names: {cfg.field_names}; owners of feature names shared by "
        f"views of one entity: "
        f"HGETALL {owners_key(cfg.prefix_for(store.config.project))}"
    )
