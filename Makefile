# Main commands of the project.
#
#   make demo      train, decode, score and tokenize with the SNAC-24k demo config on the embedded
#                  demo corpus (recipe stages 1-6; a few minutes on 2 CPU cores)
#   make test      the test suite (creates .venv with the package and its test extra if needed)
#   make ci-demo   the recipe end to end on a subset of the demo corpus with the tiny config
#
# Variables: PYTHON (interpreter that creates the venv), VENV (the virtual environment to create or
# use, default .venv; e.g. make demo VENV=~/venvs/snac), DEMO_CONFIG (the demo's training
# config, under egs2/snac24k), DEMO_ARGS (extra run.sh options, e.g. DEMO_ARGS="--ngpu 1").

PYTHON ?= python3
VENV ?= .venv
RECIPE := egs2/snac24k
DEMO_ARGS ?=
DEMO_CONFIG ?= conf/tuning/train_snac24k_demo.yaml
DEMO_EXP := $(RECIPE)/exp/codec_$(basename $(notdir $(DEMO_CONFIG)))

.PHONY: demo test ci-demo venv

venv:
	@# espnet_snac.registry loaded at start-up: the package and its start-up hook are installed
	@if ! $(VENV)/bin/python -c "import sys; assert 'espnet_snac.registry' in sys.modules; import espnet2, snac, pytest, wheel" 2>/dev/null; then \
		echo "setting up $(VENV)"; \
		test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV); \
		$(VENV)/bin/python -m pip install "pip<25"; \
		$(VENV)/bin/python -m pip install -e '.[test]'; \
	fi

demo: venv
	cd $(RECIPE) && ./run.sh --stage 1 --stop_stage 6 --train_config $(DEMO_CONFIG) --python $(abspath $(VENV))/bin/python $(DEMO_ARGS)
	@echo
	@cat $(DEMO_EXP)/RESULTS.md
	@echo
	@echo "results:        $(DEMO_EXP)/RESULTS.md"
	@echo "reconstructions and spectrogram images: $(DEMO_EXP)/decode_*/<set>/wav, $(DEMO_EXP)/decode_*/<set>/scoring/plots"
	@echo "tokens:         $(RECIPE)/dump/tokens/{train,dev,test} (codes.scp, text, token_list; text_orpheus and datasets/ with the transcripts)"
	@echo "training curves: $(DEMO_EXP)/images, tensorboard --logdir $(DEMO_EXP)/tensorboard"

# CI=true (set by CI services and .ci/run): a skip whose prerequisite is present fails the run
# (tests/skip_accounting.py); every run ends with the skip count and reasons and the 25 slowest steps.
test: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q --durations=25 tests

ci-demo: venv
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m pytest -q tests/test_recipe.py
