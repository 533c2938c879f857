# Standard library only: every target runs python3 and nothing else.
PYTHON ?= python3
DEMO_PORT ?= 8000
FAKE_PORT ?= 8001

.PHONY: test test-all test-stress test-browser test-mutations demo demo-once demo-paste run bench

test:            ## the suite with python3
	$(PYTHON) tests/run.py

test-all:        ## the suite under every CPython 3.6-3.13 found
	bash tests/test_all.sh

test-stress:     ## the long runs: 100,000 logins, 200 slow clients, rotation under load
	$(PYTHON) tests/run.py tests.stress_test

test-browser:    ## the flow in headless Chromium (Debian package chromium)
	@command -v chromium >/dev/null || { echo "test-browser: chromium is missing: apt-get install chromium"; exit 1; }
	$(PYTHON) tests/run.py tests.browser_test

test-mutations:  ## break each property once (tests/mutations.py): a test must fail each time
	$(PYTHON) tests/mutations.py

demo:            ## the whole flow against a fake Netatmo cloud, no account needed (TRACE=1: told step by step)
	@NETATMO_TRACE=$(TRACE) $(PYTHON) tests/demo.py --port $(DEMO_PORT) --fake-port $(FAKE_PORT)

demo-once:       ## the fake cloud and a --once run in one command; more flags in ARGS="--json"
	@NETATMO_TRACE=$(TRACE) $(PYTHON) tests/demo.py --once --port $(DEMO_PORT) \
	  --fake-port $(FAKE_PORT) $(ARGS)

demo-paste:      ## a --paste login against the fake cloud: open the address, paste where it ends
	@NETATMO_TRACE=$(TRACE) $(PYTHON) tests/demo.py --once --paste --port $(DEMO_PORT) \
	  --fake-port $(FAKE_PORT) $(ARGS)

run:             ## the real thing, configured by NETATMO_* variables
	$(PYTHON) netatmo_stdlib.py

bench:           ## how fast it is here: every row of issue 4, against the fake cloud
	$(PYTHON) tests/bench.py
