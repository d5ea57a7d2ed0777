"""Configuration: bad values fail at load and at `feast apply` naming the setting; `type: redis`
yamls stay valid; passwords never show; the README documents every setting."""

from __future__ import annotations

import difflib
import enum
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, write_data, write_repo
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.repo_config import FeastConfigError, load_repo_config

from feast_redis_hexpire import RedisHexpireOnlineStoreConfig

UNSET = "HEXPIRE_TEST_SURELY_UNSET_VARIABLE"
# (online_store override, the setting the error must name)
BAD = [
    ({"key_ttl_seconds": 0}, "key_ttl_seconds"),
    ({"key_ttl_seconds": -1}, "key_ttl_seconds"),
    ({"stream_field_ttl_seconds": 0}, "stream_field_ttl_seconds"),
    ({"stream_field_ttl_seconds": -5}, "stream_field_ttl_seconds"),
    ({"write_batch_size": 0}, "write_batch_size"),
    ({"socket_timeout": 0}, "socket_timeout"),
    ({"retries": -1}, "retries"),
    ({"bogus_setting": 1}, "bogus_setting"),
    ({"key_prefix": ""}, "key_prefix"),
    ({"key_prefix": "   "}, "key_prefix"),
    ({"connection_string": "no-port-here"}, "connection_string"),
    ({"connection_string": "127.0.0.1:notaport"}, "connection_string"),
    ({"connection_string": ""}, "connection_string"),
    ({"connection_string": "${" + UNSET + "}"}, "connection_string"),
    ({"ttl_from": "later"}, "ttl_from"),
    ({"freshness_check": "maybe"}, "freshness_check"),
    ({"redis_type": "memcached"}, "redis_type"),
    ({"value_encoding": "pickle"}, "value_encoding"),
    ({"field_names": "random"}, "field_names"),
]


def _load(path: Path) -> Any:
    return load_repo_config(path, path / "feature_store.yaml")


def _repo(tmp_path: Path, name: str = "repo", **online_store: Any) -> Path:
    return write_repo(
        tmp_path / name, online_store.pop("connection_string", "127.0.0.1:6379"), **online_store
    )


@pytest.mark.parametrize(("override", "setting"), BAD, ids=[s + "=" + repr(o) for o, s in BAD])
def test_bad_setting_fails_at_load_naming_it(tmp_path, monkeypatch, override, setting):
    monkeypatch.delenv(UNSET, raising=False)
    path = _repo(tmp_path, **override)
    with pytest.raises(FeastConfigError) as info:
        _load(path).online_store  # noqa: B018 -- the online_store config is built lazily
    assert setting in str(info.value)
    if "${" in str(override.get("connection_string", "")):
        assert UNSET in str(info.value)


def test_defaults_follow_the_seed(tmp_path):
    path = write_repo(tmp_path / "repo", "127.0.0.1:6379")
    config = yaml.safe_load((path / "feature_store.yaml").read_text())
    for name in ("key_ttl_seconds", "stream_field_ttl_seconds"):
        config["online_store"].pop(name)
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    cfg = _load(path).online_store
    assert isinstance(cfg, RedisHexpireOnlineStoreConfig)
    assert cfg.key_ttl_seconds == 24 * 3600
    assert cfg.stream_field_ttl_seconds == 300
    assert cfg.key_prefix == "{project}:"
    assert cfg.prefix_for("fs") == "fs:"


def _builtin_values(name: str, field: Any) -> list[Any]:
    """Every valid value of one setting of Feast's built-in redis store config."""
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [member.value for member in annotation]
    samples = {
        "connection_string": ["127.0.0.1:6379,password=secret,ssl=true,db=1", "h1:7000,h2:7001"],
        "key_ttl_seconds": [None, 3600],
        "full_scan_for_deletion": [True, False, None],
        "skip_dedup": [True, False],
        "sentinel_master": ["mymaster"],
    }
    return samples.get(name, [field.default])


BUILTIN_CASES = [
    (name, value)
    for name, field in RedisOnlineStoreConfig.model_fields.items()
    if name != "type"
    for value in _builtin_values(name, field)
]


@pytest.mark.parametrize(("name", "value"), BUILTIN_CASES, ids=[f"{n}={v}" for n, v in BUILTIN_CASES])
def test_type_redis_yaml_switched_to_plugin_stays_valid(tmp_path, name, value):
    """Each setting Feast's `type: redis` accepts is accepted here with the same value."""
    builtin = {"type": "redis", "connection_string": "127.0.0.1:6379", name: value}
    RedisOnlineStoreConfig(**builtin)  # the value is valid for Feast's own store
    path = write_repo(tmp_path / "repo", "127.0.0.1:6379")
    config = yaml.safe_load((path / "feature_store.yaml").read_text())
    config["online_store"] = {**builtin, "type": "feast_redis_hexpire.RedisHexpireOnlineStore"}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    cfg = _load(path).online_store
    assert isinstance(cfg, RedisHexpireOnlineStoreConfig)
    got = getattr(cfg, name)
    assert getattr(got, "value", got) == value


def test_full_builtin_yaml_block_switched_to_plugin(tmp_path):
    block = {
        "type": "redis",
        "redis_type": "redis",
        "connection_string": "127.0.0.1:6379,password=secret,db=0",
        "key_ttl_seconds": 7200,
        "full_scan_for_deletion": False,
        "skip_dedup": False,
    }
    RedisOnlineStoreConfig(**block)
    path = write_repo(tmp_path / "repo", "127.0.0.1:6379")
    config = yaml.safe_load((path / "feature_store.yaml").read_text())
    config["online_store"] = {**block, "type": "feast_redis_hexpire.RedisHexpireOnlineStore"}
    (path / "feature_store.yaml").write_text(yaml.safe_dump(config))
    cfg = _load(path).online_store
    assert (cfg.key_ttl_seconds, cfg.full_scan_for_deletion) == (7200, False)


SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    "connection_string",
    [
        f"127.0.0.1:6379,password={SECRET}",
        f"127.0.0.1:6379,username=app,password={SECRET},ssl=true,db=2",
        f"127.0.0.1:6379,PASSWORD={SECRET}",
    ],
)
def test_password_never_in_repr(tmp_path, connection_string):
    cfg = _load(_repo(tmp_path, connection_string=connection_string)).online_store
    assert cfg.connection_string == connection_string  # the real value is still used
    for text in (repr(cfg), str(cfg)):
        assert SECRET not in text
        assert "connection_string" in text


def test_password_not_in_error_for_a_bad_connection_string(tmp_path):
    path = _repo(tmp_path, connection_string=f"127.0.0.1:notaport,password={SECRET}")
    with pytest.raises(FeastConfigError) as info:
        _load(path).online_store  # noqa: B018
    assert "connection_string" in str(info.value)
    assert SECRET not in str(info.value)


def test_readme_configuration_table_is_the_generated_one(capsys):
    """The whole table, cell by cell, as `feast-hexpire settings` prints it from the declarations
    (names, defaults and descriptions): a setting added, renamed or re-described without
    regenerating the README fails here."""
    from feast_redis_hexpire.cli import main

    readme = (ROOT / "README.md").read_text()
    begin = (
        "<!-- settings table: generated by `feast-hexpire settings`; tests/test_config.py compares it -->\n"
    )
    assert readme.count(begin) == 1 and readme.count("<!-- end of settings table -->") == 1
    documented = readme.split(begin, 1)[1].split("<!-- end of settings table -->", 1)[0].strip()
    assert main(["settings"]) == 0
    generated = capsys.readouterr().out.strip()
    assert (
        generated.splitlines()[2:]
        and len(generated.splitlines()) == len(RedisHexpireOnlineStoreConfig.model_fields) + 2
    )
    assert documented == generated, (
        "README settings table differs from `feast-hexpire settings`; paste its output between the markers:\n"
        + "\n".join(
            difflib.unified_diff(
                documented.splitlines(), generated.splitlines(), "README", "generated", lineterm=""
            )
        )
    )


def test_every_setting_has_a_description():
    for name, field in RedisHexpireOnlineStoreConfig.model_fields.items():
        assert field.description, name


# ---- the same errors through the real `feast apply` ----

# Runs side by side (the CLI takes seconds to start): three bad settings in one yaml, all named
# in one error; the sample yaml with its ${REDIS_CONNECTION_STRING} unset; and (below) a repo
# with field_names: feature whose features.py adds a view sharing the batch view's `risk_segment`.
CLI_CASES = [
    (
        {"key_ttl_seconds": -1, "stream_field_ttl_seconds": 0, "no_such_setting": True},
        ["key_ttl_seconds", "stream_field_ttl_seconds", "no_such_setting"],
    ),
    ({"connection_string": "${REDIS_CONNECTION_STRING}"}, ["connection_string", "REDIS_CONNECTION_STRING"]),
]


def feast_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the real `feast` CLI of this interpreter's environment."""
    feast = Path(sys.executable).with_name("feast")
    return subprocess.Popen(
        [str(feast), *args], cwd=cwd, env=env or dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


CLASH = """

risk_copy = FeatureView(
    name="risk_copy", entities=[user], schema=[Field(name="risk_segment", dtype=String)],
    source=user_batch_source, online=True,
)
"""


def test_feast_apply_refuses_bad_settings_and_clashing_views(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_CONNECTION_STRING"}
    runs = []
    # Shared names are refused only with the strict field_names: feature; before any connection.
    clash = write_repo(tmp_path / "clash", "127.0.0.1:1", field_names="feature")
    write_data(clash, count=2)
    with (clash / "features.py").open("a") as f:
        f.write(CLASH)
    runs.append((["user_batch_features", "risk_copy", "risk_segment"], clash, feast_cli(["apply"], clash)))
    for i, (override, settings) in enumerate(CLI_CASES):
        override = dict(override)
        conn = override.pop("connection_string", "127.0.0.1:1")
        path = write_repo(tmp_path / f"cli{i}", conn, **override)
        write_data(path, count=2)
        runs.append((settings, path, feast_cli(["apply"], path, env)))
    for settings, path, proc in runs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode != 0, settings
        for setting in settings:
            assert setting in stderr, stderr[-2000:]
        registry = path / "data" / "registry.db"
        if path == clash:  # the repo itself is valid: the registry exists, the clashing view is not in it
            registered = FeatureStore(repo_path=str(path)).list_feature_views()
            assert "risk_copy" not in [v.name for v in registered]
        else:
            assert not registry.exists()  # nothing was registered
