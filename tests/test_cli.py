"""The command line, run as a person runs it: messages and exit statuses."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import unittest
import urllib.parse
import urllib.request

from tests.fake_netatmo import FakeNetatmo
from tests.support import ROOT, Browser

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
GOOD = {"NETATMO_CLIENT_ID": "an-id", "NETATMO_CLIENT_SECRET": "a-secret"}


def clean_environment(**settings):
    """Return os.environ without any NETATMO_* variable, plus settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETATMO_")}
    env.update(settings)
    return env


def run(args, **settings):
    """Run the program to its end; return (exit status, stdout, stderr)."""
    process = subprocess.run([sys.executable, PROGRAM] + args, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=30,
                             env=clean_environment(**settings), stdin=subprocess.DEVNULL)
    return process.returncode, process.stdout, process.stderr


class Started(object):
    """The program serving in a child process, until stopped with Ctrl-C."""

    def __init__(self, args, **settings):
        self.process = subprocess.Popen([sys.executable, PROGRAM] + args,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        universal_newlines=True, stdin=subprocess.DEVNULL,
                                        env=clean_environment(**settings))
        # The two lines printed at start are the readiness signal.
        self.open_line = self.process.stdout.readline()
        self.redirect_line = self.process.stdout.readline()

    def interrupt(self):
        """Send Ctrl-C; return (exit status, rest of stdout, stderr)."""
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err


class BadSettingsTest(unittest.TestCase):

    def assertBadSetting(self, args, words, **settings):
        status, out, err = run(args, **settings)
        self.assertEqual(status, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertNotIn("Traceback", err)
        for word in words:
            self.assertIn(word, err)

    def test_missing_client_id(self):
        self.assertBadSetting([], ["--client-id", "NETATMO_CLIENT_ID"],
                              NETATMO_CLIENT_SECRET="s")

    def test_missing_client_secret(self):
        self.assertBadSetting([], ["--client-secret-file", "NETATMO_CLIENT_SECRET"],
                              NETATMO_CLIENT_ID="i")

    def test_unreadable_secret_file(self):
        self.assertBadSetting(["--client-secret-file", "/nonexistent/secret"],
                              ["--client-secret-file", "/nonexistent/secret",
                               "No such file"], NETATMO_CLIENT_ID="i")

    def test_empty_secret_file(self):
        with tempfile.NamedTemporaryFile() as f:
            self.assertBadSetting(["--client-secret-file", f.name], ["is empty"],
                                  NETATMO_CLIENT_ID="i")

    def test_bad_port(self):
        for port in ("eighty", "70000", "-1"):
            with self.subTest(port=port):
                self.assertBadSetting(["--port", port], ["--port", "NETATMO_PORT"], **GOOD)
        self.assertBadSetting([], ["NETATMO_PORT", "x"], NETATMO_PORT="x", **GOOD)

    def test_malformed_urls(self):
        for flag, value in (("--api-url", "api.netatmo.com"), ("--api-url", "ftp://x"),
                            ("--redirect-uri", "localhost:8000/authenticate"),
                            ("--redirect-uri", "http://h:99999/authenticate"),
                            ("--redirect-uri", "http://127.0.0.1:8000/callback")):
            with self.subTest(flag=flag, value=value):
                self.assertBadSetting([flag, value], [flag], **GOOD)

    def test_bad_timeout_cache_and_scopes(self):
        self.assertBadSetting(["--timeout", "0"], ["--timeout"], **GOOD)
        self.assertBadSetting(["--cache-seconds", "-1"], ["--cache-seconds"], **GOOD)
        self.assertBadSetting([], ["NETATMO_CACHE_SECONDS"], NETATMO_CACHE_SECONDS="soon",
                              **GOOD)
        self.assertBadSetting(["--scopes", "read_station,<x>"], ["--scopes"], **GOOD)

    def test_client_secret_flag_does_not_exist_and_its_value_is_not_echoed(self):
        for args in (["--client-secret", "s3cr3t-value"], ["--client-secret=s3cr3t-value"],
                     ["--port", "0", "--client-secret=s3cr3t-value", "--no-such=s3cr3t-value"]):
            with self.subTest(args=args):
                status, _, err = run(args, **GOOD)
                self.assertEqual(status, 2)
                # What to use instead (issue 25), and never the value.
                self.assertIn("there is no --client-secret flag", err)
                self.assertIn("NETATMO_CLIENT_SECRET", err)
                self.assertIn("--client-secret-file", err)
                self.assertNotIn("s3cr3t-value", err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)
        status, _, err = run(["--wait-for=s3cr3t-value"], **GOOD)
        self.assertEqual(status, 2)
        self.assertIn("unknown flag --wait-for (see --help)", err)
        self.assertNotIn("s3cr3t-value", err)

    def test_port_already_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = str(taken.getsockname()[1])
            self.assertBadSetting(["--port", port], ["--port", port], **GOOD)


class StartTest(unittest.TestCase):

    def test_prints_where_to_go_serves_and_stops_on_ctrl_c(self):
        started = Started(["--port", "0"], **GOOD)
        self.assertRegex(started.open_line, r"open http://127\.0\.0\.1:\d+/ in a browser")
        url = started.open_line.split()[2]
        self.assertIn("dev.netatmo.com", started.redirect_line)
        self.assertIn(url + "authenticate", started.redirect_line)
        with urllib.request.urlopen(url + "healthz", timeout=10) as response:
            self.assertEqual(response.read(), b"ok\n")
        status, out, err = started.interrupt()
        self.assertEqual(status, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertIn('"GET /healthz" 200', err)

    def test_old_app_id_variable_and_secret_file(self):
        fake = FakeNetatmo("old-name", "from-a-file")  # Netatmo takes the exact secret
        fake.start()
        self.addCleanup(fake.stop)
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("from-a-file\n")  # as an editor saves it: with a newline
            f.flush()
            started = Started(["--port", "0", "--client-secret-file", f.name,
                               "--api-url", fake.url], NETATMO_APP_ID="old-name")
            fake.register_redirect_uri(started.redirect_line.split()[-1])
            hops = Browser().follow(started.open_line.split()[2] + "login",
                                    approve_as="alice")
            status, _, err = started.interrupt()
        self.assertIn("open http://", started.open_line)
        self.assertEqual(status, 0, err)
        self.assertEqual(hops[-1].status, 200, hops[-1].text[:300])
        [token] = fake.token_requests("authorization_code")
        self.assertEqual((token.form["client_id"], token.form["client_secret"]),
                         ("old-name", "from-a-file"))

    def test_wildcard_host_gives_a_localhost_redirect_uri(self):
        started = Started(["--host", "0.0.0.0", "--port", "0"], **GOOD)
        started.interrupt()
        self.assertRegex(started.redirect_line, r"http://localhost:\d+/authenticate$")
        self.assertRegex(started.open_line, r"http://localhost:\d+/")

    def test_settings_from_the_environment(self):
        started = Started([], NETATMO_PORT="0", NETATMO_REDIRECT_URI="http://box.lan:8000/authenticate",
                          **GOOD)
        started.interrupt()
        self.assertIn("is http://box.lan:8000/authenticate", started.redirect_line)

    def test_flag_wins_over_environment(self):
        started = Started(["--redirect-uri", "http://flag.lan/authenticate", "--port", "0"],
                          NETATMO_REDIRECT_URI="http://env.lan/authenticate", **GOOD)
        started.interrupt()
        self.assertIn("is http://flag.lan/authenticate", started.redirect_line)

    def test_pkce_is_on_unless_turned_off_by_flag_or_environment(self):
        for args, settings, sent in (([], {}, True), (["--no-pkce"], {}, False),
                                     ([], {"NETATMO_PKCE": "0"}, False)):
            with self.subTest(args=args, settings=settings):
                started = Started(["--port", "0"] + args, **dict(GOOD, **settings))
                url = started.open_line.split()[2]
                connection = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc,
                                                        timeout=10)
                connection.request("GET", "/login")
                location = connection.getresponse().getheader("Location")
                connection.close()
                started.interrupt()
                self.assertEqual("code_challenge=" in location, sent, location)
                self.assertIn("state=", location)

    def test_help_and_version(self):
        status, out, _ = run(["--help"])
        self.assertEqual(status, 0)
        for flag in ("--client-id", "--client-secret-file", "--host", "--port",
                     "--redirect-uri", "--scopes", "--api-url", "--timeout", "--cache-seconds"):
            self.assertIn(flag, out)
        status, out, _ = run(["--version"])
        self.assertEqual(status, 0)
        self.assertIn("1.0", out)

    def test_start_up_does_not_import_what_only_netatmo_calls_need(self):
        code = ("import sys; sys.path.insert(0, %r); import netatmo_stdlib; "
                "print(sorted(m for m in ('urllib.request', 'urllib.error') "
                "if m in sys.modules))" % ROOT)
        out = subprocess.check_output([sys.executable, "-S", "-c", code],
                                      universal_newlines=True)
        self.assertEqual(out.strip(), "[]")
