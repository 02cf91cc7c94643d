# The two commands of the README, and the ones around them.
#   make demo     set up, start the stack, run the example job, show the results
#   make test     set up and run the whole suite (what CI runs)
#   make release  the sdist and wheel, checked (docs/deployment.md: images too)
.PHONY: setup demo test unit security integration faults lint up down status bench release clean

PY := .venv/bin/python

setup:
	@scripts/setup.sh

demo: setup
	@scripts/demo.sh

test: setup
	@scripts/test.sh

unit: setup
	@$(PY) -m pytest tests/unit -q

security: setup
	@$(PY) -m pytest tests/security -q

integration: setup
	@$(PY) -m pytest tests/integration -q

faults: setup
	@$(PY) -m pytest tests/faults -q

lint: setup
	@scripts/lint.sh

up: setup
	@$(PY) scripts/stack.py up

down:
	@$(PY) scripts/stack.py down

status:
	@$(PY) scripts/stack.py status

bench: setup
	@$(PY) scripts/bench_e2e.py

# The sdist and wheel in dist/, checked with twine. Images: docker build --target cpu|gpu .
release: setup
	@scripts/release.sh

clean: down
	rm -rf var/log var/run var/storage
