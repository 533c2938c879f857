"""On a bad day nothing is lost and nothing leaks (issue 17).

A lock that cannot be taken, a folder that turns read-only, hostile strings in every
answer, a refusal that was never the person's, another account's login, an answer of
the wrong shape, the errors a newcomer meets first, and a trace told in order.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import unittest
import urllib.parse

import netatmo_stdlib
from tests.fake_netatmo import TERMINAL_ATTACK, terminal_attack_account
from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET, ROOT
from tests.test_cli import clean_environment, run
from tests.test_terminal import OnceRun, TokenFileCase

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
# What may not reach a terminal: the C0 controls but the tab and the newline, DEL, C1.
DRIVES_A_TERMINAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def by_id_of(devices):
    """Return the devices of /devices.json by id."""
    return {d["id"]: d for d in devices}


def query_of(url):
    """Return the query parameters of a URL, one value each."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


class ExitStatusTest(unittest.TestCase):

    def test_help_and_readme_give_one_table_of_exit_statuses(self):
        status, out, _ = run(["--help"])
        self.assertEqual(status, 0)
        with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        for number, meaning in netatmo_stdlib.Exit.meanings:
            self.assertRegex(out, r"\n +%d  %s" % (number, re.escape(meaning.split()[0])))
            self.assertRegex(readme, r"\| %d \| " % number)
        self.assertEqual([n for n, _ in netatmo_stdlib.Exit.meanings],
                         [0, 1, 2, 3, 4, 5, 6, 130])


class LockTest(TokenFileCase):
    """No refresh outside the lock: the pair in the file stays alive."""

    def owner_login(self, server, user="alice", browser=None):
        """Log in from the owner's address; return the browser."""
        browser = browser or Browser()
        url = "http://127.0.0.1:%d" % server.server_address[1]
        hops = browser.follow(url + server.login_path(), approve_as=user)
        self.assertEqual(hops[-1].status, 200, hops[-1].text[:300])
        return browser

    def held(self):
        """Return a context manager holding PATH.lock, as another program would."""
        return netatmo_stdlib.FileLock(self.path + ".lock", 1)

    def assertFileAlive(self, saved):
        """The file holds saved, unchanged, and Netatmo still honours its refresh token."""
        self.assertEqual(self.saved(), saved)
        self.assertIn(saved["refresh_token"], self.fake.refresh_tokens)

    def test_a_lock_held_past_the_wait_answers_503_and_refreshes_nothing(self):
        server = self.start_app(token_file=self.path)
        server.config.token_file.lock_wait = 0.3
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = self.owner_login(server)
        saved = self.saved()
        self.fake.expire_access_tokens()  # three hours later
        with self.held():
            response = browser.get(url + "/devices")
            self.assertEqual(response.status, 503)
            self.assertEqual(response.headers["Retry-After"], "60")
            self.assertIn("Another program is renewing this login", response.text)
            self.assertEqual(browser.get(url + "/devices.json").json()["error"], "not_kept")
            renew = browser.post(url + "/refresh")
            self.assertEqual(renew.status, 503)
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertFileAlive(saved)
        self.assertEqual(browser.get(url + "/devices").status, 200)  # the lock is free
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        self.assertNoTraceback()

    def test_once_and_print_token_exit_6_when_the_lock_is_held(self):
        TokenFileCase.browser_login(self)
        self.expire_saved()
        saved = self.saved()
        with self.held():
            for mode in ("--once", "--print-token"):
                with self.subTest(mode=mode):
                    status, out, err = OnceRun(self, "--token-file", self.path,
                                               "--no-browser", mode=mode,
                                               lock_wait=0.3).finish()
                    self.assertEqual((status, out), (6, ""), err)
                    self.assertIn("another program is renewing this login", err)
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertFileAlive(saved)

    def test_a_login_whose_file_is_locked_gets_the_clear_page_and_the_file_lives(self):
        server = self.start_app(token_file=self.path)
        server.config.token_file.lock_wait = 0.3
        url = "http://127.0.0.1:%d" % server.server_address[1]
        self.owner_login(server)
        saved = self.saved()
        browser = Browser()
        with self.held():
            hops = browser.follow(url + server.login_path(), approve_as="carol")
        self.assertEqual(hops[-1].status, 503)
        self.assertEqual(hops[-1].headers["Retry-After"], "60")
        self.assertIn("Another program is renewing this login", hops[-1].text)
        self.assertIn('href="/devices"', hops[-1].text)  # this browser is logged in
        self.assertEqual(len(browser.get(url + "/devices.json").json()["devices"]), 9)
        self.assertFileAlive(saved)
        self.assertNoTraceback()

    def test_a_once_login_whose_file_is_locked_prints_the_devices_and_exits_6(self):
        with self.held():
            run_ = OnceRun(self, "--token-file", self.path, "--json", lock_wait=0.3)
            Browser().follow(run_.wait_for_login_url(), approve_as="alice")
            status, out, err = run_.finish()
        self.assertEqual(status, 6, err)
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertIn("another program is renewing this login", err)
        self.assertFalse(os.path.exists(self.path))

    def test_a_lock_file_that_is_a_symlink_or_another_users_is_refused_at_start(self):
        TokenFileCase.browser_login(self)
        victim = self.path + ".victim"
        with open(victim, "w") as f:
            f.write("precious")
        os.symlink(victim, self.path + ".lock.new")
        os.replace(self.path + ".lock.new", self.path + ".lock")
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertIn("the lock file %r is a symbolic link, refused on purpose"
                      % (self.path + ".lock"), err)
        self.assertEqual(len(err.strip().splitlines()), 1)
        if not (hasattr(os, "geteuid") and os.geteuid() == 0):
            return  # only root can give a file to another user
        os.unlink(self.path + ".lock")
        with open(self.path + ".lock", "w"):
            pass
        os.chown(self.path + ".lock", 65534, 65534)  # created first by another user
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertIn("belongs to another user; name a --token-file in a folder of your own",
                      err)
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")

    def test_a_lock_file_swapped_for_a_symlink_while_serving_gets_a_page_naming_it(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = self.owner_login(server)
        saved = self.saved()
        os.unlink(self.path + ".lock")
        os.symlink("/etc/passwd", self.path + ".lock")
        response = browser.post(url + "/refresh")
        self.assertEqual(response.status, 503)
        self.assertIn("is a symbolic link, refused on purpose", response.text)
        self.assertIn("netatmo-tokens.json.lock", response.text)
        self.assertIsNone(response.headers.get("Retry-After"))
        self.assertFileAlive(saved)

    def freeze(self, folder):
        """Make folder read-only for everyone, root too; undo it at cleanup."""
        if subprocess.call(["chattr", "+i", folder], stderr=subprocess.DEVNULL):
            self.skipTest("chattr +i is not available here")
        self.addCleanup(subprocess.call, ["chattr", "-i", folder])

    def test_a_folder_made_read_only_after_start_web(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = self.owner_login(server)
        self.freeze(os.path.dirname(self.path))
        self.assertEqual(browser.post(url + "/refresh").status, 303)
        self.assertEqual(browser.get(url + "/devices").status, 200)  # the new pair works
        self.assertIn("could not take the new pair", self.log.text())
        self.assertIn("the file now holds a used refresh token, and the next run that "
                      "reads it needs a login in the browser", self.log.text())
        # This session no longer writes the file: a second refresh says nothing more.
        self.assertEqual(browser.post(url + "/refresh").status, 303)
        self.assertEqual(self.log.text().count("could not take the new pair"), 1)

    def test_a_folder_made_read_only_after_start_once(self):
        TokenFileCase.browser_login(self)
        self.expire_saved()
        self.fake.refresh_gate = threading.Event()
        run_ = OnceRun(self, "--token-file", self.path, "--no-browser", "--json")
        self.assertTrue(self.fake.refresh_waiting.wait(30))  # started, and refreshing
        self.freeze(os.path.dirname(self.path))
        self.fake.refresh_gate.set()
        status, out, err = run_.finish()
        self.assertEqual(status, 6, err)
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertIn("the file now holds a used refresh token", err)
        self.assertIn("needs a login in the browser", err)


class TerminalAttackTest(AppTestCase):
    """Hostile strings in every answer: none of their control characters reach stderr."""

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.users["mallory"] = terminal_attack_account()
        self.fake.odd_scopes = ["read_" + TERMINAL_ATTACK]
        self.fake.rate_limits = None

    def assertClean(self, err):
        self.assertEqual(DRIVES_A_TERMINAL.findall(err), [], err[-2000:])

    def test_web_mode_and_trace(self):
        process = subprocess.Popen(
            [sys.executable, PROGRAM, "--port", "0", "--api-url", self.fake.url, "--trace",
             "--timeout", "2", "--cache-seconds", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, universal_newlines=True, encoding="utf-8",
            env=clean_environment(NETATMO_CLIENT_ID=CLIENT_ID,
                                  NETATMO_CLIENT_SECRET=CLIENT_SECRET))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        url = process.stdout.readline().split()[2]
        self.fake.register_redirect_uri(process.stdout.readline().split()[-1])
        browser = Browser()
        self.assertEqual(browser.follow(url + "login", approve_as="mallory")[-1].status, 200)
        self.fake.fail("/api/gethomecoachsdata", "bad_status_line", times=2)
        self.fake.fail("/api/getstationsdata", ("status", 500, {"error": {
            "code": 0, "message": "MongoError" + TERMINAL_ATTACK}}))
        self.assertIn(browser.get(url + "devices").status, (200, 502))
        self.assertEqual(browser.post(url + "refresh").status, 303)
        browser.get(url + "authenticate?error=x&error_description="
                    + urllib.parse.quote(TERMINAL_ATTACK))
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        self.assertClean(err)
        self.assertIn("\\x1b]52;c;cHduZWQ=\\x07\\x0d\\x9b31m", err)  # it came, escaped
        self.assertIn("gateway\\x1b]0;pwned", err)  # a module id under --trace
        self.assertIn("MongoError\\x1b", err)  # Netatmo's error message
        self.assertIn("failed: \\x1b]0;pwned", err)  # the status line that is not HTTP

    def test_once_a_refusal_with_a_hostile_description(self):
        self.fake.refusal_description = "no" + TERMINAL_ATTACK
        run_ = OnceRun(self, "--trace")
        Browser().follow(run_.wait_for_login_url(register=False), approve_as="alice")
        status, out, err = run_.finish()
        self.assertEqual((status, out), (2, ""))  # redirect_uri_mismatch, described
        self.assertClean(err)
        self.assertIn('It said: "no\\x1b]0;pwned', err)

    def test_once_and_print_token_for_the_hostile_account(self):
        for mode, extra in (("--once", ()), ("--once", ("--trace",)),
                            ("--print-token", ("--trace",))):
            with self.subTest(mode=mode, extra=extra):
                run_ = OnceRun(self, *extra, mode=mode)
                Browser().follow(run_.wait_for_login_url(), approve_as="mallory")
                status, out, err = run_.finish()
                self.assertEqual(status, 0, err)
                self.assertClean(err)
                if extra:
                    self.assertIn("scope read_station read_thermostat read_homecoach "
                                  "read_\\x1b]0;pwned", err)
        self.fake.fail("/api/homesdata", ("status", 500, {"error": {
            "code": 0, "message": "down" + TERMINAL_ATTACK}}))
        run_ = OnceRun(self)
        Browser().follow(run_.wait_for_login_url(), approve_as="mallory")
        status, out, err = run_.finish()
        self.assertClean(err)
        self.assertIn("down\\x1b]0;pwned", err)


class RefusalTest(AppTestCase):
    """A refusal ends a login only when it carries the login's state."""

    def begin(self, url=None, browser=None):
        """Start a login in a browser; return (browser, the state, the callback URL)."""
        browser = browser or Browser()
        authorize = browser.get(url or self.url + "/login").location
        return browser, query_of(authorize)["state"], authorize

    def test_with_the_state_the_login_ends(self):
        hops = Browser().follow(self.url + "/login", approve_as="deny")
        self.assertIn("state=", hops[-2].location)  # the fake sends it back by default
        self.assertEqual(hops[-1].status, 403)
        self.assertIn("You declined", hops[-1].text)
        self.assertNotIn("Cancel this login", hops[-1].text)
        self.assertIn("Max-Age=0", hops[-1].headers["Set-Cookie"])

    def test_without_the_state_the_person_decides(self):
        self.fake.refuse_without_state = True
        browser = Browser()
        hops = browser.follow(self.url + "/login", approve_as="deny")
        self.assertNotIn("state=", hops[-2].location)
        page = hops[-1]
        self.assertEqual(page.status, 403)
        self.assertIn("You declined", page.text)
        self.assertIn('<form method="post" action="/authenticate"><button type="submit">'
                      'Cancel this login</button></form>', page.text)
        self.assertIn('<a class="button" href="/login">Try again</a>', page.text)
        self.assertNotIn("Set-Cookie", page.headers)  # the login goes on
        cancel = browser.post(self.url + "/authenticate",
                              headers={"Origin": self.url})
        self.assertEqual(cancel.status, 200)
        self.assertIn("Login cancelled", cancel.text)
        self.assertIn("Max-Age=0", cancel.headers["Set-Cookie"])
        again = browser.post(self.url + "/authenticate", headers={"Origin": self.url})
        self.assertEqual(again.status, 400)  # nothing left to cancel

    def test_cancel_from_another_site_is_refused(self):
        browser, _, _ = self.begin()
        response = browser.post(self.url + "/authenticate",
                                headers={"Origin": "http://evil.example"})
        self.assertEqual(response.status, 403)

    def test_once_ends_only_with_the_state_or_the_persons_cancel(self):
        self.fake.refuse_without_state = True
        run_ = OnceRun(self)
        url = run_.wait_for_login_url()
        browser = Browser()
        hops = browser.follow(url, approve_as="deny")
        self.assertIn("Cancel this login", hops[-1].text)
        # The owner's key stays in the terminal (issue 24): the page says where it is.
        self.assertNotIn(url.split("k=", 1)[1], hops[-1].text)
        self.assertIn("open the address printed in the terminal", hops[-1].text)
        # Another site's link, with a made-up state: nothing ends.
        origin = url.split("/login")[0]
        self.assertEqual(browser.get(origin + "/authenticate?error=access_denied&state="
                                     + "A" * 43).status, 400)
        self.assertIsNone(run_.process.poll())
        cancel = browser.post(origin + "/authenticate", headers={"Origin": origin})
        self.assertEqual(cancel.status, 200)
        status, out, err = run_.finish()
        self.assertEqual((status, out), (1, ""))
        self.assertIn("Login cancelled", err)

    def test_once_a_refusal_without_state_then_a_login(self):
        self.fake.refuse_without_state = True
        run_ = OnceRun(self)
        url = run_.wait_for_login_url()
        browser = Browser()
        browser.follow(url, approve_as="deny")
        self.assertEqual(browser.follow(url, approve_as="alice")[-1].status, 200)
        status, out, err = run_.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 74)

    def test_the_trace_names_each_case(self):
        server = self.start_app(trace=True)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        lines = []
        server.trace.stream = Recorder(lines)
        browser, state, _ = self.begin(url + "/login")
        browser.get(url + "/authenticate?error=access_denied&state=" + "A" * 43)
        browser.get(url + "/authenticate?error=access_denied")
        browser.get(url + "/authenticate?error=access_denied&state=" + state)
        text = "".join(lines)
        self.assertIn("-> Netatmo's error=access_denied is not this login's answer (no login "
                      "cookie, or another state): refused, nothing ends", text)
        self.assertIn("-> Netatmo's error=access_denied came without a state: it may be "
                      "Netatmo's, or a link from another site; the person decides", text)
        self.assertIn("-> Netatmo's error=access_denied came with this login's state: the "
                      "login ends", text)


class Recorder(object):
    """A stream for the trace that keeps what is written, and can hold one write."""

    def __init__(self, lines, hold=None):
        self.lines = lines
        self.hold = hold  # (text that starts the write to hold, Event that releases it)
        self.holding = threading.Event()

    def write(self, text):
        if self.hold is not None and text.startswith(self.hold[0]):
            self.holding.set()
            self.hold[1].wait(30)
        self.lines.append(text)

    def flush(self):
        pass


class OwnerTest(TokenFileCase):
    """Only the login begun at the owner's address writes --token-file."""

    def test_another_accounts_login_leaves_the_owners_file_alone(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        alice = Browser()
        self.assertEqual(alice.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)
        alices = self.saved()
        bob = Browser()  # anyone who reaches the server, with an account of his own
        self.assertEqual(bob.follow(url + "/login", approve_as="bob")[-1].status, 200)
        self.assertEqual(bob.post(url + "/refresh").status, 303)
        self.assertEqual(self.saved(), alices)
        self.assertEqual(len(bob.get(url + "/devices.json").json()["devices"]), 6)
        # alice's cron job still prints alice's devices.
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   "--json").finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        # Her own new login, from the address printed at start, updates the file.
        self.assertEqual(Browser().follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)
        self.assertNotEqual(self.saved()["refresh_token"], alices["refresh_token"])
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)

    def test_the_owner_logs_in_again_after_the_login_died(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        browser.follow(url + server.login_path(), approve_as="alice")
        with self.fake.lock:  # another program used the refresh token: it is dead
            token = self.saved()["refresh_token"]
            self.fake.refresh_tokens.pop(token)
            self.fake.retired_refresh_tokens.add(token)
        self.fake.expire_access_tokens()
        self.assertEqual(browser.get(url + "/devices").status, 401)
        self.assertEqual(browser.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        status, _, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 0, err)

    def test_the_owners_address_is_printed_and_the_key_never_leaks(self):
        process = subprocess.Popen(
            [sys.executable, PROGRAM, "--port", "0", "--api-url", self.fake.url,
             "--token-file", self.path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, universal_newlines=True,
            env=clean_environment(NETATMO_CLIENT_ID=CLIENT_ID,
                                  NETATMO_CLIENT_SECRET=CLIENT_SECRET))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        home = process.stdout.readline().split()[2]
        self.fake.register_redirect_uri(process.stdout.readline().split()[-1])
        owner_line = process.stdout.readline()
        match = re.search(r"to save your login in (\S+) for scripts, log in from (\S+)$",
                          owner_line)
        self.assertIsNotNone(match, owner_line)
        self.assertEqual(match.group(1), self.path)
        owners = match.group(2)
        key = query_of(owners)["k"]
        self.assertGreaterEqual(len(key), 22)
        port = owners.split(":")[2].split("/")[0]
        seen = []
        stranger = Browser()
        for path in ("/", "/login", "/login?k=wrong", "/devices", "/authenticate?error=x",
                     "/authenticate?code=c&state=s", "/nowhere"):
            seen.append(stranger.get(home.rstrip("/") + path))
        seen += stranger.follow(home + "login", approve_as="deny")
        # The owner's address opened on another name of this host: no redirect with the key.
        wrong_host = Browser().get("http://localhost:%s/login?k=%s" % (port, key))
        self.assertEqual(wrong_host.status, 400)
        self.assertIn("Open the address printed in the terminal", wrong_host.text)
        seen.append(wrong_host)
        for response in seen:
            self.assertNotIn(key, response.text + str(response.headers), response.url)
        hops = Browser().follow(owners, approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        for response in hops:
            self.assertNotIn(key, (response.location or "") + response.text)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)


class AnyAnswerTest(TokenFileCase):
    """An answer from Netatmo of any shape gets a page or an exit status, never a 500."""

    def test_a_homestatus_body_that_is_a_list(self):
        browser, _ = self.login("alice")
        for path in ("/devices", "/devices.json"):
            with self.subTest(path=path):
                self.fake.fail("/api/homestatus", ("body", [1, 2]))
                response = browser.get(self.url + path)
                self.assertEqual(response.status, 200)
                self.assertIn("The status of home MYHOME is unknown", response.text)
        for endpoint in ("/api/homesdata", "/api/getstationsdata"):
            with self.subTest(endpoint=endpoint):  # a list of what looks like devices
                self.fake.fail(endpoint, ("body", [{"id": "x", "_id": "x", "type": "NRV"}]))
                response = browser.get(self.url + "/devices.json")
                self.assertEqual(response.status, 200)
                self.assertNotIn("x", by_id_of(response.json()["devices"]))
        self.assertNoTraceback()

    def test_once_with_a_homestatus_body_that_is_a_list(self):
        TokenFileCase.browser_login(self)
        self.fake.fail("/api/homestatus", ("body", [1, 2]))  # the saved-login path
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertIn("The status of home MYHOME is unknown", out)
        run_ = OnceRun(self)  # the browser path
        url = run_.wait_for_login_url()
        self.fake.fail("/api/homestatus", ("body", [1, 2]))
        self.assertEqual(Browser().follow(url, approve_as="alice")[-1].status, 200)
        status, out, err = run_.finish()
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)


class NewcomerErrorsTest(TokenFileCase):
    """The errors a newcomer meets first: one line each, and what to do."""

    def test_a_directory_as_token_file(self):
        os.mkdir(self.path)
        status, out, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("is not a regular file", err)

    def test_a_symlink_as_token_file(self):
        target = self.path + ".real"
        with open(target, "w") as f:
            f.write("{}")
        os.symlink(target, self.path)
        status, out, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("is a symbolic link, refused on purpose", err)

    def test_no_browser_without_token_file(self):
        for mode in ("--once", "--print-token"):
            status, out, err = run([mode, "--no-browser"], NETATMO_CLIENT_ID="i",
                                   NETATMO_CLIENT_SECRET="s")
            self.assertEqual(status, 2, err)
            self.assertIn("--no-browser needs --token-file", err)

    def test_an_unreachable_api_url_is_named(self):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]  # nothing listens there once closed
        server = self.start_app(api_url="http://127.0.0.1:%d" % port)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        authorize = browser.get(url + "/login").location
        state = query_of(authorize)["state"]
        response = browser.get(url + "/authenticate?code=c&state=" + state)
        self.assertEqual(response.status, 502)
        self.assertIn("Nothing answers at --api-url", response.text)
        self.assertIn("check --api-url or NETATMO_API_URL", response.text)
        self.assertNotIn("failing side is Netatmo", response.text)


class TraceOrderTest(AppTestCase):
    """A step's trace goes out before its answer: a reader of both sees them in order."""

    def assertTracedBeforeAnswer(self, server, browser, path, block):
        release = threading.Event()
        recorder = Recorder([], hold=(block, release))
        server.trace.stream = recorder
        answers = []
        thread = threading.Thread(target=lambda: answers.append(browser.get(path)))
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(release.set)
        self.assertTrue(recorder.holding.wait(10), block)
        thread.join(0.5)  # the answer must not come while the trace is held
        self.assertEqual(answers, [], "%s answered before its trace %r" % (path, block))
        release.set()
        thread.join(10)
        return answers[0]

    def test_login_callback_and_devices(self):
        server = self.start_app(trace=True)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        login = self.assertTracedBeforeAnswer(server, browser, url + "/login", "(b)")
        back = browser.get(login.location, headers={"X-Fake-Approve": "alice"}).location
        self.assertTracedBeforeAnswer(server, browser, back, "(d) exchange it for a token\n"
                                      "    POST")
        self.assertTracedBeforeAnswer(server, browser, url + "/devices", "(e) retrieve and "
                                      "output the devices\n    GET")

