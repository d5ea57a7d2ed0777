"""A test dependency from outside PyPI (stunnel4, chromium + chromedriver, Debian's old
redis-server) that is missing fails the run, naming the package; only an explicit
HEXPIRE_ALLOW_MISSING deselects those tests, and the summary says they did not run.

Each case runs pytest in a subprocess whose PATH holds none of them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

NEEDY = [
    "tests/test_security.py::test_tls_without_client_certificate_is_refused",
    "tests/test_demo_browser.py::test_page_walkthrough",
    "tests/test_cluster.py::test_cluster_with_one_old_primary_is_refused_naming_it",
]


def run_without_dependencies(tmp_path, allow: str | None) -> subprocess.CompletedProcess:
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "HEXPIRE_ALLOW_MISSING"}
    env["PATH"] = str(empty)
    if allow is not None:
        env["HEXPIRE_ALLOW_MISSING"] = allow
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", *NEEDY]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


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
    done = run_without_dependencies(tmp_path, "stunnel,chromium,old-redis-server")
    out = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out
    assert "4 deselected" in out and "4 test(s) NOT RUN" in out, out
    unknown = run_without_dependencies(tmp_path, "stunel")
    assert unknown.returncode == pytest.ExitCode.USAGE_ERROR
    assert "unknown ['stunel']" in unknown.stdout + unknown.stderr


def test_ci_never_opts_out():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "unset HEXPIRE_ALLOW_MISSING" in ci
    for path in [ROOT / "Makefile", *(ROOT / ".ci").iterdir()]:
        assert "HEXPIRE_ALLOW_MISSING=" not in path.read_text(), path
