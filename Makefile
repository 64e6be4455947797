# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
SEED   ?= 826
OUT    ?= demo_out

.PHONY: setup demo test test-slow docs figures families bench bench-long clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# the CPU build on disk; an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/routerlens demo --out $(OUT) --seed $(SEED) --overwrite

# One torch thread: on 2 shared cores, two threads ran the small models 20-80x slower (spin-waits).
test: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests $(if $(wildcard notebooks/*.ipynb),--nbmake notebooks,)
	$(MAKE) --no-print-directory docs

# The docs site (docs/ + mkdocs.yml) into site/; --strict: a broken link, a missing page or a docstring
# mkdocstrings cannot render fails the build. No network: no web fonts, no remote scripts.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

test-slow: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m slow tests

# The figures and assets/demo_report.json from the project's code, then the README's headline table from that report.
figures: setup
	$(PY) -m routerlens_interp.pipeline.figures --out assets --seed $(SEED)
	$(PY) docs/hooks.py --readme

# The architectures table (docs/architectures.md; counts in the README), generated from the family suite's results.
families: setup
	ROUTERLENS_FAMILY_REPORT=assets/families.json OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_families.py tests/test_remote_code.py
	$(PY) tests/family_report.py assets/families.json docs/architectures.md README.md

bench: setup
	$(PY) benchmarks/trace_overhead.py
	$(PY) benchmarks/train_cost.py
	$(PY) benchmarks/board.py

# Long: real layer shapes (~20 min on 2 CPU cores) and the CE-without-training measurements (~30 min).
bench-long: setup
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/ces_without_training.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache site
