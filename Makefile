# Set-up commands (README): `make demo` runs the main job, `make test` the suite.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
PIP      = $(VENV)/bin/pip
RUN      = $(VENV)/bin/python
STAMP    = $(VENV)/.installed
OPS      = $(VENV)/.deepspeed-ops

.PHONY: install demo study test test-fast lint format clean

# torch goes in first and pinned, then everything else with the pin as a constraint, so a
# CPU machine never pulls the multi-GB CUDA build. GPU users: `make install TORCH=torch`.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install -q $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(PIP) install -q -c $(VENV)/constraints.txt -e '.[dev]'
	touch $(STAMP)

# DeepSpeed JIT-builds its CPU shm collective op (minutes) in the first process that starts an
# engine; build it here once so the tests and the demo do not. The script never fails (GPU:
# skipped), so its stamp is written once per venv; the build itself is cached in
# ~/.cache/torch_extensions and reloads in seconds.
$(OPS): $(STAMP) scripts/build_deepspeed_ops.py
	$(RUN) scripts/build_deepspeed_ops.py
	touch $(OPS)

install: $(STAMP) $(OPS)

demo: $(OPS)
	$(VENV)/bin/huginn-db demo

# README "What one-pass training keeps and loses": 3 seeds of the methods, seed 0 of the
# controls and variants, at BPTT's FLOPs (hours on 2 cores; --skip-done keeps what is already there)
STUDY = $(VENV)/bin/huginn-db compare recipes/depth-db.yaml --mode compute --out runs/study --skip-done
study: $(OPS)
	$(STUDY) --seeds 0 1 2 --objectives bptt diffusion_blocks deep_supervision diffusion_blocks:self_condition=latent
	$(STUDY) --seeds 0 --objectives bptt fixed_depth:depth=1 fixed_depth:depth=8 diffusion_blocks:self_condition=prediction
	$(STUDY) --seeds 0 --objectives bptt deep_supervision:segments=4 deep_supervision:nograd_steps=7,segments=2
	$(VENV)/bin/huginn-db report runs/study/*-seed* --out runs/study

test: $(OPS)
	$(RUN) -m pytest -q tests

test-fast: $(OPS)
	$(RUN) -m pytest -q -m "not slow" tests

# ruff: lint (pyflakes, pycodestyle, import order) and the formatter's check; `make format` fixes
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs
