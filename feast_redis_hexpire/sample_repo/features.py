"""The seed's user entity: a batch view (six features) and a streaming view (five, via push)."""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, String

DATA = Path(__file__).parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)

user_batch_source = FileSource(
    name="user_batch_source",
    path=str(DATA / "user_batch.parquet"),
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
)

user_batch_features = FeatureView(
    name="user_batch_features",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="country_iso", dtype=String),
        Field(name="risk_segment", dtype=String),
        Field(name="account_age_days", dtype=Int64),
        Field(name="tx_count_7d", dtype=Int64),
        Field(name="avg_amount_30d", dtype=Float64),
        Field(name="chargeback_count_180d", dtype=Int64),
    ],
    source=user_batch_source,
    online=True,
)

user_events_push = PushSource(
    name="user_events_push",
    batch_source=FileSource(
        name="user_streaming_source",
        path=str(DATA / "user_streaming.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
    ),
)

# A view whose source is a PushSource is streaming: each write sets a per-field TTL.
user_streaming_features = FeatureView(
    name="user_streaming_features",
    entities=[user],
    ttl=timedelta(minutes=5),
    schema=[
        Field(name="last_login_ts", dtype=Int64),
        Field(name="last_device_id", dtype=String),
        Field(name="tx_count_5m", dtype=Int64),
        Field(name="failed_logins_15m", dtype=Int64),
        Field(name="session_country", dtype=String),
    ],
    source=user_events_push,
    online=True,
)

fraud_model = FeatureService(
    name="fraud_model",
    features=[
        user_batch_features[["risk_segment", "tx_count_7d", "avg_amount_30d"]],
        user_streaming_features[["tx_count_5m", "failed_logins_15m"]],
    ],
)
