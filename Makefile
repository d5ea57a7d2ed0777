# Two commands for a fresh machine: `make run` (the main job: the interactive demo) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install install-test system-deps run walkthrough test test-matrix lint mypy bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Reinstall only when the package's metadata changes (an editable install picks up code changes).
STAMP := $(VENV)/.install-stamp

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q -e ".[local]"
	touch $@

install-test: $(PY) system-deps
	$(PIP) install -q -e ".[local,test]"

# Debian packages the tests use: redis-cli, an old redis-server (7.0, no HEXPIRE) for the
# refusal test, stunnel for TLS, Chromium and its driver for the page test.
system-deps:
	bash scripts/install-system-deps

run: demo

walkthrough: install
	$(PY) examples/walkthrough.py

# The venv's bin on PATH: tests run the `feast` and `feast-hexpire` commands as a user would.
test: install-test
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pytest -q --durations=15

# The core store tests on the oldest supported Feast with the minimum redis-py and hiredis, each
# in its own venv (.venv-<name>); `make test` covers the newest (the main venv). CI runs both.
MATRIX_TESTS := tests/test_codec.py tests/test_writes.py tests/test_reads.py tests/test_ttl.py \
	tests/test_apply_teardown.py tests/test_async.py tests/test_engine.py
MATRIX_oldest := "feast==0.55.*" "redis==5.3.*" "hiredis==3.0.*"
MATRIX ?= oldest

test-matrix: $(addprefix test-matrix-,$(MATRIX))

test-matrix-%:
	test -x .venv-$*/bin/python || python3 -m venv .venv-$*
	.venv-$*/bin/pip install -q -e ".[local,test]" $(MATRIX_$*)
	.venv-$*/bin/pip list 2>/dev/null | grep -E -i '^(feast|redis|hiredis) '
	PATH="$(CURDIR)/.venv-$*/bin:$$PATH" .venv-$*/bin/pytest -q -p no:cacheprovider $(MATRIX_TESTS)

lint: $(PY)
	$(VENV)/bin/ruff check feast_redis_hexpire tests examples bench
	$(VENV)/bin/ruff format --check feast_redis_hexpire tests examples bench

mypy: $(PY)
	$(VENV)/bin/mypy feast_redis_hexpire

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info feast_redis_hexpire/sample_repo/data

# The interactive demo (local Redis, streaming worker, web page on http://127.0.0.1:8087).
.PHONY: demo
demo: install
	$(VENV)/bin/feast-hexpire demo $(DEMO_ARGS)

