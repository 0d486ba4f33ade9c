# The two commands of the README.
.PHONY: setup demo console test lint

setup:
	./scripts/setup.sh

demo: setup            ## build tiny models and run the whole PMAT DAG headless, with a summary
	.venv/bin/pmat demo --headless --workspace demo-workspace

console: setup         ## the same demo, in the console
	.venv/bin/pmat demo --workspace demo-workspace

test: setup            ## the test suite, lint and contract bindings (what CI runs)
	.venv/bin/ruff check engine kernels pmat_tui tests bench
	.venv/bin/pmat contracts check
	.venv/bin/python -m pytest -q -p no:cacheprovider tests
