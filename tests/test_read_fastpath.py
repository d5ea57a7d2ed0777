"""The store's own get_online_features read path answers exactly as Feast's generic one.

Feast's ``OnlineStore._read_features_per_fv`` (unique entities, ``online_read``, then
``_populate_response_from_feature_data``) is the reference; the plugin fills the response
itself, from the raw replies. Both run on the same data and must give equal responses:
values, statuses, event timestamps, feature names, metadata, row order and fan-out of
repeated entities, aliased projections and compound entities included.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from conftest import LAYOUTS, apply_compound_view, apply_repo, field_statuses, hexpire_store, wait_for
from feast import FeatureService, utils
from feast.data_source import RequestSource
from feast.feature_store import FeatureStore
from feast.feature_view import FeatureView
from feast.field import Field
from feast.infra.online_stores.online_store import OnlineStore
from feast.on_demand_feature_view import on_demand_feature_view
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Float64, String
from redis.exceptions import ResponseError

from feast_redis_hexpire import read_plan
from feast_redis_hexpire.online_store import RedisHexpireOnlineStore
from feast_redis_hexpire.synth import streaming_frame

# Every answer is compared in both value layouts (value_layout: fields and packed).
pytestmark = pytest.mark.parametrize("value_layout", LAYOUTS)

FEATURES = [
    "user_batch_features:risk_segment",
    "user_batch_features:avg_amount_30d",
    "user_streaming_features:tx_count_5m",
    "user_streaming_features:last_device_id",
]
# Repeated, missing, pushed-and-materialized and materialized-only users, out of order.
ROWS = ["u0003", "nobody", "u0001", "u0003", "u0012", "u0001", "ghost", "u0002"]


def load(store, pushed=("u0001", "u0003"), pushed_at=None):
    store.materialize_incremental(end_date=datetime.now(UTC))
    store.push("user_events_push", streaming_frame(list(pushed), random.Random(5), pushed_at))


def both(store, features, entity_rows: dict, full_names=False, meta=False):
    """(the plugin's response, Feast's generic response) for the same request: the store's
    per-view hook against Feast's; on a Feast release without the hooks (before 0.61, which
    never calls them) the whole get_online_features against Feast's generic method."""
    if not hasattr(OnlineStore, "_read_features_per_fv"):
        return answers(store, features, entity_rows, full_names, meta and HAS_META)
    prepared = utils._prepare_entities_to_read_from_online_store(
        registry=store.registry, project=store.project, features=features, entity_values=entity_rows,
        full_feature_names=full_names, native_entity_values=True,
    )  # fmt: skip
    join_key_values, grouped_refs, name_map, *_, template = prepared
    online = hexpire_store(store)
    responses = []
    for read in (online._read_features_per_fv, lambda *a: OnlineStore._read_features_per_fv(online, *a)):
        response = GetOnlineFeaturesResponse()
        response.CopyFrom(template)
        refs = [(table, list(names)) for table, names in grouped_refs]
        read(store.config, refs, join_key_values, name_map, response, full_names, meta)
        responses.append(response)
    response = GetOnlineFeaturesResponse()
    response.CopyFrom(template)
    refs = [(table, list(names)) for table, names in grouped_refs]
    asyncio.run(
        online._read_features_per_fv_async(
            store.config, refs, join_key_values, name_map, response, full_names, meta
        )
    )
    assert response == responses[0], "the async read differs from the sync one"
    return responses


def vector(response, name):
    """The result vector of one feature (the entity columns come first)."""
    return response.results[list(response.metadata.feature_names.val).index(name)]


def statuses_of(response) -> set[int]:
    return {s for vector in response.results for s in vector.statuses}


@pytest.mark.parametrize(("full_names", "meta"), [(False, False), (True, True)])
def test_same_answer_as_feast_for_repeated_missing_and_partial_entities(store, r, full_names, meta):
    load(store)
    ours, feast = both(store, FEATURES, {"user_id": ROWS}, full_names, meta)
    assert ours == feast
    assert statuses_of(ours) == {FieldStatus.PRESENT, FieldStatus.NOT_FOUND}
    assert len(ours.results[0].values) == len(ROWS)


def test_same_answer_for_one_entity_and_for_a_view_whose_fields_expired(store, r, value_layout):
    load(store)
    fields = ["tx_count_5m", "last_device_id", "_ts:user_streaming_features"]
    if value_layout == "packed":  # the view's one field
        fields = ["user_streaming_features"]
    r.hpexpire("fs:user:u0001", 1, *fields)
    wait_for("real expiry (1 ms)", lambda: r.hget("fs:user:u0001", fields[0]) is None, timeout=10)
    for rows in (["u0001"], ["u0001", "u0003"]):
        ours, feast = both(store, FEATURES, {"user_id": rows})
        assert ours == feast
        assert vector(ours, "tx_count_5m").statuses[0] == FieldStatus.NOT_FOUND  # u0001
        assert vector(ours, "risk_segment").statuses[0] == FieldStatus.PRESENT


def test_drop_freshness_matches_feast_on_online_read_rows(make_repo, r):
    """freshness_check: drop turns a stale view into (None, None) rows in online_read, which
    Feast's generic path reports NOT_FOUND: the plugin's own path must agree."""
    store = apply_repo(make_repo(freshness_check="drop"))
    load(store, pushed_at=datetime.now(UTC) - timedelta(hours=1))
    ours, feast = both(store, FEATURES, {"user_id": ROWS})
    assert ours == feast
    assert set(vector(ours, "tx_count_5m").statuses) == {FieldStatus.NOT_FOUND}
    assert FieldStatus.PRESENT in set(vector(ours, "risk_segment").statuses)


def test_feature_service_with_an_aliased_join_key(store, r):
    """A projection with join_key_map reads `buyer_id` values as `user_id` keys."""
    load(store)
    batch = store.get_feature_view("user_batch_features")
    stream = store.get_feature_view("user_streaming_features")
    service = FeatureService(
        name="aliased",
        features=[
            batch[["risk_segment"]].with_join_key_map({"user_id": "buyer_id"}),
            stream[["tx_count_5m"]].with_join_key_map({"user_id": "buyer_id"}),
        ],
    )
    store.apply([service])
    service = store.get_feature_service("aliased")
    ours, feast = both(store, service, {"buyer_id": ROWS}, full_names=True)
    assert ours == feast
    values = store.get_online_features(features=service, entity_rows=[{"buyer_id": "u0001"}]).to_dict()
    direct = store.get_online_features(
        features=["user_batch_features:risk_segment"], entity_rows=[{"user_id": "u0001"}]
    )
    assert values["risk_segment"] == direct.to_dict()["risk_segment"] != [None]


def test_compound_entity_view(store, r):
    view = apply_compound_view(store)
    now = datetime.now(UTC)
    rows = []
    for i, (u, m) in enumerate([("u0001", "m1"), ("u0002", "m1"), ("u0001", "m2")]):
        ids = [Value(string_val=u), Value(string_val=m)]
        key = EntityKey(join_keys=["user_id", "merchant_id"], entity_values=ids)
        rows.append((key, {"pair_tx": Value(int64_val=i)}, now, None))
    hexpire_store(store).online_write_batch(store.config, view, rows, None)
    entity_rows = {"merchant_id": ["m2", "m1", "m9", "m1"], "user_id": ["u0001", "u0002", "u0001", "u0002"]}
    ours, feast = both(store, ["user_merchant:pair_tx"], entity_rows)
    assert ours == feast
    pair_tx = vector(ours, "pair_tx")
    assert list(pair_tx.statuses) == [FieldStatus.PRESENT, FieldStatus.PRESENT] + [
        FieldStatus.NOT_FOUND,
        FieldStatus.PRESENT,
    ]
    assert [v.int64_val for v in pair_tx.values] == [2, 1, 0, 1]


def test_an_error_reply_is_raised_and_the_next_read_works(store, r):
    """A key that is not a hash gives WRONGTYPE; the connection stays usable after it."""
    load(store)
    r.set("fs:user:u0005", "not a hash")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        store.get_online_features(features=FEATURES, entity_rows=[{"user_id": u} for u in ("u0001", "u0005")])
    response = store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}])
    assert field_statuses(response)["risk_segment"] == ["PRESENT"]


# ---- get_online_features itself: the store's cached read plan against Feast's generic method ----


class GenericPath(RedisHexpireOnlineStore):
    """The same store answering through Feast's generic code: OnlineStore.get_online_features,
    its per-view ``online_read`` loop and Feast's response helpers (the per-view hooks exist in
    Feast releases after 0.60 only)."""

    get_online_features = OnlineStore.get_online_features
    get_online_features_async = OnlineStore.get_online_features_async
    if hasattr(OnlineStore, "_read_features_per_fv"):
        _read_features_per_fv = OnlineStore._read_features_per_fv
        _read_features_per_fv_async = OnlineStore._read_features_per_fv_async


# Version metadata exists in the Feast releases whose get_online_features takes the argument.
HAS_META = (
    "include_feature_view_version_metadata" in inspect.signature(OnlineStore.get_online_features).parameters
)
META = [False, True] if HAS_META else [False]


def answers(store, features, entity_rows, full_names=False, meta=False):
    """(the store's answer, Feast's generic answer), each checked against its async twin."""
    generic = GenericPath()
    kwargs: dict = dict(full_feature_names=full_names)
    if meta:
        kwargs["include_feature_view_version_metadata"] = True
    ours = store.get_online_features(features=features, entity_rows=entity_rows, **kwargs)
    theirs = generic.get_online_features(
        store.config, features, entity_rows, store.registry, store.project, **kwargs
    )
    ours_async = asyncio.run(
        store.get_online_features_async(features=features, entity_rows=entity_rows, **kwargs)
    )
    theirs_async = asyncio.run(
        generic.get_online_features_async(
            store.config, features, entity_rows, store.registry, store.project, **kwargs
        )
    )
    assert ours_async.proto == ours.proto, "the async read differs from the sync one"
    assert theirs_async.proto == theirs.proto
    assert ours.to_dict() == theirs.to_dict()
    return ours.proto, theirs.proto


def plans_of(store) -> int:
    return len(hexpire_store(store)._read_plans._plans)


@pytest.mark.parametrize("meta", META)
@pytest.mark.parametrize("full_names", [False, True])
def test_get_online_features_matches_feasts_generic_method(store, r, full_names, meta):
    load(store)
    for rows in (ROWS, ["u0001"], ["nobody"], ["u0001"] * 3):
        ours, feast = answers(store, FEATURES, [{"user_id": u} for u in rows], full_names, meta)
        assert ours == feast
    service = store.get_feature_service("fraud_model")
    ours, feast = answers(store, service, {"user_id": ROWS}, full_names, meta)
    assert ours == feast
    # The list of refs and the service, each planned once (every supported Feast).
    assert plans_of(store) == 2


def test_entity_rows_with_extra_columns_and_entity_names(store, r):
    load(store)
    rows = [{"user_id": u, "amount": 12.5, "note": "x"} for u in ROWS]
    ours, feast = answers(store, FEATURES, rows)
    assert ours == feast
    assert list(ours.metadata.feature_names.val)[0] == "user_id"
    assert "amount" not in ours.metadata.feature_names.val
    with pytest.warns(UserWarning, match="entity name is deprecated"):  # `user`, not `user_id`
        ours, feast = answers(store, FEATURES, {"user": ["u0001", "nobody"]})
    assert ours == feast


def test_bad_entity_rows_fail_as_in_feast(store, r):
    load(store)
    generic = GenericPath()
    for rows, error in (
        ([{"user_id": "u0001"}, {"user_id": "u0002", "x": 1}], ValueError),  # keys differ
        ({"user_id": ["u0001", "u0002"], "x": [1]}, ValueError),  # columns of different lengths
        ([], IndexError),
    ):
        with pytest.raises(error) as ours:
            store.get_online_features(features=FEATURES, entity_rows=rows)
        with pytest.raises(error) as feast:
            generic.get_online_features(store.config, FEATURES, rows, store.registry, store.project)
        assert str(ours.value) == str(feast.value)


@pytest.mark.parametrize("freshness", ["off", "flag", "drop"])
def test_freshness_modes_match_the_generic_method(make_repo, r, freshness):
    store = apply_repo(make_repo(freshness_check=freshness))
    load(store, pushed=("u0001",), pushed_at=datetime.now(UTC) - timedelta(hours=1))  # stale
    store.push("user_events_push", streaming_frame(["u0003"], random.Random(6)))  # fresh
    ours, feast = answers(store, FEATURES, {"user_id": ROWS}, full_names=True)
    if freshness == "flag":  # Feast's generic path has no OUTSIDE_MAX_AGE: the one difference
        flagged = GetOnlineFeaturesResponse()
        flagged.CopyFrom(ours)
        for result in flagged.results:
            result.statuses[:] = [
                FieldStatus.PRESENT if s == FieldStatus.OUTSIDE_MAX_AGE else s for s in result.statuses
            ]
        assert flagged == feast
    else:
        assert ours == feast
    statuses = set(vector(ours, "user_streaming_features__tx_count_5m").statuses)
    expected = {
        "off": FieldStatus.PRESENT,
        "flag": FieldStatus.OUTSIDE_MAX_AGE,
        "drop": FieldStatus.NOT_FOUND,
    }
    assert expected[freshness] in statuses


def test_on_demand_views_and_request_data_take_feasts_path(store, r):
    """ODFVs (request data, or stored with write_to_online_store) answer as in Feast."""
    load(store)
    batch = store.get_feature_view("user_batch_features")
    request = RequestSource(name="txn", schema=[Field(name="amount", dtype=Float64)])

    @on_demand_feature_view(sources=[batch, request], schema=[Field(name="amount_ratio", dtype=Float64)])
    def amount_ratio(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"amount_ratio": inputs["amount"] / inputs["avg_amount_30d"]})

    @on_demand_feature_view(
        sources=[batch], schema=[Field(name="age_weeks", dtype=Float64)], write_to_online_store=True,
        entities=[store.get_entity("user")],
    )  # fmt: skip
    def age_weeks(inputs: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"age_weeks": inputs["account_age_days"] / 7.0})

    store.apply([request, amount_ratio, age_weeks])
    # Feast's own resolution cache (process-wide, keyed by the registry's load time, which an
    # in-process apply keeps) may still hold another test's answer for this feature list.
    store.refresh_registry()
    features = [*FEATURES, "amount_ratio:amount_ratio"]
    ours, feast = answers(store, features, {"user_id": ROWS, "amount": [10.0] * len(ROWS)}, full_names=True)
    assert ours == feast
    assert "amount" not in ours.metadata.feature_names.val
    ratio = vector(ours, "amount_ratio__amount_ratio")
    assert FieldStatus.PRESENT in set(ratio.statuses)
    stored = ["age_weeks:age_weeks", "user_batch_features:risk_segment"]
    ours, feast = answers(store, stored, {"user_id": ROWS})
    assert ours == feast


def test_a_changed_view_is_never_read_through_a_stale_plan(store, r):
    """apply in this process, and apply by another process followed by a registry refresh."""
    load(store)
    before = store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}]).to_dict()
    assert before["risk_segment"][0] is not None
    # The same feature now declared a String: the store must decode with the new type.
    store.apply([_batch_view(store, {"tx_count_7d": String})])
    refs = ["user_batch_features:tx_count_7d"]
    ours, feast = answers(store, refs, {"user_id": ["u0001"]})
    assert ours == feast
    assert vector(ours, "tx_count_7d").values[0].WhichOneof("val") == "string_val"
    # Another process (its own FeatureStore) drops the feature; this one refreshes its registry.
    other = FeatureStore(repo_path=str(store.repo_path))
    other.apply([_batch_view(other, {"tx_count_7d": None})])
    store.refresh_registry()
    with pytest.raises(Exception, match="tx_count_7d"):
        store.get_online_features(features=refs, entity_rows=[{"user_id": "u0001"}])


def _batch_view(store, changes: dict) -> FeatureView:
    """The sample batch view with some features retyped (or dropped: None)."""
    view = store.get_feature_view("user_batch_features")
    schema = [
        Field(name=f.name, dtype=changes.get(f.name, f.dtype))
        for f in view.features
        if changes.get(f.name, 1)
    ]
    return FeatureView(
        name=view.name, entities=[store.get_entity("user")], ttl=view.ttl, schema=schema,
        source=view.batch_source, online=True,
    )  # fmt: skip


def test_feasts_metrics_fire_on_the_store_path(store, r, monkeypatch):
    load(store)
    rows = [{"user_id": u} for u in ("u0001", "nobody")]
    if importlib.util.find_spec("feast.metrics") is None:  # a Feast release without metrics
        assert read_plan._metrics is None
        assert store.get_online_features(features=FEATURES, entity_rows=rows).to_dict()["user_id"] == [
            "u0001",
            "nobody",
        ]
        return
    import feast.metrics as feast_metrics
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    monkeypatch.setattr(feast_metrics, "_config", feast_metrics.build_metrics_flags(None))
    reads = "feast_feature_server_online_store_read_duration_seconds_count"
    statuses = "feast_online_features_status_total"
    reads_before = sample(reads)
    present_before = sample(statuses, feature_view="user_batch_features", status="present")
    store.get_online_features(features=FEATURES, entity_rows=rows)
    assert sample(reads) == reads_before + 1
    present = sample(statuses, feature_view="user_batch_features", status="present")
    assert present == present_before + 2  # two batch features of u0001


def test_no_read_ever_answers_with_another_entitys_values(make_repo, r):
    """Reads interleaved with error replies, timeouts (CLIENT PAUSE longer than the socket
    timeout, replies arriving late) and killed connections: every answer that is given carries
    the asked entity's own values; the failures raise."""
    store = apply_repo(make_repo(socket_timeout=0.2, retries=0))
    view = store.get_feature_view("user_batch_features")
    now = datetime.now(UTC)
    users = [f"u{i:04d}" for i in range(1, 41)]
    rows = [(_user_key(u), {"tx_count_7d": Value(int64_val=i)}, now, None) for i, u in enumerate(users, 1)]
    hexpire_store(store).online_write_batch(store.config, view, rows, None)
    r.set("fs:user:broken", "not a hash")
    own = {u: i for i, u in enumerate(users, 1)}
    rng = random.Random(9)
    admin = r
    outcomes: set[str] = set()

    def check(asked: list[str], answer) -> None:
        got = answer.to_dict()
        assert got["user_id"] == asked
        assert got["tx_count_7d"] == [own.get(u) for u in asked], "an answer carries another entity's values"

    async def read_async(asked: list[str]):
        return await store.get_online_features_async(
            features=["user_batch_features:tx_count_7d"], entity_rows={"user_id": asked}
        )

    for step in range(120):
        asked = rng.sample(users, rng.choice([1, 3, 25]))
        fault = step % 6
        if fault == 1:
            asked.insert(rng.randrange(len(asked) + 1), "broken")  # WRONGTYPE in the middle
        elif fault == 2:
            admin.execute_command("CLIENT", "PAUSE", 400, "ALL")  # the read times out
        elif fault == 3:
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        try:
            if step % 4 == 0:
                answer = asyncio.run(read_async(asked))
            else:
                answer = store.get_online_features(
                    features=["user_batch_features:tx_count_7d"], entity_rows={"user_id": asked}
                )
        except Exception as e:  # noqa: BLE001 - which failure is fine; a wrong answer is not
            outcomes.add(type(e).__name__)
            continue
        outcomes.add("answered")
        assert "broken" not in asked, "a WRONGTYPE key was answered"
        check(asked, answer)
    clean = users[:25]
    check(
        clean,
        store.get_online_features(
            features=["user_batch_features:tx_count_7d"], entity_rows={"user_id": clean}
        ),
    )
    assert {"answered", "ResponseError", "TimeoutError"} <= outcomes, outcomes


def _user_key(user: str) -> EntityKey:
    return EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=user)])


@pytest.mark.parametrize("meta", META)
def test_plans_without_a_route_match_feasts_generic_method(store, r, meta):
    """Views keyed differently (a compound entity beside a user view) and aliased join keys
    take the per-read planning instead of a plan's route; the answers stay Feast's."""
    load(store)
    view = apply_compound_view(store)
    now = datetime.now(UTC)
    key = EntityKey(
        join_keys=["user_id", "merchant_id"],
        entity_values=[Value(string_val="u0001"), Value(string_val="m1")],
    )
    hexpire_store(store).online_write_batch(
        store.config, view, [(key, {"pair_tx": Value(int64_val=7)}, now, None)], None
    )
    entity_rows = {"user_id": ["u0001", "u0002", "u0001", "nobody"], "merchant_id": ["m1", "m1", "m2", "m1"]}
    for full_names in (False, True):
        ours, feast = answers(store, [*FEATURES, "user_merchant:pair_tx"], entity_rows, full_names, meta)
        assert ours == feast
    batch = store.get_feature_view("user_batch_features")
    service = FeatureService(
        name="aliased_reads",
        features=[batch[["risk_segment", "tx_count_7d"]].with_join_key_map({"user_id": "buyer_id"})],
    )
    store.apply([service])
    ours, feast = answers(store, store.get_feature_service("aliased_reads"), {"buyer_id": ROWS}, True, meta)
    assert ours == feast
