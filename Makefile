# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DISTS := agent collector[embedded] web plugins/csv plugins/freeswitch plugins/asterisk plugins/kamailio
PACKAGES := agent/cdrstats_agent collector/cdrstats_collector web/cdrstats_web \
	plugins/csv/cdrstats_csv plugins/freeswitch/cdrstats_freeswitch \
	plugins/asterisk/cdrstats_asterisk plugins/kamailio/cdrstats_kamailio
SOURCES := $(wildcard */pyproject.toml plugins/*/pyproject.toml) requirements-dev.txt
# The console's browser assets (Bootstrap, Chart.js, chartjs-chart-geo) from npm, copied into the
# package by web/build-assets.mjs; never committed (docs/console.md).
ASSETS := web/cdrstats_web/static/vendor/.built

.PHONY: demo test check lint bench clean packages

$(STAMP): $(SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed" or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt $(addprefix -e ,$(DISTS))
	touch $(STAMP)

$(ASSETS): web/package.json web/package-lock.json web/build-assets.mjs
	cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build

demo: $(STAMP) $(ASSETS)
	$(BIN)/python -m cdrstats_collector.demo

test: $(STAMP) $(ASSETS) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)

bench: $(STAMP)
	$(BIN)/python bench/ingest.py $(BENCH_ARGS)

# Agent .deb/.rpm and collector .deb in dist/ (docs/packaging.md); PACKAGE_ARGS="--release 2"
packages: $(STAMP) $(ASSETS)
	$(BIN)/python packaging/build.py $(PACKAGE_ARGS)

clean:
	rm -rf $(VENV) var web/node_modules web/cdrstats_web/static/vendor
