"""The two TTL layers, watched for real with short TTLs: streaming fields expire one by one while
the batch fields stay, then the whole entity disappears at the key TTL.

    python examples/expiry.py    # 6.5 s of expiry after Feast's start-up, apply and materialize
                                 # (measured 135 s in all on a busy 2-core machine)
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

from _local import REPO, feast, generate_data, redis_server
from feast import FeatureStore

from feast_redis_hexpire.online_store import hexpire_store
from feast_redis_hexpire.synth import streaming_frame

FEATURES = ["user_batch_features:risk_segment", "user_streaming_features:tx_count_5m"]


def show(store: FeatureStore, label: str) -> None:
    response = store.get_online_features(features=FEATURES, entity_rows=[{"user_id": "u0001"}])
    values = response.to_dict()
    statuses = {
        name: response.proto.results[i].statuses[0]
        for i, name in enumerate(response.proto.metadata.feature_names.val)
    }
    status_name = {1: "PRESENT", 2: "NULL_VALUE", 3: "NOT_FOUND", 4: "OUTSIDE_MAX_AGE"}
    cells = [f"{n}={values[n][0]!s:<5} ({status_name[statuses[n]]})" for n in ("risk_segment", "tx_count_5m")]
    print(f"{label:<28} " + "  ".join(cells))


def main() -> None:
    with redis_server():
        generate_data(20)
        feast("apply")
        store = FeatureStore(repo_path=str(REPO))
        # The store reads its config on every call: shorten both TTLs for this run only.
        store.config.online_store.key_ttl_seconds = 6
        store.config.online_store.stream_field_ttl_seconds = 2
        now = datetime.now(UTC)
        store.materialize(now - timedelta(days=1), now, feature_views=["user_batch_features"])
        store.push("user_events_push", streaming_frame(["u0001"], random.Random(1)))
        redis = hexpire_store(store).client(store.config)
        print(
            f"key TTL {redis.pttl('fs:user:u0001')} ms, tx_count_5m field TTL "
            f"{redis.hpttl('fs:user:u0001', 'tx_count_5m')[0]} ms"
        )
        show(store, "just written:")
        time.sleep(2.5)
        show(store, "after 2.5 s (field TTL 2 s):")
        print(f"HTTL tx_count_5m -> {redis.httl('fs:user:u0001', 'tx_count_5m')}  (-2: gone)")
        time.sleep(4)
        show(store, "after 6.5 s (key TTL 6 s):")
        print(f"EXISTS fs:user:u0001 -> {redis.exists('fs:user:u0001')}")


if __name__ == "__main__":
    main()
