"""Log in on a host that no browser can reach (issue 26): --paste prints Netatmo's
address, and reads back, on stdin, the address the browser ended at. Nothing listens.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import unittest
import urllib.parse

from tests.support import Browser, CLIENT_ID, CLIENT_SECRET, ROOT
from tests.test_terminal import TokenFileCase

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
REDIRECT_URI = "http://127.0.0.1:%d/authenticate"


def unused_port():
    """Return a port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PasteRun(object):
    """netatmo_stdlib --paste in a child process; the test pastes on its stdin."""

    def __init__(self, test, *args, **options):
        self.test = test
        mode = options.pop("mode", "--once")
        start = options.pop("start", [])
        port = options.pop("port", None) or unused_port()
        self.redirect_uri = REDIRECT_URI % port
        test.fake.register_redirect_uri(self.redirect_uri)
        self.process = subprocess.Popen(
            [sys.executable] + start + [PROGRAM, mode, "--paste", "--api-url", test.fake.url,
                                        "--redirect-uri", self.redirect_uri] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, encoding="utf-8",
            env=dict(os.environ, NETATMO_CLIENT_ID=CLIENT_ID,
                     NETATMO_CLIENT_SECRET=CLIENT_SECRET, PYTHONIOENCODING="utf-8",
                     **options))
        test.addCleanup(self.kill)
        self.said = []

    def consent_address(self):
        """Read stderr up to the question; return the consent address printed."""
        address = None
        while True:
            line = self.process.stderr.readline()
            self.test.assertTrue(line, "".join(self.said))
            self.said.append(line)
            if line.startswith("http"):
                address = line.strip()
            if "press Enter" in line:
                return address

    def ended_at(self, user="alice", address=None):
        """Follow the consent address as a browser does; return where it ends."""
        answer = Browser().get(address or self.consent_address(),
                               headers={"X-Fake-Approve": user})
        self.test.assertEqual(answer.status, 302, answer.text[:300])
        return answer.location

    def paste(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self):
        """Close stdin, wait; return (exit status, stdout, all stderr).

        Read through the pipes' own readers, not communicate(): it would lose what
        readline() has buffered already.
        """
        self.process.stdin.close()
        out, err = self.process.stdout.read(), self.process.stderr.read()
        return self.process.wait(60), out, "".join(self.said) + err

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class PasteLoginTest(TokenFileCase):
    """A whole login: the table, the JSON, a token, a token file a later run uses."""

    def test_the_table(self):
        run = PasteRun(self)
        run.paste(run.ended_at())
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 74)
        self.assertIn("that is expected", err)
        self.assertIn("Copy the whole address from its address bar", err)
        self.assertIn("worth nothing without this run's verifier", err)
        [token] = self.fake.token_requests("authorization_code")
        self.assertTrue(token.form["code_verifier"])  # the fake refuses a code without it

    def test_the_json_and_a_token_file_a_later_run_uses_without_a_login(self):
        run = PasteRun(self, "--json", "--token-file", self.path)
        run.paste(run.ended_at())
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        run = PasteRun(self, "--token-file", self.path, "--json")  # a good saved login
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertNotIn("open this address", err)  # nothing asked
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertEqual(len(self.fake.requests_to("/oauth2/authorize")), 1)

    def test_a_printed_token_without_pkce(self):
        run = PasteRun(self, "--no-pkce", mode="--print-token")
        address = run.consent_address()
        self.assertNotIn("code_challenge", address)
        run.paste(run.ended_at(address=address))
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertIn(out.strip(), dict(self.fake.issued))

    def test_the_trace_tells_it_with_the_code_and_state_hidden(self):
        run = PasteRun(self, "--trace")
        ended = run.ended_at()
        run.paste(ended)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        for step in ("(b) redirect to Netatmo", "(c) receive the code",
                     "(d) exchange it for a token", "(e) retrieve and output the devices"):
            self.assertIn(step, err)
        self.assertIn("-> printed for the person to open", err)
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(ended).query))
        self.assertNotIn(query["code"], err)
        self.assertEqual(err.count(query["state"]), 1)  # in the consent address only
        self.assertIn("pasted: code 32 characters, state 43 characters", err)


class NothingListensTest(TokenFileCase):
    """No socket is bound, not even for a moment; its only sockets call Netatmo."""

    def test_it_logs_in_while_another_program_holds_the_redirect_uris_port(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        run = PasteRun(self, port=holder.getsockname()[1])
        run.paste(run.ended_at())
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)

    @unittest.skipIf(sys.version_info < (3, 8), "audit hooks came with Python 3.8")
    def test_under_an_audit_hook_no_bind_and_every_socket_connects_to_the_fake(self):
        record = self.path + ".events"
        watch = ("import json, sys, runpy, atexit; seen = []; sys.addaudithook(lambda e, a: "
                 "seen.append([e, repr(a[1:])]) if e in ('socket.bind', 'socket.__new__', "
                 "'socket.connect') else None); atexit.register(lambda: open(%r, 'w').write("
                 "json.dumps(seen))); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                 "run_name='__main__')" % record)
        run = PasteRun(self, "--token-file", self.path, start=["-c", watch])
        run.paste(run.ended_at())
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        with open(record) as f:
            events = json.load(f)
        kinds = [e for e, _ in events]
        self.assertNotIn("socket.bind", kinds)
        self.assertGreaterEqual(kinds.count("socket.__new__"), 1)
        fake = repr((("127.0.0.1", self.fake.server.server_address[1]),))
        self.assertEqual(kinds.count("socket.__new__"), kinds.count("socket.connect"))
        self.assertEqual({args for e, args in events if e == "socket.connect"}, {fake})


class BadPasteTest(TokenFileCase):
    """Every answer a person can paste: its exit status, and what reached the fake."""

    def assertNoTokenPost(self):
        self.assertEqual(self.fake.token_requests(), [])

    def test_three_lines_that_are_not_this_logins_answer_then_exit_1(self):
        other = PasteRun(self)
        elsewhere = other.ended_at()  # another login's answer: another state
        other.kill()
        run = PasteRun(self)
        ended = run.ended_at()
        for text, said in (("hello", "that is not an address"),
                           (ended.split("?")[0], "that address holds no code and no error"),
                           (elsewhere, "that address is not from this login")):
            run.paste(text)
            line = run.process.stderr.readline()
            run.said.append(line)
            self.assertIn(said, line)
        status, out, err = run.finish()
        self.assertEqual((status, out), (1, ""), err)
        self.assertIn("3 pastes were not this login's answer", err)
        self.assertNoTokenPost()

    def test_a_wrong_paste_then_the_right_one(self):
        run = PasteRun(self, "--json")
        ended = run.ended_at()
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(ended).query))
        run.paste(ended.split("?")[0] + "?code=%s&state=%s" % (query["code"], "A" * 43))
        run.paste("  " + ended + "  ")  # as a terminal pastes it, with spaces around
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 1)

    def test_refusals(self):
        for user, extra, code, words in (
                ("deny", {}, 1, "You declined"),
                ("deny", {"refuse_without_state": True}, 1, "You declined"),
                ("alice", {"unregistered": True}, 2, "redirect_uri_mismatch")):
            with self.subTest(user=user, extra=extra):
                self.fake.refuse_without_state = extra.get("refuse_without_state", False)
                run = PasteRun(self)
                address = run.consent_address()
                if extra.get("unregistered"):
                    self.fake.redirect_uris.discard(run.redirect_uri)
                run.paste(run.ended_at(user, address))
                status, out, err = run.finish()
                self.assertEqual((status, out), (code, ""), err)
                self.assertIn(words, err)
        self.assertNoTokenPost()

    def test_a_code_netatmo_refuses_says_the_login_must_start_again(self):
        run = PasteRun(self)
        ended = run.ended_at()
        with self.fake.lock:
            self.fake.codes.clear()  # used, or expired
        run.paste(ended)
        status, out, err = run.finish()
        self.assertEqual((status, out), (1, ""), err)
        self.assertIn("Start a new login", err)

    def test_too_late_the_end_of_input_and_ctrl_c(self):
        run = PasteRun(self, "--wait", "0.5")
        run.consent_address()
        status = run.process.wait(30)
        self.assertEqual(status, 3)
        self.assertIn("no login was completed within 0.5 s", run.process.stderr.read())
        # A login's 10 minutes bound a longer --wait (here a login of 1 s).
        run = PasteRun(self, "--wait", "600", start=["-c", SHORT_LOGIN])
        run.consent_address()
        self.assertEqual(run.process.wait(30), 3)
        run = PasteRun(self)
        run.consent_address()
        status, out, err = run.finish()  # stdin closed: the input ended
        self.assertEqual((status, out), (1, ""), err)
        self.assertIn("no address was pasted", err)
        run = PasteRun(self)
        run.consent_address()
        run.process.send_signal(signal.SIGINT)
        status = run.process.wait(30)
        self.assertEqual(status, 130)
        self.assertEqual(run.process.stderr.read().strip(), "netatmo_stdlib: interrupted")
        self.assertNoTokenPost()

    def test_a_long_line_or_terminal_escapes_are_never_echoed(self):
        run = PasteRun(self)
        ended = run.ended_at()
        run.paste("x" * 20000)
        run.paste("http://h/authenticate?\x1b]0;pwned\x07=\x9b&code=c&state=" + "\x1b[2J")
        run.paste(ended)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertIn("that line is longer than 8 KB", err)
        self.assertNotRegex(err, "[\x1b\x07\x9b]")

    def test_the_wrong_mode_is_a_bad_setting(self):
        for args, words in ((["--paste"], "works with --once or --print-token only"),
                            (["--once", "--paste", "--open"], "--open"),
                            (["--once", "--paste", "--no-browser", "--token-file", self.path],
                             "--no-browser"),
                            (["--once", "--paste", "--port", "0"], "--redirect-uri")):
            with self.subTest(args=args):
                process = subprocess.run(
                    [sys.executable, PROGRAM] + args, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, universal_newlines=True, stdin=subprocess.DEVNULL,
                    env=dict(os.environ, NETATMO_CLIENT_ID="i", NETATMO_CLIENT_SECRET="s"))
                self.assertEqual(process.returncode, 2, process.stderr)
                self.assertEqual(len(process.stderr.strip().splitlines()), 1)
                self.assertIn(words, process.stderr)


# Start the program with a login that lasts 1 s, not 10 minutes.
SHORT_LOGIN = ("import os, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); "
               "import netatmo_stdlib; netatmo_stdlib.Logins.ttl = 1; "
               "sys.exit(netatmo_stdlib.main(sys.argv[2:]))")


class DemoPasteTest(unittest.TestCase):
    """make demo-paste: the same against the fake cloud, pasted as a person would."""

    def test_make_demo_paste(self):
        from tests.test_newcomer import free_port, shell_environment
        process = subprocess.Popen(
            ["make", "-s", "demo-paste", "DEMO_PORT=%d" % free_port(),
             "FAKE_PORT=%d" % free_port()], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            encoding="utf-8", env=shell_environment(PYTHONIOENCODING="utf-8"))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        address = None
        while True:
            line = process.stderr.readline()
            self.assertTrue(line)
            if line.startswith("http"):
                address = line.strip()
            if "press Enter" in line:
                break
        ended = Browser().get(address, headers={"X-Fake-Approve": "carol"}).location
        process.stdin.write(ended + "\n")
        process.stdin.close()
        out = process.stdout.read()
        process.stderr.read()
        self.assertEqual(process.wait(60), 0)
        self.assertEqual(len(out.splitlines()), 10)  # carol's 9 devices and the heading
