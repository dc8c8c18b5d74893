# Two commands for a fresh machine: `make test` and `make demo`. Each creates/reuses .venv first.
# `make test` = the lint (ruff, configured in pyproject.toml), then the test suite; CI (.ci/run) runs it.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1
# The official detectron2 at main (source tarball) that `make test-d2main` builds and tests against.
D2_SOURCE ?= ../shared/third_party/detectron2-02b5c4e.tar.gz

.PHONY: env test test-quick test-d2main demo demo-metaalign demo-teacher bench-step bench-eval adaptation-study clean-env

env:
	python3 tools/bootstrap.py

test: env
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --maxprocesses 4 tests

# The edit loop: lint + every test except the end-to-end tool runs and real builds (marked slow).
test-quick: env
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --maxprocesses 4 -m "not slow" tests

# The second lane: the whole suite against detectron2 built from source (compiled _C) in .venv-d2main.
# The build is cached by the source's hash (~/.cache/metaalign_det/source-builds), so it compiles once.
test-d2main:
	@test -e "$(D2_SOURCE)" || { echo "test-d2main: $(D2_SOURCE) not found (set D2_SOURCE=PATH to a detectron2 checkout or tarball)" >&2; exit 2; }
	METAALIGN_VENV=$(CURDIR)/.venv-d2main METAALIGN_D2_SOURCE=$(D2_SOURCE) python3 tools/bootstrap.py
	.venv-d2main/bin/python -m pytest -q -n auto --maxprocesses 4 tests

# the mean teacher against the fair source-only baseline (same strong augmentation and EMA), from one base
demo: env
	$(PY) tools/demo.py

# MetaAlign (first order) against plain source-only, from the same base detector as `make demo`
demo-metaalign: env
	$(PY) tools/demo.py --method metaalign

# the name `make demo` had for the teacher comparison before it became the default
demo-teacher: demo

bench-step: env
	$(PY) benchmarks/bench_step.py

bench-eval: env
	$(PY) benchmarks/bench_eval.py

adaptation-study: env
	$(PY) benchmarks/adaptation_study.py --docs

clean-env:
	rm -rf .venv .venv-d2main
