# Set-up commands (README): `make demo` runs the main job, `make test` the suite.
PY      ?= python3
VENV    ?= .venv
TORCH   ?= torch==2.13.0
PIP      = $(VENV)/bin/pip
# the venv's bin first on PATH for everything a target runs: torch builds DeepSpeed's CPU op with
# the first `ninja` on PATH, and the venv's (pip) ninja and a system one record the build
# differently, so a process that finds the other one rebuilds the op (~1 min of both cores)
BIN      = PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
RUN      = $(BIN) $(VENV)/bin/python
HDB      = $(BIN) $(VENV)/bin/huginn-db
STAMP    = $(VENV)/.installed
OPS      = $(VENV)/.deepspeed-ops

.PHONY: install demo study study-depth study-target study-text study-lm1b test test-fast coverage lint format clean

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
	$(HDB) demo

# docs/study-*: the depth study (3 seeds of the methods and
# the controls, seed 0 of two more deep-supervision variants, all at BPTT's FLOPs), the same
# objectives on TinyStories (validation loss and samples per depth, one judge LM), and the
# CPU-sized LM1B recipe of the DiffusionBlocks paper. Hours on 2 cores; --skip-done keeps
# whatever is already there, so an interrupted study continues.
STUDY = $(HDB) compare recipes/depth-db.yaml --mode compute --out runs/study --skip-done
TEXT  = $(HDB) compare --mode compute --skip-done --num-steps 1,2,4,8,16 --sample-steps 1,4,8,16 \
        --prompts 200 --per-prompt 1 --limit 50
DATA ?= ../shared/data
study: study-depth study-target study-text study-lm1b

study-depth: $(OPS)
	$(STUDY) --seeds 0 1 2 --objectives bptt diffusion_blocks deep_supervision diffusion_blocks:self_condition=latent \
	    fixed_depth:depth=1 fixed_depth:depth=8 diffusion_blocks:self_condition=prediction
	$(STUDY) --seeds 0 --objectives bptt deep_supervision:segments=4 deep_supervision:nograd_steps=7,segments=2
	$(HDB) report runs/study/*-seed* --out runs/study

# Training FLOPs to a target: every run scores the largest trained (d7) and the first unseen (d8)
# difficulty at K = 16 every 100 steps; the report gives accuracy against cumulative training
# FLOPs and the FLOPs at which d8 first reaches 0.9. Multi-step-gradient objectives beside BPTT at
# (r̄, k) = (8, 2), the oracle control, and BPTT at Huginn's (32, 8), all at BPTT (8, 2)'s budget.
TARGET = $(HDB) compare recipes/depth-db.yaml --mode compute --out runs/study-target --skip-done \
         --num-steps 1,4,16 eval.every=100 "eval.every_num_steps=[16]" "eval.every_difficulties=[7,8]" \
         eval.every_examples=200
study-target: $(OPS)
	$(TARGET) --seeds 0 1 2 --objectives bptt deep_supervision:grad_steps=2,segments=4,damping=0.05,state_noise=0.01 \
	    diffusion_blocks:unroll=2,sigma_per=sequence oracle bptt:mean_recurrence=32,backprop_depth=8
	$(HDB) report runs/study-target/*-seed* --out runs/study-target

runs/tokenizers/tinystories-4k/tokenizer.model: $(STAMP)
	$(HDB) tokenizer train --input $(DATA)/tinystories/tinystories_val.txt --vocab-size 4000 \
	    --out runs/tokenizers/tinystories-4k

runs/tokenizers/lm1b-8k/tokenizer.model: $(STAMP)
	$(HDB) tokenizer train --input $(DATA)/lm1b_sample/1b_benchmark.dev.tokens --vocab-size 8000 \
	    --out runs/tokenizers/lm1b-8k

# the studies' corpora, tokenized once (huginn-db data prepare) and read by every run
STUDY_TEXT = data.text.split_seed=0 data.text.val_fraction=0.1
runs/prepared/tinystories-study/manifest.json: runs/tokenizers/tinystories-4k/tokenizer.model
	HUGINN_DB_DATA=$(DATA) $(HDB) data prepare recipes/text-small-db.yaml $(STUDY_TEXT) \
	    --out runs/prepared/tinystories-study

runs/prepared/lm1b-8k/manifest.json: runs/tokenizers/lm1b-8k/tokenizer.model
	HUGINN_DB_DATA=$(DATA) $(HDB) data prepare recipes/paper-lm1b-cpu-db.yaml --out runs/prepared/lm1b-8k

study-text: $(OPS) runs/prepared/tinystories-study/manifest.json
	HUGINN_DB_DATA=$(DATA) $(TEXT) recipes/text-small-db.yaml --seeds 0 1 2 --out runs/study-text \
	    --objectives bptt diffusion_blocks deep_supervision fixed_depth:depth=1 diffusion_blocks:unroll=2 $(STUDY_TEXT) \
	    data.text.prepared=runs/prepared/tinystories-study train.max_steps=200 train.save_every=100

study-lm1b: $(OPS) runs/prepared/lm1b-8k/manifest.json
	HUGINN_DB_DATA=$(DATA) $(TEXT) recipes/paper-lm1b-cpu-db.yaml --seeds 0 1 2 --out runs/study-lm1b \
	    --objectives bptt diffusion_blocks

# one worker per core (pytest-xdist), each on one thread; TEST_WORKERS=0 runs in this process
TEST_WORKERS ?= auto
test: $(OPS)
	$(RUN) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

# line coverage of huginn_db over the whole suite, child processes included (pyproject.toml)
coverage: $(OPS)
	rm -f .coverage .coverage.*
	$(RUN) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --cov --cov-report=term tests

test-fast: $(OPS)
	$(RUN) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" tests

# ruff: lint (pyflakes, pycodestyle, import order) and the formatter's check; `make format` fixes
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs
