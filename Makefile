# `make demo` and `make test` set everything up themselves: they create .venv,
# install the project with the pinned versions of constraints.txt (only when
# setup.py or constraints.txt changed), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Quiet TensorFlow's C++ start-up logs (tf.data runs on the host only).
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,torch,beam,tpu]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m reskd_jax.tools.demo --workdir=runs/demo

clean:
	rm -rf $(VENV) runs .cache
