# Set-up commands (README): `make demo` runs the main job, `make test` the suite.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
PIP      = $(VENV)/bin/pip
RUN      = $(VENV)/bin/python
STAMP    = $(VENV)/.installed

.PHONY: install demo test test-fast clean

# torch goes in first and pinned, then everything else with the pin as a constraint, so a
# CPU machine never pulls the multi-GB CUDA build. GPU users: `make install TORCH=torch`.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/huginn-db demo

test: $(STAMP)
	$(RUN) -m pytest -q tests

test-fast: $(STAMP)
	$(RUN) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) runs
