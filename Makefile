# The two commands of the README: `make demo` (the main job on the built-in synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
MINIMAL_VENV ?= .venv-minimal
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: install minimal-env test demo app bench bench-peers clean help

help:
	@echo "make demo         generate phantom data, train, release, evaluate and draft reports (~17 min on 2 CPUs)"
	@echo "make test         run the test suite (builds .venv and the minimal second environment first)"
	@echo "make install      create $(VENV) with the pinned versions of requirements/ci.txt"
	@echo "make minimal-env  create $(MINIMAL_VENV): torch + transformers of the other major version only"
	@echo "make bench        run the CPU benchmarks in benchmarks/"
	@echo "make bench-peers  CLIP-T5 against a ViT + GPT-2 VisionEncoderDecoderModel (eager and optimum ONNX Runtime)"

install: $(VENV)/.installed

$(VENV)/.installed: requirements/ci.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements/ci.txt
	# real OpenI report text for the converter tests; its own dependencies are not needed for that file
	$(VENV)/bin/pip install --quiet --no-deps torchxrayvision==1.5.7
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

minimal-env: $(MINIMAL_VENV)/.installed

$(MINIMAL_VENV)/.installed: requirements/minimal.txt
	$(PYTHON) -m venv $(MINIMAL_VENV)
	$(MINIMAL_VENV)/bin/pip install --quiet -r requirements/minimal.txt
	touch $@

# One worker process per core (pytest-xdist), each test file kept in one worker so that its fixtures are built once;
# the slowest tests' times are printed at the end.
test: install minimal-env
	$(PY) -m pytest -q -n auto --dist loadfile --durations=25

# phantoms -> accelerate launch train.py -> release -> reload with Auto* -> drafts, results table, figure
demo: install
	$(PY) demo.py --output-dir $(DEMO_DIR)
	@echo "release: $(DEMO_DIR)/best   results: $(DEMO_DIR)/results.txt   figure: $(DEMO_DIR)/demo_results.png"

app: install
	$(PY) app.py --model $(DEMO_DIR)/best

bench: install
	$(PY) benchmarks/bench_release_size.py
	$(PY) benchmarks/bench_cpu_inference.py
	$(PY) benchmarks/bench_training.py

bench-peers: install
	$(PY) benchmarks/bench_peers.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
