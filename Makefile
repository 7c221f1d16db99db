# `make demo` and `make test` set everything up themselves: they create .venv,
# install the project with the pinned versions of constraints.txt (only when
# setup.py or constraints.txt changed), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Two pytest-xdist workers; each test module runs in one of them (its module-scoped fixtures,
# e.g. a trained run, are made once). PYTEST_WORKERS= runs the tests in one process.
PYTEST_WORKERS ?= -n 2 --dist=loadfile
# Quiet TensorFlow's C++ start-up logs (tf.data runs on the host only).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-fast demo clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,torch,beam,tpu]'
	touch $(STAMP)

# The whole suite; test-fast leaves out the end-to-end tests (marker e2e in pytest.ini: main.py
# and data_prep as processes, multi-process runs, training to a result) and the slow ones
# (marker slow: full-size networks, sharded steps, TPU compiles; see tests/conftest.py).
test: $(STAMP)
	$(PY) -m pytest tests -q $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not e2e and not slow" $(PYTEST_WORKERS) $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m reskd_jax.tools.demo --workdir=runs/demo

clean:
	rm -rf $(VENV) runs .cache
