"""The README's quick start, run exactly as written (in a copy of the sample repo), and its
storage-layout example compared with what the quick start shows.

Two lines are handled rather than run: the ``pip install`` line (the package under test is already
installed where the tests run) and ``feast-hexpire local-redis &``, started here as a background
process whose printed address replaces ``PORT`` in the next line, and stopped at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def block_after(heading: str, fence: str) -> list[str]:
    text = README.read_text()
    section = text[text.index(heading) :]
    start = section.index(fence) + len(fence)
    return section[start : section.index("```", start)].strip("\n").splitlines()


def command(line: str) -> str:
    """A shell line without its trailing comment."""
    return re.sub(r"\s+#.*$", "", line).strip()


def start_local_redis() -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "feast_redis_hexpire.cli", "local-redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        match = re.search(r"listening on (\S+)", line)
        if match:
            return process, match.group(1)
        assert time.monotonic() < deadline
    raise AssertionError("feast-hexpire local-redis printed no address")


def layout_example() -> dict[str, str]:
    """Field -> "none" or "field" (its TTL kind) from the README's storage-layout block."""
    kinds = {}
    for line in block_after("## Storage layout", "```\n")[1:]:
        name = line.split("=")[0].strip()
        kinds[name] = "none" if "no field TTL" in line else "field"
    return kinds


def test_quick_start_as_written(tmp_path):
    lines = [command(x) for x in block_after("## Quick start", "```sh\n")]
    # Installing is not repeated here; the local Redis runs in the background as the block says.
    assert lines[0].startswith("pip install") and lines[1] == "feast-hexpire local-redis &"
    assert lines[2] == "export REDIS_CONNECTION_STRING=127.0.0.1:PORT"
    assert any(x.startswith("python push.py") for x in lines), "the quick start pushes a streaming event"
    # A quick start that works in the checkout's sample repo runs in a copy of it.
    if (ROOT / "feature_repo").is_dir():
        ignore = shutil.ignore_patterns("data", ".feast", "__pycache__")
        shutil.copytree(ROOT / "feature_repo", tmp_path / "feature_repo", ignore=ignore)
    server, address = start_local_redis()
    try:
        host, port = address.split(":")
        assert host == "127.0.0.1"
        script = "\n".join(["set -euo pipefail", lines[2].replace("PORT", port), *lines[3:]])
        started = time.monotonic()
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
        )
        seconds = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(30)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"quick start ran in {seconds:.1f} s")
    out = done.stdout
    assert re.search(r"fs:user:u0001\s+TTL = 86\d{3} s \(key-level\)", out), out

    shown = {}
    for line in out.splitlines():
        match = re.match(r"\s+(\S+)\s+= .*?(no TTL|missing|(\d+(?:\.\d+)?) s)$", line)
        if match:
            shown[match.group(1)] = match.group(2)
    # Both layers, as the README's storage layout shows them: every field it lists is there, the
    # batch fields without a field TTL, the streaming fields with one of at most 300 s.
    example = layout_example()
    assert set(example) <= set(shown), (example, shown)
    for field, kind in example.items():
        if kind == "none":
            assert shown[field] == "no TTL", (field, shown[field])
        else:
            assert shown[field] not in ("no TTL", "missing"), (field, shown[field])
            assert 250 < float(shown[field].split()[0]) <= 300, (field, shown[field])
