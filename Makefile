# Two commands for a fresh machine: `make test` and `make demo`. Each creates/reuses .venv first.
# `make test` = the lint (ruff, configured in pyproject.toml), then the test suite; CI (.ci/run) runs it.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: env test demo demo-teacher bench-step bench-eval adaptation-study clean-env

env:
	python3 tools/bootstrap.py

test: env
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

demo: env
	$(PY) tools/demo.py

# the mean teacher against the fair source-only baseline (same base detector as `make demo`)
demo-teacher: env
	$(PY) tools/demo.py --method teacher

bench-step: env
	$(PY) benchmarks/bench_step.py

bench-eval: env
	$(PY) benchmarks/bench_eval.py

adaptation-study: env
	$(PY) benchmarks/adaptation_study.py --docs

clean-env:
	rm -rf .venv
