# rsna-kit. Every target sets up .venv on first use (keyed on requirements.txt's hash).
# Each target is one `python -m kit ...` line; `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('requirements.txt','rb').read()).hexdigest()[:12])")

PRESET ?=
RUN ?= latest
DATA ?=
SUB ?=
LABELS ?=
NAME ?= full
MSG ?= rsna-kit submission
PRESET_ARG := $(if $(PRESET),--preset $(PRESET))
DATA_ARG := $(if $(DATA),--data $(DATA))
LABELS_ARG := $(if $(LABELS),--labels $(LABELS))

.PHONY: help setup test submission data demo-data labels prepare train predict tune submit \
        validate score leaderboard report kernels kernels-push kernels-status kernels-output \
        kaggle-scores bench bench-peers clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | expand -t 16

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	rm -f $(VENV)/.stamp-*
	touch $@

setup: $(STAMP) ## create .venv from requirements.txt (every target does this on first use)

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q

submission: $(STAMP) ## whole flow on data/rsna, else on the embedded demo data (PRESET=...)
	$(PY) -m kit submission $(PRESET_ARG) $(DATA_ARG)

data: $(STAMP) ## download + safely unzip the Kaggle data into data/rsna (needs credentials)
	$(PY) -m kit data

demo-data: $(STAMP) ## write the embedded synthetic data set into data/demo
	$(PY) -m kit demo-data --out data/demo

labels: $(STAMP) ## validate the label CSVs and print counts (DATA=...)
	$(PY) -m kit labels $(DATA_ARG)

prepare: $(STAMP) ## decode + resize DICOMs into data/cache (DATA=...)
	$(PY) -m kit prepare $(DATA_ARG)

train: $(STAMP) ## train a preset (PRESET=r50-heads ...)
	$(PY) -m kit train $(PRESET_ARG) $(DATA_ARG)

predict: $(STAMP) ## raw detections of RUN for val and test (flip TTA)
	$(PY) -m kit predict --run $(RUN) --split all --tta flip

tune: $(STAMP) ## tune post-processing of RUN on its raw val detections
	$(PY) -m kit tune --run $(RUN)

submit: $(STAMP) ## submission CSV of RUN; sends it to Kaggle (needs credentials)
	$(PY) -m kit submit --run $(RUN) --kaggle -m "$(MSG)"

validate: $(STAMP) ## check SUB=... against the sample submission
	$(PY) -m kit validate --submission $(SUB) $(DATA_ARG)

score: $(STAMP) ## score SUB=... against LABELS=... (default: the data set's labels)
	$(PY) -m kit score --submission $(SUB) $(LABELS_ARG) $(DATA_ARG)

leaderboard: $(STAMP) ## local leaderboard, best first
	$(PY) -m kit leaderboard

report: $(STAMP) ## pictures + results table of RUN
	$(PY) -m kit report --run $(RUN)

kernels: $(STAMP) ## build the Kaggle kernels into kernels/build/
	$(PY) -m kit kernels build

kernels-push: $(STAMP) ## build and push kernel NAME (default full) to Kaggle
	$(PY) -m kit kernels push $(NAME)

kernels-status: $(STAMP) ## status of kernel NAME on Kaggle
	$(PY) -m kit kernels status $(NAME)

kernels-output: $(STAMP) ## download kernel NAME's outputs into runs/
	$(PY) -m kit kernels output $(NAME)

kaggle-scores: $(STAMP) ## public/private scores of our Kaggle submissions
	$(PY) -m kit kaggle-scores

bench: $(STAMP) ## benchmarks (JSON on stdout; the torchvision comparison needs bench-peers)
	$(PY) bench/run.py

bench-peers: ## torch + torchvision for bench/compare.py, in .bench/venv (never in .venv)
	$(PYTHON) -m venv .bench/venv && .bench/venv/bin/pip install -q -r bench/requirements.txt

clean: ## remove .venv (data/, runs/ and submissions/ are kept)
	rm -rf $(VENV)
