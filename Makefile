# The two commands of the README.
.PHONY: setup demo console test lint

# Set-up runs again only when what it installs from changed: .venv/.setup-done is touched
# after a successful run and is newer than these files while the venv is current.
SETUP_INPUTS := scripts/setup.sh pyproject.toml

.venv/.setup-done: $(SETUP_INPUTS)
	./scripts/setup.sh
	touch $@

setup: .venv/.setup-done

demo: setup            ## build tiny models and run the whole PMAT DAG headless, with a summary
	.venv/bin/pmat demo --headless --workspace demo-workspace

console: setup         ## the same demo, in the console
	.venv/bin/pmat demo --workspace demo-workspace

test: setup            ## the test suite, lint, import floors and contract bindings (what CI runs)
	.venv/bin/ruff check engine pmat_kernels pmat_tui tests bench
	.venv/bin/lint-imports --no-cache
	.venv/bin/pmat contracts check
	.venv/bin/python -m pytest -q -p no:cacheprovider tests
