"""A seeded fuzzer of Netatmo's answers: real answers with one node of another type.

Each case swaps one node of a real answer (tests/fixtures), at any depth, the
envelope included, for a value of another JSON type (NaN and huge numbers, strings
with control characters, deep nesting too), or sends an empty body, or none. Nothing
may answer 500 or leave a traceback: a page answers 200 or the page of a Netatmo
failure, and --once exits 0, 4, 5 or 6.
"""

import json
import os

from tests import fuzz
from tests.support import ROOT
from tests.test_terminal import OnceRun, TokenFileCase

FUZZ_SEED = 20261201
ANSWER_CASES = int(os.environ.get("ANSWER_FUZZ_COUNT", "2000"))
ONCE_CASES = int(os.environ.get("ANSWER_FUZZ_ONCE_COUNT", "100"))


def real_answers():
    """Return alice's real answers, whole, by endpoint: what the fuzzer mutates."""
    answers = {}
    for path, name in (("/api/homesdata", "homesdata.json"),
                       ("/api/getstationsdata", "getstationsdata.json"),
                       ("/api/gethomecoachsdata", "gethomecoachsdata.json"),
                       ("/api/homestatus", "homestatus.json")):
        with open(os.path.join(ROOT, "tests", "fixtures", name), encoding="utf-8") as f:
            answers[path] = json.load(f)
    return answers


class PageFuzzTest(TokenFileCase):
    """/devices and /devices.json, in this process: 2,000 cases."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.rate_limits = None

    def test_pages_for_mutated_answers(self):
        browser, _ = self.login("alice")
        outcomes = {}
        failures = []
        for number, (endpoint, answer, what) in enumerate(
                fuzz.mutated_answers(FUZZ_SEED, ANSWER_CASES, real_answers())):
            self.fake.fail(endpoint, ("json", answer))
            path = "/devices.json" if number % 2 else "/devices"
            response = browser.get(self.url + path)
            self.fake.clear_faults()
            outcomes[path, response.status] = outcomes.get((path, response.status), 0) + 1
            if response.status not in (200, 502):
                failures.append("case %d, %s: %s -> %d" % (number, endpoint, what,
                                                          response.status))
        print("\nanswer fuzz: %d mutated real answers (seed %d): %s" % (
            ANSWER_CASES, FUZZ_SEED, ", ".join("%s %d: %d" % (p, s, n) for (p, s), n
                                               in sorted(outcomes.items()))))
        self.assertEqual(failures[:10], [])
        self.assertNotIn("internal error", self.log.text())
        self.assertNoTraceback()
        self.assertEqual(len(browser.get(self.url + "/devices.json").json()["devices"]), 73)



class OnceFuzzTest(TokenFileCase):
    """--once in a child process, from a saved login: 100 cases."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.rate_limits = None

    def test_once_for_mutated_answers(self):
        TokenFileCase.browser_login(self)
        statuses = {}
        failures = []
        for number, (endpoint, answer, what) in enumerate(
                fuzz.mutated_answers(FUZZ_SEED + 1, ONCE_CASES, real_answers())):
            self.fake.fail(endpoint, ("json", answer))
            status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                       "--json" if number % 2 else "--wait",
                                       *(() if number % 2 else ("30",))).finish()
            self.fake.clear_faults()
            statuses[status] = statuses.get(status, 0) + 1
            if status not in (0, 4, 5, 6) or "Traceback" in err:
                failures.append("case %d, %s: %s -> exit %d: %s" % (
                    number, endpoint, what, status, err[-300:]))
        print("\nanswer fuzz through --once: %d runs (seed %d): exit statuses %s" % (
            ONCE_CASES, FUZZ_SEED + 1, ", ".join("%d: %d" % kv
                                                for kv in sorted(statuses.items()))))
        self.assertEqual(failures[:5], [])
