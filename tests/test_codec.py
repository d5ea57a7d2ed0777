"""Every Feast value type round-trips through the codec, and through Redis via the store.

Property tests run encode -> decode for each ValueType with the values Feast can hold (NaN,
infinities, -0.0, empty lists, NUL-leading strings and bytes, nulls, values of the wrong type);
the store-level tests write one feature of every type with online_write_batch and read it back
with online_read on both servers.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from conftest import LAYOUTS, apply_repo, online_store_of, user_key
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast import types as ft
from feast.protos.feast.types.Value_pb2 import Null
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feast_redis_hexpire import codec
from feast_redis_hexpire.constants import NULL_VALUE, PROTO_MARKER
from feast_redis_hexpire.writer import StreamWriter

# The value kinds of the installed Feast (older releases have fewer: no json, uuid, map, ...).
VALUE_KINDS = set(ValueProto.DESCRIPTOR.fields_by_name)
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Hypothesis also draws NaNs with sign and payload bits; the comparison below treats all NaNs as one.
SCALARS = {
    kind: strategy
    for kind, strategy in {
        "bytes_val": st.binary(max_size=40) | st.binary(max_size=10).map(lambda b: b"\x00" + b),
        "string_val": st.text(max_size=40) | st.text(max_size=10).map(lambda s: "\x00" + s),
        "json_val": st.text(max_size=40),
        "uuid_val": st.uuids().map(str),
        "time_uuid_val": st.uuids(version=1).map(str),
        "decimal_val": st.decimals(allow_nan=False).map(str),
        "int32_val": INT32,
        "int64_val": INT64,
        "unix_timestamp_val": INT64,
        "double_val": st.floats(),
        "float_val": st.floats(width=32),
        "bool_val": st.booleans(),
    }.items()
    if kind in VALUE_KINDS
}


def _container_item(kind: str) -> str | None:
    for suffix in ("_list_val", "_set_val"):
        if kind.endswith(suffix):
            item = kind[: -len(suffix)] + "_val"
            return item if item in SCALARS else None
    return None


def value_strategy(kind: str) -> st.SearchStrategy[ValueProto]:
    """ValueProtos whose oneof is ``kind``."""
    if kind in SCALARS:
        return SCALARS[kind].map(lambda x: ValueProto(**{kind: x}))
    item = _container_item(kind)
    if item is not None:

        def build(items: list) -> ValueProto:
            value = ValueProto()
            container = getattr(value, kind)
            container.SetInParent()
            container.val.extend(items)
            return value

        return st.lists(SCALARS[item], max_size=6).map(build)
    if kind == "map_val":
        return st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3).map(
            lambda d: ValueProto(map_val={"val": {k: ValueProto(int64_val=v) for k, v in d.items()}})
        )
    if kind in ("list_val", "set_val"):  # nested collections: a list of int64 lists
        return st.lists(st.lists(INT64, max_size=3), max_size=3).map(
            lambda xss: ValueProto(**{kind: {"val": [ValueProto(int64_list_val={"val": xs}) for xs in xss]}})
        )
    if kind == "zoned_timestamp_val":
        return st.tuples(INT64, st.sampled_from(["UTC", "Europe/Berlin", ""])).map(
            lambda tz: ValueProto(zoned_timestamp_val={"unix_timestamp": tz[0], "zone": tz[1]})
        )
    if kind == "json_list_val":
        return st.lists(st.text(max_size=8), max_size=4).map(lambda xs: ValueProto(json_list_val={"val": xs}))
    return st.just(ValueProto(null_val=Null.NULL))


def natural_kind(value_type: ValueType) -> str:
    """The ValueProto oneof Feast fills for a feature of ``value_type``."""
    name = value_type.name.lower()
    if name in ("pdf_bytes", "image_bytes"):
        return "bytes_val"
    if name in ("value_list", "value_set"):
        return name[len("value_") :] + "_val"
    return f"{name}_val"


ALL_VALUE_TYPES = [vt for vt in ValueType if vt not in (ValueType.UNKNOWN, ValueType.NULL)]
ANY_VALUE = st.sampled_from(sorted(set(SCALARS) | {"string_list_val", "double_list_val"})).flatmap(
    value_strategy
)


def canonical(value: ValueProto) -> bytes:
    """Serialized ``value`` with every NaN made the same NaN (text cannot keep NaN payload bits)."""
    copy = ValueProto()
    copy.CopyFrom(value)
    kind = copy.WhichOneof("val")
    if kind in ("double_val", "float_val") and math.isnan(getattr(copy, kind)):
        setattr(copy, kind, math.nan)
    elif kind in ("double_list_val", "float_list_val", "double_set_val", "float_set_val"):
        items = getattr(copy, kind).val
        for i, x in enumerate(items):
            if math.isnan(x):
                items[i] = math.nan
    return copy.SerializeToString(deterministic=True)  # map entries in key order


def assert_same(got: ValueProto, want: ValueProto) -> None:
    assert got.WhichOneof("val") == want.WhichOneof("val")
    assert canonical(got) == canonical(want), (got, want)


@pytest.mark.parametrize("value_type", ALL_VALUE_TYPES, ids=lambda vt: vt.name)
@pytest.mark.parametrize("encoding", ["text", "proto"])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_value_type_round_trips(value_type, encoding, data):
    kind = codec.expected_kind(value_type)
    value = data.draw(value_strategy(natural_kind(value_type)))
    raw = codec.encode_value(value, kind, encoding)
    assert isinstance(raw, bytes)
    assert_same(codec.decode_value(raw, kind, encoding), value)


@pytest.mark.parametrize("value_type", ALL_VALUE_TYPES, ids=lambda vt: vt.name)
@settings(max_examples=25, deadline=None)
@given(value=ANY_VALUE)
def test_value_of_another_type_falls_back_and_round_trips(value_type, value):
    kind = codec.expected_kind(value_type)
    raw = codec.encode_value(value, kind)
    if value.WhichOneof("val") != kind:
        assert raw.startswith(PROTO_MARKER)
    assert_same(codec.decode_value(raw, kind), value)


@pytest.mark.parametrize("value_type", ALL_VALUE_TYPES, ids=lambda vt: vt.name)
def test_null_value_round_trips_as_null(value_type):
    kind = codec.expected_kind(value_type)
    assert codec.encode_value(ValueProto(), kind) == NULL_VALUE
    decoded = codec.decode_value(NULL_VALUE, kind)
    assert decoded.WhichOneof("val") is None
    explicit = ValueProto(null_val=Null.NULL)
    assert_same(codec.decode_value(codec.encode_value(explicit, kind), kind), explicit)


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (ValueProto(int64_val=612), "int64_val", b"612"),
        (ValueProto(int32_val=-7), "int32_val", b"-7"),
        (ValueProto(double_val=92.4), "double_val", b"92.4"),
        (ValueProto(float_val=0.1), "float_val", b"0.1"),
        (ValueProto(bool_val=True), "bool_val", b"true"),
        (ValueProto(bool_val=False), "bool_val", b"false"),
        (ValueProto(string_val="medium"), "string_val", b"medium"),
        (ValueProto(string_val=""), "string_val", b""),
        (ValueProto(bytes_val=b"\x01\xff"), "bytes_val", b"\x01\xff"),
        (ValueProto(double_val=math.nan), "double_val", b"NaN"),
        (ValueProto(double_val=math.inf), "double_val", b"Infinity"),
        (ValueProto(double_val=-math.inf), "double_val", b"-Infinity"),
        (ValueProto(double_val=-0.0), "double_val", b"-0.0"),
        (ValueProto(int64_list_val={"val": [1, 2]}), "int64_list_val", b"[1,2]"),
        (ValueProto(string_list_val={"val": []}), "string_list_val", b"[]"),
    ],
)
def test_seed_values_are_plain_text(value, kind, text):
    assert codec.encode_value(value, kind) == text
    assert_same(codec.decode_value(text, kind), value)


# Values whose encoding takes each branch of the write path's row encoder: defaults of the
# declared kind (0, "", False, -0.0 ask which member is set), NUL-leading text, nulls, NaN.
PROTO_EDGE_VALUES = [
    ValueProto(),
    ValueProto(null_val=Null.NULL),
    ValueProto(string_val=""),
    ValueProto(string_val="\x00x"),
    ValueProto(bytes_val=b""),
    ValueProto(bytes_val=b"\x00"),
    ValueProto(int64_val=0),
    ValueProto(int32_val=0),
    ValueProto(double_val=0.0),
    ValueProto(double_val=-0.0),
    ValueProto(double_val=math.nan),
    ValueProto(double_val=-math.inf),
    ValueProto(float_val=-0.0),
    ValueProto(float_val=math.inf),
    ValueProto(bool_val=False),
    ValueProto(bool_val=True),
]


@pytest.mark.parametrize("value_type", ALL_VALUE_TYPES, ids=lambda vt: vt.name)
@pytest.mark.parametrize("encoding", ["text", "proto"])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_row_encoder_gives_encode_value_bytes(value_type, encoding, data):
    """codec.row_encoder (one encoder per feature, chosen from its declared type) writes each
    value exactly as encode_value does, in the row's order, skipping features it was not given.
    Every row also holds each of PROTO_EDGE_VALUES."""
    kind = codec.expected_kind(value_type)
    drawn = data.draw(st.lists(value_strategy(natural_kind(value_type)) | ANY_VALUE, max_size=5))
    values = [*drawn, *PROTO_EDGE_VALUES]
    row = {f"f{i}": v for i, v in enumerate(values)}
    row["join_key"] = ValueProto(string_val="u1")  # not among the fields: skipped
    fields = {f"f{i}": (f"field{i}", kind) for i in range(len(values))}
    want = [x for i, v in enumerate(values) for x in (f"field{i}", codec.encode_value(v, kind, encoding))]
    assert codec.row_encoder(fields, encoding)(row) == want


@pytest.mark.parametrize(
    "value",
    [
        ValueProto(double_val=-0.0),
        ValueProto(float_val=-0.0),
        ValueProto(double_list_val={"val": [-0.0, math.nan, math.inf, -math.inf]}),
        ValueProto(float_list_val={"val": [-0.0, math.nan, math.inf, 3.4028234663852886e38]}),
        ValueProto(double_val=5e-324),
        ValueProto(float_val=1e-45),
    ],
)
def test_float_edge_cases_keep_their_bits(value):
    kind = value.WhichOneof("val")
    decoded = codec.decode_value(codec.encode_value(value, kind), kind)
    assert_same(decoded, value)
    if kind in ("double_val", "float_val"):
        assert math.copysign(1, getattr(decoded, kind)) == math.copysign(1, getattr(value, kind))


LIST_TYPES = [vt for vt in ALL_VALUE_TYPES if vt.name.endswith(("_LIST", "_SET"))]


@pytest.mark.parametrize("value_type", LIST_TYPES, ids=lambda vt: vt.name)
def test_empty_list_is_not_null(value_type):
    kind, declared = natural_kind(value_type), codec.expected_kind(value_type)
    value = ValueProto()
    getattr(value, kind).SetInParent()
    decoded = codec.decode_value(codec.encode_value(value, declared), declared)
    assert decoded.WhichOneof("val") == kind
    assert len(getattr(decoded, kind).val) == 0


@pytest.mark.parametrize(
    "value",
    [
        ValueProto(string_val="\x00"),
        ValueProto(string_val="\x00P"),
        ValueProto(bytes_val=b"\x00"),
        ValueProto(bytes_val=b"\x00P\x08\x01"),
        ValueProto(bytes_val=b""),
    ],
)
def test_nul_leading_strings_and_bytes_are_not_taken_for_markers(value):
    kind = value.WhichOneof("val")
    raw = codec.encode_value(value, kind)
    assert_same(codec.decode_value(raw, kind), value)


@given(
    ts=st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2200, 1, 1),
        timezones=st.just(UTC) | st.none(),
    )
)
def test_timestamps_round_trip_to_the_microsecond(ts):
    decoded = codec.decode_ts(str(codec.encode_ts(ts)).encode())
    want = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    assert decoded == want


def test_naive_timestamp_means_utc():
    naive = datetime(2024, 5, 1, 12, 0, 0, 123456)
    assert codec.encode_ts(naive) == codec.encode_ts(naive.replace(tzinfo=UTC))
    other_zone = timezone(timedelta(hours=2))
    assert codec.encode_ts(datetime(2024, 5, 1, 14, 0, tzinfo=other_zone)) == codec.encode_ts(
        datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    )


# ---- store level: one feature of every type through Redis ----

# Every type the installed Feast defines (older releases have no Json, Uuid, Map, ...).
PRIMITIVES = {
    name: getattr(ft, type_name)
    for name, type_name in {
        "bytes": "Bytes", "pdf": "PdfBytes", "image": "ImageBytes", "string": "String",
        "int32": "Int32", "int64": "Int64", "float32": "Float32", "float64": "Float64",
        "bool": "Bool", "unix_ts": "UnixTimestamp", "json": "Json", "uuid": "Uuid",
        "time_uuid": "TimeUuid", "decimal": "Decimal",
    }.items()
    if hasattr(ft, type_name)
}  # fmt: skip
EXTRA = {
    name: getattr(ft, t) for name, t in {"map": "Map", "zoned_ts": "ZonedTimestamp"}.items() if hasattr(ft, t)
}


def _usable(dtype: object) -> bool:
    """Feast accepts the type in a view (Array(PdfBytes) has no ValueType, for example)."""
    try:
        dtype.to_value_type()  # type: ignore[attr-defined]
    except (KeyError, ValueError):
        return False
    return True


COLLECTIONS = {f"arr_{n}": ft.Array(t) for n, t in PRIMITIVES.items()}
if hasattr(ft, "Set"):  # Feast >= 0.60: sets and nested arrays
    COLLECTIONS |= {f"set_{n}": ft.Set(t) for n, t in PRIMITIVES.items()}
    COLLECTIONS |= {"arr_arr_int64": ft.Array(ft.Array(ft.Int64))}
ALL_FIELDS = {**PRIMITIVES, **{n: t for n, t in COLLECTIONS.items() if _usable(t)}, **EXTRA}


def all_types_view() -> FeatureView:
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    source = FileSource(name="all_types_source", path="unused.parquet", timestamp_field="event_timestamp")
    schema = [Field(name=name, dtype=dtype) for name, dtype in ALL_FIELDS.items()]
    return FeatureView(name="all_types", entities=[user], schema=schema, source=source, online=True)


def row_strategy(view: FeatureView) -> st.SearchStrategy[dict[str, ValueProto]]:
    kinds = {f.name: natural_kind(f.dtype.to_value_type()) for f in view.features}
    return st.fixed_dictionaries(
        {name: value_strategy(kind) | st.just(ValueProto()) | ANY_VALUE for name, kind in kinds.items()}
    )


@pytest.fixture(params=["text", "proto"])
def typed_store(request, make_repo):
    repo = make_repo(value_encoding=request.param)
    store = apply_repo(repo)
    view = all_types_view()
    store.apply([view])
    return store, store.get_feature_view("all_types")


def test_view_declares_every_online_type(typed_store):
    _, view = typed_store
    declared = {f.dtype.to_value_type() for f in view.features}
    # Every scalar ValueType Feast maps to a FeastType for online features is covered.
    wanted = {t.to_value_type() for t in PRIMITIVES.values()}
    wanted |= {t.to_value_type() for t in COLLECTIONS.values() if _usable(t)}
    assert len(declared) >= (35 if "json_val" in VALUE_KINDS else 18)  # Feast 0.55 has 18 online types
    assert wanted <= declared


_ids = itertools.count()


@pytest.mark.parametrize("value_layout", LAYOUTS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_store_round_trips_every_type(typed_store, data):
    store, view = typed_store
    online = online_store_of(store)
    values = data.draw(row_strategy(view))
    key = user_key(f"rt{next(_ids)}")
    ts = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    online.online_write_batch(store.config, view, [(key, values, ts, None)], None)
    [(event_ts, read)] = online.online_read(store.config, view, [key])
    assert event_ts == ts
    assert read is not None
    assert set(read) == set(values)
    for name, value in values.items():
        assert_same(read[name], value)


@pytest.mark.parametrize("value_layout", LAYOUTS)
def test_store_round_trips_edge_values(typed_store, r, value_layout):
    store, view = typed_store
    online = online_store_of(store)
    edge = {
        "float64": ValueProto(double_val=math.nan),
        "float32": ValueProto(float_val=-0.0),
        "string": ValueProto(string_val="\x00leading NUL"),
        "bytes": ValueProto(bytes_val=b"\x00"),
        "arr_string": ValueProto(string_list_val={"val": []}),
        "arr_float64": ValueProto(double_list_val={"val": [math.inf, -0.0, math.nan]}),
        "int64": ValueProto(string_val="not an int"),  # wrong type: stored tagged, read back as is
        "bool": ValueProto(),
        "unix_ts": ValueProto(unix_timestamp_val=1_700_000_000),
    }
    if "json_val" in VALUE_KINDS:
        edge["json"] = ValueProto(json_val='{"a": [1, 2]}')
    key = user_key("edge")
    ts = datetime.now(UTC)
    online.online_write_batch(store.config, view, [(key, edge, ts, None)], None)
    [(_, read)] = online.online_read(store.config, view, [key])
    assert read is not None
    for name, value in edge.items():
        assert_same(read[name], value)
    if store.config.online_store.value_encoding == "text" and value_layout == "fields":
        assert r.hget("fs:user:edge", "unix_ts") == b"1700000000"
        if "json" in edge:
            assert r.hget("fs:user:edge", "json") == b'{"a": [1, 2]}'


# ---- the direct writer's encoders: Python values straight to stored bytes ----

PYTHON_VALUES = (
    st.none()
    | st.text(max_size=20)
    | st.text(max_size=5).map(lambda s: "\x00" + s)
    | st.binary(max_size=20)
    | st.binary(max_size=5).map(lambda b: b"\x00" + b)
    | st.integers()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.booleans()
)
PYTHON_EDGE_VALUES = [None, math.nan, math.inf, -math.inf, -0.0, 0.1, 2**63 - 1, 2**63, -(2**63),
                      -(2**63) - 1, 2**31, -(2**31) - 1, True, False, 3, "", "\x00", "\x00x", "é", b"",
                      b"\x00", 1.5]  # fmt: skip
DIRECT_TYPES = [ValueType.STRING, ValueType.BYTES, ValueType.INT64, ValueType.INT32, ValueType.DOUBLE,
                ValueType.BOOL, ValueType.FLOAT, ValueType.UNIX_TIMESTAMP]  # fmt: skip


def _converted(value_type: ValueType, value: object, encoding: str) -> bytes | type:
    """What the proto path stores for a Python value: Feast's conversion, then encode_value
    (or the type of the error the conversion raises)."""
    try:
        proto = python_values_to_proto_values([value], value_type)[0]
    except Exception as e:  # noqa: BLE001 - whatever Feast raises, the encoder must raise alike
        return type(e)
    return codec.encode_value(proto, codec.expected_kind(value_type), encoding)


def _encoded(value_type: ValueType, value: object, encoding: str) -> bytes | type:
    try:
        return codec.value_encoder(value_type, encoding)(value)
    except Exception as e:  # noqa: BLE001
        return type(e)


@pytest.mark.parametrize("value_type", DIRECT_TYPES, ids=lambda vt: vt.name)
@pytest.mark.parametrize("encoding", ["text", "proto"])
@settings(max_examples=40, deadline=None)
@given(value=PYTHON_VALUES)
def test_value_encoder_stores_what_feasts_conversion_stores(value_type, encoding, value):
    assert _encoded(value_type, value, encoding) == _converted(value_type, value, encoding)


@pytest.mark.parametrize("encoding", ["text", "proto"])
def test_value_encoder_edge_values(encoding):
    for value_type in DIRECT_TYPES:
        for value in PYTHON_EDGE_VALUES:
            got, want = _encoded(value_type, value, encoding), _converted(value_type, value, encoding)
            assert got == want, (value_type, value)
    assert codec.value_encoder(ValueType.DOUBLE)(math.nan) == NULL_VALUE  # as a push: NaN is null
    assert codec.value_encoder(ValueType.STRING)("\x00x").startswith(PROTO_MARKER)


# Candidate Python values per feature of the all-types view; a row takes the first one Feast's
# converter accepts for the feature's type (the others differ between Feast releases).
CANDIDATES = {
    "bytes": [b"\x00raw"], "pdf": [b"%PDF-1.7"], "image": [b"\x89PNG"], "string": ["h\u00e9llo:{x}"],
    "int32": [-(2**31)], "int64": [2**62], "float32": [1.1], "float64": [0.1], "bool": [False],
    "unix_ts": [datetime(2024, 5, 1, 12, 0, tzinfo=UTC), 1_700_000_000], "json": ['{"a": [1, 2]}'],
    "uuid": ["9f1e3c5a-1b2c-4d3e-8f40-123456789abc"], "time_uuid": ["c232ab00-9414-11ec-b3c8-9f68deced846"],
    "decimal": ["1.25"], "arr_string": [["a", "\x00b"]], "arr_int64": [[1, -2]], "arr_int32": [[3]],
    "arr_float64": [[1.5, math.inf]], "arr_float32": [[0.5]], "arr_bool": [[True, False]],
    "arr_bytes": [[b"x"]], "map": [{"k": 1}], "zoned_ts": [datetime(2024, 5, 1, tzinfo=UTC)],
}  # fmt: skip
EDGE_ROW = {"float64": math.nan, "string": "\x00lead", "int64": True, "float32": -0.0, "bytes": b"",
            "int32": 7, "bool": True}  # fmt: skip


def _python_row(view: FeatureView, edge: bool) -> dict[str, object]:
    row: dict[str, object] = {}
    for feature in view.features:
        value_type = feature.dtype.to_value_type()
        row[feature.name] = None
        for value in ([EDGE_ROW[feature.name]] if edge and feature.name in EDGE_ROW else []) + CANDIDATES.get(
            feature.name, []
        ):
            if not isinstance(_converted(value_type, value, "proto"), type):
                row[feature.name] = value
                break
    return row


@pytest.mark.parametrize("value_layout", LAYOUTS)
def test_writer_stores_and_reads_back_what_the_proto_path_does(typed_store, r, value_layout):
    """StreamWriter's direct encoding against online_write_batch of Feast's conversion of the same
    Python values (what a push converts them to): the same stored bytes, the same values read."""
    store, view = typed_store
    online = online_store_of(store)
    writer = StreamWriter(store, "all_types")
    ts = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    rows = {
        "values": _python_row(view, edge=False),
        "edges": _python_row(view, edge=True),
        "nulls": {f.name: None for f in view.features},
    }
    assert sum(v is not None for v in rows["values"].values()) >= 15
    for name, row in rows.items():
        writer.write({**row, "user_id": f"w-{name}", "event_timestamp": ts})
        protos = {
            feature.name: python_values_to_proto_values([row[feature.name]], feature.dtype.to_value_type())[0]
            for feature in view.features
        }
        online.online_write_batch(store.config, view, [(user_key(f"p-{name}"), protos, ts, None)], None)
        assert r.hgetall(f"fs:user:w-{name}") == r.hgetall(f"fs:user:p-{name}"), name
        written, converted = online.online_read(
            store.config, view, [user_key(f"w-{name}"), user_key(f"p-{name}")]
        )
        assert written[0] == converted[0] == ts
        assert written[1] is not None and converted[1] is not None
        assert set(written[1]) == set(converted[1]) == set(row)
        for feature, value in written[1].items():
            assert canonical(value) == canonical(converted[1][feature]), (name, feature)
