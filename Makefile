# Two commands do all the set-up on a fresh machine:
#   make demo   - make one post for the night-sky topic with the bundled GAN, into state/outbox/
#   make test   - run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: these versions install from files on this disk.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# --dry-run: the outbox, even where Instagram credentials are configured
	$(BIN)/bot post --topic night-sky --dry-run

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/gan_train.py
	$(BIN)/python bench/vqgan_clip.py --sizes 256 --cutouts 32

clean-venv:
	rm -rf $(VENV)
