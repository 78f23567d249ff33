# bayes_dc: `make run` sets up and runs the CPU demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUN_NAME ?= quick-$(shell date +%Y%m%d-%H%M%S)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data run test bench clean

setup: $(VENV)/.installed

# torch/torchvision are pinned in pyproject.toml; pip takes them from local files where they exist.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST from Debian when we can install it; otherwise the loader falls back to
# --data-root, $$BAYES_DC_DATA and torchvision's download.
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	elif [ ! -f $(FMNIST) ]; then \
	  echo "note: $(FMNIST) not found; run.py will look in --data-root / BAYES_DC_DATA or download"; fi

run: setup data
	$(PY) experiments/run.py --preset quick --name $(RUN_NAME)

# Two workers, one per core (most tests are one process on one thread); --dist loadfile keeps each file's shared
# runs (module and session fixtures) in one worker.
test: setup data
	$(PY) -m pytest -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) .pytest_cache
