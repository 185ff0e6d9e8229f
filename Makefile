# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned apart: they come from the machine's local wheel store.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/prismer demo --out demo_out

clean:
	rm -rf $(VENV) demo_out
