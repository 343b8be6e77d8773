# rsna-kit. Every target sets up .venv on first use (keyed on the hashes of requirements.txt and
# constraints.txt, the pinned versions, and on GPU).
# Each target is one `python -m kit ...` line; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HASH = $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('$(1)','rb').read()).hexdigest()[:12])")

# GPU=1: TensorFlow's CUDA build (tensorflow[and-cuda], same version as requirements.txt's
# tensorflow-cpu); GPU=0 or empty: the CPU build. Default: 1 when `nvidia-smi -L` lists a GPU.
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1)
GPU_ON := $(filter 1,$(strip $(GPU)))
STAMP := $(VENV)/.stamp-$(call HASH,requirements.txt)-$(call HASH,constraints.txt)$(if $(GPU_ON),-gpu)
# stamps of the other build: switching builds starts from a fresh .venv
OTHER_STAMPS = $(if $(GPU_ON),$(filter-out %-gpu,$(wildcard $(VENV)/.stamp-*)),$(filter %-gpu,$(wildcard $(VENV)/.stamp-*)))
TF_CHECK := $(PY) -c "import tensorflow as tf; print(tf.config.list_physical_devices('\''GPU'\''))"

# Kaggle's image as a test target: its own venv (never .venv) from requirements-kaggle.txt with a
# Python 3.12: the first python3.12 on PATH that runs, else the newest pyenv 3.12.x.
KAGGLE_PYTHON ?= $(shell if python3.12 -c "" >/dev/null 2>&1; then echo python3.12; else \
	ls -d "$$(pyenv root 2>/dev/null || echo "$${PYENV_ROOT:-$$HOME/.pyenv}")"/versions/3.12*/bin/python3.12 \
	2>/dev/null | sort -V | tail -n 1; fi)
KAGGLE_VENV := .kaggle-env
KAGGLE_STAMP := $(KAGGLE_VENV)/.stamp-$(call HASH,requirements-kaggle.txt)

PRESET ?=
RUN ?= latest
DATA ?=
SUB ?=
LABELS ?=
NAME ?= full
MSG ?= rsna-kit submission
BUDGET ?=
SET ?=
SUFFIX ?=
CONTINUE ?=
RUNS ?=
ENSEMBLE ?= ensemble
SIZE ?=
TTA ?=
DIFFICULTY ?=
WEIGHTS ?= coco
PORT ?=
TEST_WORKERS ?= 2
K ?= 5
PRESET_ARG := $(if $(PRESET),--preset $(PRESET))
DATA_ARG := $(if $(DATA),--data $(DATA))
LABELS_ARG := $(if $(LABELS),--labels $(LABELS))
BUDGET_ARG := $(if $(BUDGET),--time-budget $(BUDGET))
SET_ARG := $(foreach item,$(SET),--set $(item))
KERNEL_ARGS := $(PRESET_ARG) $(SET_ARG) $(BUDGET_ARG) $(if $(SUFFIX),--suffix $(SUFFIX)) \
	$(if $(filter 1,$(CONTINUE)),--continue)

.PHONY: help setup test test-fast lint submission data demo-data labels prepare train predict \
        tune submit validate score leaderboard report kernels kernels-push kernels-status \
        kernels-output kaggle-scores kaggle-env bench bench-peers clean ensemble weights view upgrade-pins \
        folds config

help: ## list the targets with what each does
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): requirements.txt constraints.txt
	@echo "setup: installing $(VENV) with the $(if $(GPU_ON),GPU build of TensorFlow (GPU=1),CPU build of TensorFlow (GPU=0)); make setup GPU=1 or GPU=0 forces one"
	$(if $(OTHER_STAMPS),rm -rf $(VENV))
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -c constraints.txt
	$(if $(GPU_ON),$(GPU_SWAP))
	rm -f $(VENV)/.stamp-*
	touch $@

# tensorflow-cpu -> tensorflow[and-cuda] of the same version. Both wheels own the same tensorflow/
# files, so tensorflow is (re)written after tensorflow-cpu is gone; where requirements.txt installs
# plain tensorflow (no tensorflow-cpu), only the CUDA libraries are added.
GPU_SWAP = v=$$($(VENV)/bin/pip show tensorflow-cpu 2>/dev/null | sed -n 's/^Version: //p'); \
	if [ -n "$$v" ]; then $(VENV)/bin/pip uninstall -y -q tensorflow-cpu && \
	$(VENV)/bin/pip install -q --force-reinstall --no-deps "tensorflow==$$v"; \
	else v=$$($(VENV)/bin/pip show tensorflow | sed -n 's/^Version: //p'); fi; \
	$(VENV)/bin/pip install -q "tensorflow[and-cuda]==$$v"

setup: $(STAMP) ## create .venv from requirements.txt (every target does this on first use; GPU=1/0)
	@v=$$($(VENV)/bin/pip show tensorflow-cpu 2>/dev/null | sed -n 's/^Version: //p'); \
	if [ -n "$$v" ]; then b="the CPU build of TensorFlow (tensorflow-cpu $$v; GPU=1 installs the GPU build)"; \
	else b="tensorflow $$($(VENV)/bin/pip show tensorflow 2>/dev/null | sed -n 's/^Version: //p')$(if $(GPU_ON), (GPU build, CUDA libraries from pip))"; fi; \
	echo "setup: $(VENV) has $$b; check: "'$(TF_CHECK)'

test: $(STAMP) ## run the whole test suite (what CI runs) on TEST_WORKERS=2 pytest-xdist workers
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: $(STAMP) ## the quick part of the suite for a developer's loop (no @slow tests)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP) ## the layering contracts of pyproject.toml (import-linter; make test runs them too)
	$(VENV)/bin/lint-imports

submission: $(STAMP) ## whole flow on data/rsna, else on the embedded demo data (PRESET= SET= BUDGET=45m)
	$(PY) -m kit submission $(PRESET_ARG) $(SET_ARG) $(DATA_ARG) $(BUDGET_ARG)

data: $(STAMP) ## download + safely unzip the Kaggle data into data/rsna (needs credentials)
	$(PY) -m kit data

demo-data: $(STAMP) ## write the embedded synthetic data set into data/demo (DIFFICULTY=rsna: data/demo-rsna)
	$(PY) -m kit demo-data $(if $(DIFFICULTY),--difficulty $(DIFFICULTY) --out data/demo-$(DIFFICULTY),--out data/demo)

labels: $(STAMP) ## validate the label CSVs and print counts (DATA=...)
	$(PY) -m kit labels $(DATA_ARG)

config: $(STAMP) ## every key of PRESET with its value and meaning (SET="seed=1")
	$(PY) -m kit config $(PRESET_ARG) $(SET_ARG)

prepare: $(STAMP) ## decode + resize DICOMs into data/cache (DATA=... SIZE=256)
	$(PY) -m kit prepare $(DATA_ARG) $(if $(SIZE),--size $(SIZE))

train: $(STAMP) ## train a preset (PRESET=r50-heads SET="seed=1 folds=5 fold=0" BUDGET=...)
	$(PY) -m kit train $(PRESET_ARG) $(SET_ARG) $(DATA_ARG) $(BUDGET_ARG)

predict: $(STAMP) ## raw detections of RUN for val and test (TTA: the run's, or TTA=none|flip)
	$(PY) -m kit predict --run $(RUN) --split all $(if $(TTA),--tta $(TTA))

tune: $(STAMP) ## tune post-processing of RUN on its raw val detections
	$(PY) -m kit tune --run $(RUN)

submit: $(STAMP) ## submission CSV of RUN; sends it to Kaggle (needs credentials)
	$(PY) -m kit submit --run $(RUN) --kaggle -m "$(MSG)"

validate: $(STAMP) ## check SUB=... against the sample submission (DATA=...)
	@test -n "$(SUB)" || { echo "make validate: say which file, e.g. make validate SUB=submissions/RUN.csv" >&2; exit 2; }
	$(PY) -m kit validate --submission $(SUB) $(DATA_ARG)

score: $(STAMP) ## score SUB=... against LABELS=... (else DATA=...'s labels, else the data set's)
	@test -n "$(SUB)" || { echo "make score: say which file, e.g. make score SUB=submissions/RUN.csv" >&2; exit 2; }
	$(PY) -m kit score --submission $(SUB) $(if $(LABELS),$(LABELS_ARG),$(DATA_ARG))

leaderboard: $(STAMP) ## local leaderboard, best first
	$(PY) -m kit leaderboard

report: $(STAMP) ## pictures + results table of RUN
	$(PY) -m kit report --run $(RUN)

view: $(STAMP) ## local page: RUN's films and boxes, post-processing by hand (PORT=8765)
	$(PY) -m kit view --run $(RUN) $(if $(PORT),--port $(PORT))

weights: $(STAMP) ## download + check initial weights into data/weights (WEIGHTS=coco|imagenet-r50|imagenet-r101)
	$(PY) -m kit weights $(WEIGHTS)

kernels: $(STAMP) ## build the Kaggle kernels into kernels/build/ (PRESET= SET= BUDGET= SUFFIX=)
	$(PY) -m kit kernels build $(KERNEL_ARGS)

kernels-push: $(STAMP) ## push kernel NAME (PRESET= SET= BUDGET= SUFFIX=fold2 CONTINUE=1)
	$(PY) -m kit kernels push $(NAME) $(KERNEL_ARGS)

kernels-status: $(STAMP) ## status of kernel NAME on Kaggle
	$(PY) -m kit kernels status $(NAME)

kernels-output: $(STAMP) ## download kernel NAME's outputs into runs/
	$(PY) -m kit kernels output $(NAME)

ensemble: $(STAMP) ## fuse RUNS="A B C" (folds or seeds) into the run folder runs/ENSEMBLE
	$(PY) -m kit ensemble --runs $(RUNS) --name $(ENSEMBLE)

folds: $(STAMP) ## train K=5 folds of PRESET, predict, ensemble into runs/NAME, tune (rerun resumes)
	$(PY) -m kit folds --k $(K) $(PRESET_ARG) $(SET_ARG) $(DATA_ARG) $(if $(filter-out full,$(NAME)),--name $(NAME))

kaggle-scores: $(STAMP) ## public/private scores of our Kaggle submissions
	$(PY) -m kit kaggle-scores

bench: $(STAMP) ## benchmarks (JSON on stdout; the torchvision comparison needs bench-peers)
	$(PY) bench/run.py

kaggle-env: $(KAGGLE_STAMP) ## build .kaggle-env: Kaggle's image pinned (requirements-kaggle.txt, Python 3.12)

$(KAGGLE_STAMP):
	@if [ -z "$(KAGGLE_PYTHON)" ]; then echo "kaggle-env: no Python 3.12 found (no working python3.12 on PATH, none under \$$(pyenv root)/versions/3.12*). Install one (pyenv install 3.12) or pass KAGGLE_PYTHON=/path/to/python3.12" >&2; exit 1; fi
	@$(KAGGLE_PYTHON) -c "import sys; sys.exit(sys.version_info[:2] != (3, 12))" 2>/dev/null || { echo "kaggle-env: KAGGLE_PYTHON=$(KAGGLE_PYTHON) is not a working Python 3.12 (Kaggle's image runs 3.12)" >&2; exit 1; }
	rm -rf $(KAGGLE_VENV)
	$(KAGGLE_PYTHON) -m venv $(KAGGLE_VENV)
	$(KAGGLE_VENV)/bin/pip install -q --upgrade pip
	$(KAGGLE_VENV)/bin/pip install -q -r requirements-kaggle.txt
	touch $@

upgrade-pins: ## re-pin constraints.txt from a fresh venv of requirements.txt alone (then make test)
	rm -rf .pins-venv && $(PYTHON) -m venv .pins-venv && .pins-venv/bin/pip install -q --upgrade pip
	.pins-venv/bin/pip install -q -r requirements.txt
	{ sed -n '1,3p' constraints.txt; echo "# $$($(PYTHON) -V), $$(uname -s) $$(uname -m), $$(date +%F)."; \
	  .pins-venv/bin/pip freeze | grep -v '^-e'; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt
	rm -rf .pins-venv
	@echo "constraints.txt re-pinned: run make test, then commit it"

bench-peers: ## torch + torchvision for bench/compare.py, in .bench/venv (never in .venv)
	$(PYTHON) -m venv .bench/venv && .bench/venv/bin/pip install -q -r bench/requirements.txt

clean: ## remove .venv and .kaggle-env (data/, runs/ and submissions/ are kept)
	rm -rf $(VENV) $(KAGGLE_VENV)
