# projector: the two commands are `make demo` and `make test`.
# One default Python (python3) in .venv; another one in its own venv:
#   make test PYTHON=python3.13 VENV=.venv-3.13, or make unit-py / test-py PY=3.13 (finds it on PATH or under pyenv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
KAFKA := deploy/kafka/kafka.sh

.PHONY: demo test bench unit unit-py test-py install kafka-jars kafka-start kafka-stop cluster-start cluster-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

kafka-jars:
	bash $(KAFKA) fetch

## The main job: the broker (if none runs), a worker with its web views, demo data; Ctrl-C stops it.
demo: install kafka-jars
	$(BIN)/projector demo

## The whole test suite against a real Kafka broker it starts (and stops) itself; chromium (deploy/browser.sh) for the status page test.
## TEST_JOBS pytest processes share the tests, each with its own broker (TEST_JOBS=1: one process).
TEST_JOBS ?= 2
test: install kafka-jars
	bash deploy/browser.sh
	$(BIN)/pytest $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal)

## projector side by side with naive Faust, Quix Streams and the raw clients: 1M events, 10k accounts, 8 partitions;
## then projector folding accounts only (the peers' work) beside Quix and raw aiokafka.
bench: install kafka-jars
	$(BIN)/projector bench
	$(BIN)/projector bench --tables accounts --contestants projector,quix,raw-aiokafka

unit: install
	$(BIN)/pytest tests/unit

## The unit tests or the whole suite on another Python, in its own venv .venv-X.Y: make unit-py PY=3.12, make test-py PY=3.13
unit-py test-py:
	@test -n "$(PY)" || { echo "usage: make $@ PY=3.13 (a Python version: deploy/pythons.sh finds it)" >&2; exit 2; }
	python="$$(bash deploy/pythons.sh $(PY))" && $(MAKE) $(patsubst %-py,%,$@) PYTHON="$$python" VENV=.venv-$(PY)

kafka-start: kafka-jars
	bash $(KAFKA) start
kafka-stop:
	bash $(KAFKA) stop
cluster-start: kafka-jars
	bash $(KAFKA) --mode cluster start
cluster-stop:
	bash $(KAFKA) --mode cluster stop

clean:
	rm -rf $(VENV) .venv-3.* data *.egg-info
