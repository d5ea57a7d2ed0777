"""A test dependency from outside PyPI (stunnel4, chromium + chromedriver, Debian's old
redis-server) that is missing fails the run, naming the package; only an explicit
HEXPIRE_ALLOW_MISSING deselects those tests, and the summary says they did not run.

Each case runs pytest in a subprocess whose PATH holds none of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

NEEDY = [
    "tests/test_security.py::test_tls_without_client_certificate_is_refused",
    "tests/test_demo_browser.py::test_page_walkthrough",
    "tests/test_cluster.py::test_cluster_with_one_old_primary_is_refused_naming_it",
]


def start_without_dependencies(tmp_path, allow: str | None) -> subprocess.Popen:
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HEXPIRE_ALLOW_MISSING"}
    env["PATH"] = str(empty)
    if allow is not None:
        env["HEXPIRE_ALLOW_MISSING"] = allow
    # Only the plugin the suite's configuration names (pytest-timeout, for `timeout` in the ini and
    # the tests' timeout marks): the others installed here (hypothesis, anyio, ...) play no part in
    # the conftest's dependency checks and cost each run seconds of imports.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_timeout",
               "-o", "addopts=-ra", *NEEDY]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(*processes: subprocess.Popen) -> list[subprocess.CompletedProcess]:
    """Wait for every process (240 s in all); none is left running, whatever happens."""
    deadline = time.monotonic() + 240
    done = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)
    return done


def run_without_dependencies(tmp_path, allow: str | None) -> subprocess.CompletedProcess:
    return finish(start_without_dependencies(tmp_path, allow))[0]


@pytest.mark.timeout(300)
def test_a_missing_dependency_fails_naming_its_package(tmp_path):
    done = run_without_dependencies(tmp_path, None)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "4 errors" in out, out  # TLS runs on both servers
    for package in ("Debian package stunnel4", "Debian packages chromium and chromium-driver",
                    "Debian 12 package redis-server"):  # fmt: skip
        assert package in out, out
    assert "skipped" not in out


@pytest.mark.timeout(300)
def test_only_an_explicit_opt_out_deselects_them_and_says_so(tmp_path):
    # Both runs at once (each is mostly the conftest importing Feast, on one core).
    opted_out = start_without_dependencies(tmp_path, "stunnel,chromium,old-redis-server")
    misspelt = start_without_dependencies(tmp_path, "stunel")
    done, unknown = finish(opted_out, misspelt)
    out = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out
    assert "4 deselected" in out and "4 test(s) NOT RUN" in out, out
    assert unknown.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown ['stunel']" in unknown.stdout + unknown.stderr


def test_ci_never_opts_out():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "unset HEXPIRE_ALLOW_MISSING" in ci
    for path in [ROOT / "Makefile", *(ROOT / ".ci").iterdir()]:
        assert "HEXPIRE_ALLOW_MISSING=" not in path.read_text(), path
