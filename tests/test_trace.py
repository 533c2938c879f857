"""--trace: the OAuth2 flow told step by step on stderr, with every secret hidden."""

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET, ROOT
from tests.test_terminal import OnceRun

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
STEPS = ["(a) receive the authorization request", "(b) redirect to Netatmo",
         "(c) receive the code", "(d) exchange it for a token",
         "(e) retrieve and output the devices"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (.*)$")


class TraceTest(AppTestCase):

    def run_app(self, *args, **env):
        """Start the program with args, log in, use it as a person does; return stderr."""
        process = subprocess.Popen(
            [sys.executable, PROGRAM, "--port", "0", "--api-url", self.fake.url,
             "--cache-seconds", "30"] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            universal_newlines=True, encoding="utf-8",
            env=dict(os.environ, NETATMO_CLIENT_ID=CLIENT_ID,
                     NETATMO_CLIENT_SECRET=CLIENT_SECRET, **env))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        url = process.stdout.readline().split()[2]
        self.fake.register_redirect_uri(process.stdout.readline().split()[-1])
        browser = Browser()
        self.assertEqual(browser.follow(url + "login", approve_as="alice")[-1].status, 200)
        self.assertEqual(browser.get(url + "devices").status, 200)  # from the cache
        self.assertEqual(browser.post(url + "refresh").status, 303)
        self.assertEqual(Browser().get(url + "authenticate?code=forged&state=x").status, 400)
        self.session_id = browser.cookie()
        self.cookies = browser.set_cookies
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        return err

    def test_a_login_and_a_page_are_told_step_by_step_in_order(self):
        err = self.run_app("--trace")
        positions = [err.find(step) for step in STEPS]
        self.assertNotIn(-1, positions, err)
        self.assertEqual(positions, sorted(positions))
        blocks = blocks_of(err)
        [authorize] = [b for b in blocks if b.startswith(STEPS[1])]
        self.assertIn("-> 302 Location: %s/oauth2/authorize" % self.fake.url, authorize)
        self.assertIn("state: 43 characters; code_challenge: 43 characters", authorize)
        [exchange] = [b for b in blocks if "grant_type=authorization_code" in b]
        self.assertIn("POST %s/oauth2/token" % self.fake.url, exchange)
        self.assertIn("code: 32 characters", exchange)
        self.assertRegex(exchange, r"-> 200 in \d+ ms: access token \(57 characters\) "
                                   r"valid 3 h, scope read_station read_thermostat")
        fetches = [b for b in blocks if b.startswith(STEPS[4])]
        for endpoint, summary in (("homesdata", "2 homes, 51 modules"),
                                  ("getstationsdata", "7 stations, 17 modules"),
                                  ("gethomecoachsdata", "5 home coaches"),
                                  ("homestatus?home_id=91763b24c43d3e344f424e8b",
                                   "the status of 46 modules and 4 rooms")):
            [block] = [b for b in fetches if "/api/%s\n" % endpoint in b]
            self.assertIn(summary, block)
        self.assertTrue(any("from this session's cache" in b for b in fetches))
        self.assertTrue(all("    why: " in b for b in blocks))

    def test_a_refresh_and_a_rejected_callback_are_told_too(self):
        blocks = blocks_of(self.run_app("--trace"))
        [refresh] = [b for b in blocks if "grant_type=refresh_token" in b]
        self.assertTrue(refresh.startswith(STEPS[3]))
        self.assertIn("refresh_token: 57 characters", refresh)
        self.assertIn("Netatmo rotates the pair", refresh)
        [forged] = [b for b in blocks if "code 6 characters" in b]
        self.assertTrue(forged.startswith(STEPS[2]))
        self.assertIn("login cookie: missing", forged)
        self.assertIn("-> refused: 400, and nothing sent to Netatmo", forged)

    def test_no_secret_appears_in_the_trace(self):
        err = self.run_app("--trace")
        cookies = set()
        for header in self.cookies:
            value = header.split(";", 1)[0].split("=", 1)[1]
            cookies.add(value)
            cookies.update(part for part in value.split(".") if not part.isdigit())
        cookies.discard("")
        self.assertIn(self.session_id, cookies)
        for secret in self.fake.every_secret() | cookies:
            for part in secret.split("|"):
                self.assertNotIn(part, err)

    def test_without_trace_the_log_is_as_before(self):
        traced = self.run_app(NETATMO_TRACE="1")  # the environment's way to ask for it
        self.assertIn(STEPS[0], traced)
        plain = self.run_app()
        self.assertNotIn(STEPS[0], plain)
        self.assertNotIn("why:", plain)
        self.assertIn('"GET /authenticate" 303', plain)
        # The log is the same, but for the calls to Netatmo, which the trace tells.
        calls = collections.Counter({line: n for line, n in self.log_lines(plain).items()
                                     if line.startswith("netatmo ")})
        self.assertGreaterEqual(sum(calls.values()), 5)
        self.assertEqual(self.log_lines(plain) - calls, self.log_lines(traced))

    def test_the_terminal_modes_keep_stdout_clean(self):
        run = OnceRun(self, "--json", "--trace")
        Browser().follow(run.wait_for_login_url(), approve_as="carol")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(json.loads(out)["devices"]), 9)  # nothing else on stdout
        self.assertIn(STEPS[4], err)
        run = OnceRun(self, "--trace", mode="--print-token")
        Browser().follow(run.wait_for_login_url(), approve_as="carol")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 1)
        self.assertIn(out.strip(), self.fake.access_tokens)
        self.assertIn(STEPS[3], err)
        self.assertNotIn(out.strip().split("|")[1], err)

    def test_one_heading_per_step_and_per_call_and_one_why_per_page(self):
        err = self.run_app("--trace")
        blocks = blocks_of(err)
        # Step (d) of the login: the POST and the session cookie, under one heading.
        [login] = [b for b in blocks if "grant_type=authorization_code" in b]
        self.assertIn("-> Set-Cookie: netatmo_session=<a new random session id", login)
        self.assertEqual(sum(1 for b in blocks if b.startswith(STEPS[3])
                             and "Set-Cookie" in b), 1)
        # Step (e): one block per page, each call in it once, and one why for them all.
        pages = [b for b in blocks if b.startswith(STEPS[4])]
        self.assertEqual(len(pages), 2)  # the page after the login, then the cached one
        first = pages[0]
        for endpoint in ("homesdata", "getstationsdata", "gethomecoachsdata", "homestatus"):
            self.assertEqual(first.count("/api/%s" % endpoint), 1, first)
            self.assertEqual(err.count("/api/%s" % endpoint), 1)  # no log line beside it
        self.assertEqual(first.count("why: "), 1)
        self.assertEqual(first.count("the access token travels in the Authorization "
                                     "header"), 1)
        self.assertNotIn("netatmo GET", err)
        self.assertNotIn("netatmo POST", err)
        self.assertEqual(err.count("why: "), len(blocks))

    def test_print_token_tells_what_it_did_with_the_saved_login(self):
        run = OnceRun(self, "--token-file", self.token_file(), mode="--print-token")
        Browser().follow(run.wait_for_login_url(), approve_as="carol")
        self.assertEqual(run.finish()[0], 0)
        run = OnceRun(self, "--token-file", self.path, "--no-browser", "--trace",
                      mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        [block] = blocks_of(err)
        self.assertIn("-> used as it is: no call", block)
        self.assertNotIn("POST", block)
        with open(self.path) as f:
            saved = json.load(f)
        saved["expires_at"] = 1  # long expired
        with open(self.path, "w") as f:
            json.dump(saved, f)
        run = OnceRun(self, "--token-file", self.path, "--no-browser", "--trace",
                      mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        [block] = blocks_of(err)  # the refresh and what it did with the file: one block
        self.assertIn("grant_type=refresh_token", block)
        self.assertIn("-> refreshed, under the file's lock (above)", block)
        self.assertNotIn("used as it is", block)

    def token_file(self):
        """Return the path of a token file in a folder of its own."""
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        self.path = os.path.join(folder, "tokens.json")
        return self.path

    def log_lines(self, err):
        """Return the log's lines, their times and durations taken out."""
        lines = []
        for line in err.splitlines():
            match = LOG_LINE.match(line)
            if match:
                lines.append(re.sub(r" in \d+ ms$", "", match.group(1)))
        return collections.Counter(lines)


def blocks_of(err):
    """Return the trace's blocks: each from its "(x) step" line to its "why" line."""
    blocks, current = [], None
    for line in err.splitlines():
        if re.match(r"^\([a-e]\) ", line):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith("    why: "):
                blocks.append("\n".join(current) + "\n")
                current = None
    return blocks
