"""Field names on the default config (field_names: auto): bare names wherever unambiguous, the
later view's shared feature as `<view>:<feature>`, owners recorded in `fs:_fields`, and stable
across adding, removing and re-adding views (naming.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from conftest import apply_repo, cli_main, online_store_of, user_key, user_view
from feast import FeatureStore
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Int64, String

from feast_redis_hexpire import naming
from feast_redis_hexpire.exceptions import FieldCollisionError

KEY = "fs:user:u0001"
OWNERS = "fs:_fields"
ROOT = Path(__file__).resolve().parent.parent


def write(store: FeatureStore, view_name: str, score: int, when: datetime | None = None) -> None:
    view = store.get_feature_view(view_name)
    row = (user_key("u0001"), {"score": Value(int64_val=score)}, when or datetime.now(UTC), None)
    online_store_of(store).online_write_batch(store.config, view, [row], None)


def push(store: FeatureStore, view_name: str, score: int) -> None:
    frame = pd.DataFrame({"user_id": ["u0001"], "event_timestamp": [datetime.now(UTC)], "score": [score]})
    store.push(f"{view_name}_push", frame)


def read(repo: Path, *view_names: str) -> list:
    """Each view's `score` for u0001, through a fresh FeatureStore with this process's cached
    field names dropped (what a new serving process sees)."""
    naming.forget()
    got = FeatureStore(repo_path=str(repo)).get_online_features(
        features=[f"{v}:score" for v in view_names], entity_rows=[{"user_id": "u0001"}],
        full_feature_names=True,
    ).to_dict()  # fmt: skip
    return [got[f"{v}__score"][0] for v in view_names]


def delete(store: FeatureStore, *view_names: str) -> None:
    """What `feast apply` does for views removed from the repo."""
    views = [store.get_feature_view(v) for v in view_names]
    store.apply([], objects_to_delete=views, partial=False)


def test_sample_repo_keeps_bare_fields_and_records_nothing(store, r):
    store.materialize_incremental(end_date=datetime.now(UTC))
    fields = {f.decode() for f in r.hkeys(KEY)}
    assert {"risk_segment", "country_iso", "_ts:user_batch_features"} <= fields
    assert not any(":" in f for f in fields - {"_ts:user_batch_features"})
    assert not r.exists(OWNERS)  # no shared names, no record


def test_adding_and_removing_views_never_moves_stored_data(store, repo, r):
    store.apply([user_view("view_a", {"score": Int64, "a_only": Int64})])
    write(store, "view_a", 1)
    assert r.hget(KEY, "score") == b"1" and not r.exists(OWNERS)

    # B shares `score`: A keeps the bare field and its data, B gets `view_b:score`.
    store.apply([user_view("view_b", {"score": Int64}, push=True)])
    assert r.hgetall(OWNERS) == {b"user:score": b"view_a"}
    assert read(repo, "view_a", "view_b") == [1, None]
    push(store, "view_b", 2)
    assert r.hget(KEY, "view_b:score") == b"2" and r.hget(KEY, "score") == b"1"
    assert read(repo, "view_a", "view_b") == [1, 2]

    # Removing A (the owner) removes A's fields, keeps the record: B keeps `view_b:score`.
    delete(store, "view_a")
    assert not r.hexists(KEY, "score") and r.hget(KEY, "view_b:score") == b"2"
    assert r.hgetall(OWNERS) == {b"user:score": b"view_a"}
    assert read(repo, "view_b") == [2]

    # Re-adding A: A owns the bare name again, B's field does not move.
    store.apply([user_view("view_a", {"score": Int64, "a_only": Int64})])
    write(store, "view_a", 3)
    assert r.hget(KEY, "score") == b"3" and r.hget(KEY, "view_b:score") == b"2"
    assert read(repo, "view_a", "view_b") == [3, 2]

    # Removing B: nobody else declares `score`, so the record (and the hash) goes.
    delete(store, "view_b")
    assert not r.exists(OWNERS)
    assert read(repo, "view_a") == [3] and r.hget(KEY, "score") == b"3"
    assert not r.hexists(KEY, "view_b:score")


def test_old_plugin_data_keeps_reading_after_a_view_sharing_its_names(store, repo, r):
    """A view applied and written before (bare names, no owners hash: what the plugin wrote
    before field_names: auto) keeps its fields, even against a new view that sorts first."""
    store.apply([user_view("zz_scores", {"score": Int64})])
    write(store, "zz_scores", 7)
    r.delete(OWNERS)
    assert r.hkeys(KEY) == [b"_ts:zz_scores", b"score"]
    naming.forget()
    store = FeatureStore(repo_path=str(repo))
    store.apply([user_view("aa_scores", {"score": Int64})])  # batch, sorts before zz_scores
    assert r.hgetall(OWNERS) == {b"user:score": b"zz_scores"}
    assert read(repo, "zz_scores", "aa_scores") == [7, None]
    write(store, "aa_scores", 8)
    assert r.hget(KEY, "aa_scores:score") == b"8" and read(repo, "zz_scores", "aa_scores") == [7, 8]


def test_new_views_claim_batch_before_streaming_then_by_name(store, repo, r):
    store.apply(
        [
            user_view("a_fresh", {"score": Int64, "label": String}, push=True),
            user_view("c_batch", {"score": Int64, "label": String}),
            user_view("b_batch", {"score": Int64}),
        ]
    )
    assert r.hgetall(OWNERS) == {b"user:score": b"b_batch", b"user:label": b"c_batch"}
    for name in ("a_fresh", "b_batch", "c_batch"):
        write(store, name, len(name))
    assert r.hget(KEY, "score") == b"7"  # b_batch
    assert r.hget(KEY, "c_batch:score") == b"7" and r.hget(KEY, "a_fresh:score") == b"7"
    assert read(repo, "a_fresh", "b_batch", "c_batch") == [7, 7, 7]


def test_teardown_releases_the_records_and_removes_the_hash(store, repo, r):
    store.apply([user_view("view_a", {"score": Int64}), user_view("view_b", {"score": Int64})])
    r.hset(OWNERS, "user:other", "another_project_view")  # not ours: stays
    write(store, "view_b", 1)
    store.teardown()
    assert r.hgetall(OWNERS) == {b"user:other": b"another_project_view"}
    assert not r.exists(KEY)


def test_a_feature_named_like_another_views_prefixed_field_is_refused(store, r):
    """`view_a:score` as a feature name could collide with view_a's prefixed field."""
    before = r.hgetall(OWNERS)
    with pytest.raises(FieldCollisionError) as info:
        store.apply([user_view("view_a", {"score": Int64}), user_view("view_c", {"view_a:score": Int64})])
    assert "view_a:score" in str(info.value) and "view_c" in str(info.value)
    assert r.hgetall(OWNERS) == before


def test_view_feature_keeps_prefixing_every_field(make_repo, r):
    store = apply_repo(make_repo(field_names="view_feature"))
    store.apply([user_view("view_a", {"score": Int64})])
    write(store, "view_a", 5)
    assert r.hget(KEY, "view_a:score") == b"5" and not r.exists(OWNERS)


def test_writes_older_than_a_stored_row_are_still_skipped_per_view(store, repo, r):
    """Each view keeps its own `_ts` field: B's newer row does not block A's older one."""
    store.apply([user_view("view_a", {"score": Int64}), user_view("view_b", {"score": Int64})])
    now = datetime.now(UTC)
    write(store, "view_b", 2, now)
    write(store, "view_a", 1, now - timedelta(minutes=1))
    assert read(repo, "view_a", "view_b") == [1, 2]


# ---- feast-hexpire layout ----


def layout_cli(repo: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feast_redis_hexpire.cli", "layout", "--repo", str(repo), *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip


def test_layout_prints_the_sample_repo(store, repo):
    done = layout_cli(repo)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "user_batch_features  batch (no stream source and no hexpire.mode tag)" in out
    assert "user_streaming_features  streaming (its source 'user_events_push' is a PushSource)" in out
    assert out.count("key        fs:user:<user_id>") == 2
    assert "key TTL    86400 s (EXPIRE, re-pinned on every write)" in out
    assert "field TTL  300 s per field (HPEXPIRE), from the write" in out
    assert "risk_segment          -> risk_segment" in out
    assert "timestamp  _ts:user_streaming_features" in out
    assert "HGETALL fs:_fields" in out


def test_layout_shows_prefixed_fields_of_shared_names(store, repo, capsys):
    store.apply([user_view("risk_copy", {"risk_segment": String, "extra": Int64}, push=True)])
    # In process: the previous test runs the command as a process.
    code, out = cli_main(capsys, "layout", "--repo", str(repo), "--json")
    assert code == 0
    views = {v["view"]: v for v in json.loads(out)}
    assert views["risk_copy"]["fields"] == {"risk_segment": "risk_copy:risk_segment", "extra": "extra"}
    assert views["user_batch_features"]["fields"]["risk_segment"] == "risk_segment"
    assert (
        views["risk_copy"]["mode"] == "streaming" and views["risk_copy"]["key_pattern"] == "fs:user:<user_id>"
    )


def hmget_calls(r) -> int:
    return int(r.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_an_unapplied_view_object_finds_its_fields_once_per_process(store, repo, r):
    """A view object that never went through apply (a tool calling online_write_batch) looks
    its fields up in fs:_fields on its first layout build, then never again in this process."""
    from feast_redis_hexpire.views import ViewLayout

    store.apply([user_view("view_a", {"score": Int64}), user_view("view_b", {"score": Int64})])
    naming.forget()
    before = hmget_calls(r)
    first = ViewLayout.of(store.config, user_view("view_b", {"score": Int64}))
    assert first.fields["score"][0] == "view_b:score"
    assert hmget_calls(r) == before + 1
    again = ViewLayout.of(store.config, user_view("view_b", {"score": Int64}))  # a new object
    assert again.fields == first.fields and hmget_calls(r) == before + 1
    row = (user_key("u0001"), {"score": Value(int64_val=4)}, datetime.now(UTC), None)
    unapplied = user_view("view_b", {"score": Int64})
    online_store_of(store).online_write_batch(store.config, unapplied, [row], None)
    assert r.hget(KEY, "view_b:score") == b"4" and not r.hexists(KEY, "score")
    assert read(repo, "view_b") == [4]
