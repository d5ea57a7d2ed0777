"""The store's own get_online_features read path answers exactly as Feast's generic one.

Feast's ``OnlineStore._read_features_per_fv`` (unique entities, ``online_read``, then
``_populate_response_from_feature_data``) is the reference; the plugin fills the response
itself, from the raw replies. Both run on the same data and must give equal responses:
values, statuses, event timestamps, feature names, metadata, row order and fan-out of
repeated entities, aliased projections and compound entities included.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from conftest import apply_compound_view, apply_repo, field_statuses, hexpire_store, wait_for
from feast import FeatureService, utils
from feast.infra.online_stores.online_store import OnlineStore
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from redis.exceptions import ResponseError

from feast_redis_hexpire.synth import streaming_frame

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
    """(the plugin's response, Feast's generic response) for the same request."""
    prepared = utils._prepare_entities_to_read_from_online_store(
        registry=store.registry, project=store.project, features=features, entity_values=entity_rows,
        full_feature_names=full_names, native_entity_values=True,
    )  # fmt: skip
    join_key_values, grouped_refs, name_map, *_, template = prepared
    online = hexpire_store(store)
    answers = []
    for read in (online._read_features_per_fv, lambda *a: OnlineStore._read_features_per_fv(online, *a)):
        response = GetOnlineFeaturesResponse()
        response.CopyFrom(template)
        refs = [(table, list(names)) for table, names in grouped_refs]
        read(store.config, refs, join_key_values, name_map, response, full_names, meta)
        answers.append(response)
    response = GetOnlineFeaturesResponse()
    response.CopyFrom(template)
    refs = [(table, list(names)) for table, names in grouped_refs]
    asyncio.run(
        online._read_features_per_fv_async(
            store.config, refs, join_key_values, name_map, response, full_names, meta
        )
    )
    assert response == answers[0], "the async read differs from the sync one"
    return answers


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


def test_same_answer_for_one_entity_and_for_a_view_whose_fields_expired(store, r):
    load(store)
    r.hpexpire("fs:user:u0001", 1, "tx_count_5m", "last_device_id", "_ts:user_streaming_features")
    wait_for("real expiry (1 ms)", lambda: r.hget("fs:user:u0001", "tx_count_5m") is None, timeout=10)
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
    assert values["risk_segment"] == [r.hget("fs:user:u0001", "risk_segment").decode()]


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
