# Two commands for a fresh machine: `make test` and `make demo`. Each creates/reuses .venv first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: env test demo bench-step bench-eval adaptation-table adaptation-table-warm clean-env

env:
	python3 tools/bootstrap.py

test: env
	$(PY) -m pytest -q tests

demo: env
	$(PY) tools/demo.py

bench-step: env
	$(PY) benchmarks/bench_step.py

bench-eval: env
	$(PY) benchmarks/bench_eval.py

adaptation-table: env
	$(PY) benchmarks/adaptation_table.py --inner-lr-scale 1 --docs

adaptation-table-warm: env
	$(PY) benchmarks/adaptation_table.py --warm-start --inner-lr-scale 1 --docs

clean-env:
	rm -rf .venv
