"""Synthetic users with the seed's feature distributions (the demo's stand-in for a warehouse).

Deterministic for a seed: the same ``(count, seed)`` gives the same rows on every machine.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any, Optional, Sequence

import pandas as pd

__all__ = [
    "BATCH_FEATURES",
    "STREAMING_FEATURES",
    "user_id",
    "batch_rows",
    "streaming_row",
    "streaming_frame",
]

BATCH_FEATURES = (
    "country_iso",
    "risk_segment",
    "account_age_days",
    "tx_count_7d",
    "avg_amount_30d",
    "chargeback_count_180d",
)
STREAMING_FEATURES = (
    "last_login_ts",
    "last_device_id",
    "tx_count_5m",
    "failed_logins_15m",
    "session_country",
)

COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "JP", "NG")
RISK_SEGMENTS, RISK_WEIGHTS = ("low", "medium", "high"), (70, 25, 5)
CHARGEBACK_BUCKETS, CHARGEBACK_WEIGHTS = (0, 1, 2, 3), (90, 7, 2, 1)
DEVICE_IDS = ("ios-9f02", "ios-1a4e", "android-3c11", "android-8d20", "web-chrome-77", "web-safari-12")
FAILED_LOGIN_BUCKETS, FAILED_LOGIN_WEIGHTS = (0, 1, 2, 3, 5), (80, 10, 5, 3, 2)


def user_id(n: int) -> str:
    return f"u{n:04d}"


def batch_features(rng: random.Random) -> dict[str, Any]:
    return {
        "country_iso": rng.choice(COUNTRIES),
        "risk_segment": rng.choices(RISK_SEGMENTS, RISK_WEIGHTS)[0],
        "account_age_days": rng.randint(7, 2400),
        "tx_count_7d": rng.randint(0, 80),
        "avg_amount_30d": round(rng.random() * 345.0 + 5.0, 2),
        "chargeback_count_180d": rng.choices(CHARGEBACK_BUCKETS, CHARGEBACK_WEIGHTS)[0],
    }


def batch_rows(count: int, seed: int = 1, event_time: Optional[datetime] = None) -> pd.DataFrame:
    """``count`` users ``u0001..`` with the seed's six batch features and one event time."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = random.Random(seed)
    ts = event_time or datetime.now(UTC)
    rows = [{"user_id": user_id(i), **batch_features(rng)} for i in range(1, count + 1)]
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.Timestamp(ts)
    return frame


def streaming_row(rng: random.Random, now: Optional[datetime] = None) -> dict[str, Any]:
    """The seed's five streaming features for one event happening ``now``."""
    now = now or datetime.now(UTC)
    return {
        "last_login_ts": int(now.timestamp() * 1000),
        "last_device_id": rng.choice(DEVICE_IDS),
        "tx_count_5m": rng.randint(0, 12),
        "failed_logins_15m": rng.choices(FAILED_LOGIN_BUCKETS, FAILED_LOGIN_WEIGHTS)[0],
        "session_country": rng.choice(COUNTRIES),
    }


def streaming_frame(
    user_ids: Sequence[str], rng: random.Random, now: Optional[datetime] = None
) -> pd.DataFrame:
    """A DataFrame ready for ``FeatureStore.push()`` to the streaming view's push source."""
    now = now or datetime.now(UTC)
    frame = pd.DataFrame([{"user_id": u, **streaming_row(rng, now)} for u in user_ids])
    frame["event_timestamp"] = pd.Timestamp(now)
    return frame
