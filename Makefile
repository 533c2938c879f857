# Standard library only: every target runs python3 and nothing else.
PYTHON ?= python3
DEMO_PORT ?= 8000
FAKE_PORT ?= 8001

.PHONY: test test-all demo run bench

test:            ## the suite with python3
	$(PYTHON) tests/run.py

test-all:        ## the suite under every CPython 3.6-3.13 found
	bash tests/test_all.sh

demo:            ## the whole flow against a fake Netatmo cloud, no account needed
	@trap 'kill $$fake 2>/dev/null' EXIT INT TERM; \
	$(PYTHON) tests/fake_netatmo.py --port $(FAKE_PORT) --client-id demo-client \
	  --client-secret demo-secret \
	  --redirect-uri http://127.0.0.1:$(DEMO_PORT)/authenticate & fake=$$!; \
	NETATMO_CLIENT_ID=demo-client NETATMO_CLIENT_SECRET=demo-secret \
	NETATMO_API_URL=http://127.0.0.1:$(FAKE_PORT) NO_PROXY=127.0.0.1 no_proxy=127.0.0.1 \
	  $(PYTHON) netatmo_stdlib.py --port $(DEMO_PORT) || true

run:             ## the real thing, configured by NETATMO_* variables
	$(PYTHON) netatmo_stdlib.py

bench:           ## how fast it is here: every row of issue 4, against the fake cloud
	$(PYTHON) tests/bench.py
