"""The sample repo end to end through the Python API, on both servers."""

import random
from datetime import UTC, datetime

from conftest import assert_expiry, write_window

from feast_redis_hexpire.synth import streaming_frame


def test_materialize_push_read(store, r):
    with write_window() as materialized:
        store.materialize_incremental(end_date=datetime.now(UTC))
    assert r.exists("fs:user:u0001")
    assert_expiry([r.pexpiretime("fs:user:u0001")], materialized, 86400, "key")
    with write_window() as pushed:
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(7)))
    assert_expiry(r.hpexpiretime("fs:user:u0001", "tx_count_5m"), pushed, 300, "tx_count_5m")
    assert r.httl("fs:user:u0001", "risk_segment")[0] == -1
    result = store.get_online_features(
        features=["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"],
        entity_rows=[{"user_id": "u0001"}, {"user_id": "u0002"}],
    ).to_dict()
    assert result["risk_segment"][0] == r.hget("fs:user:u0001", "risk_segment").decode()
    assert result["tx_count_5m"][0] == int(r.hget("fs:user:u0001", "tx_count_5m"))
    assert result["tx_count_5m"][1] is None
