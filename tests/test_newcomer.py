"""A newcomer's first hour (issue 20): the terminal modes tried without an account, a
demo that looks alive and fails loudly, a table that fits the terminal, buttons that
say what they did, names told apart, and --help that says exactly what runs.
"""

import fcntl
import json
import os
import re
import shlex
import socket
import struct
import subprocess
import sys
import termios
import time
import unicodedata
import unittest

from tests.fake_netatmo import FakeNetatmo, READING_TIMES, times_of
from tests.support import AppTestCase, Browser, ROOT
from tests.test_cli import clean_environment, run
from tests.test_terminal import OnceRun, TokenFileCase

DEMO = os.path.join(ROOT, "tests", "demo.py")


def shell_environment(**settings):
    """Return the environment of a newcomer's shell: no NETATMO_* nor an outer make's."""
    env = clean_environment(**settings)
    for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"):
        env.pop(name, None)
    return env


def free_port():
    """Return a port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def columns_of(line):
    """Return the screen columns a line takes: wide characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def readme():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


class DemoTest(unittest.TestCase):
    """make demo and make demo-once, as a newcomer runs them."""

    def setUp(self):
        self.ports = {"DEMO_PORT": str(free_port()), "FAKE_PORT": str(free_port())}

    def make(self, target, **env):
        return subprocess.run(["make", "-s", target], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                              stdin=subprocess.DEVNULL,
                              env=shell_environment(**dict(self.ports, **env)))

    def test_a_port_in_use_stops_both_and_make_fails_with_the_reason(self):
        for taken, words in (("FAKE_PORT", "the fake Netatmo cannot listen on 127.0.0.1 "
                                           "port %s"),
                             ("DEMO_PORT", "cannot listen on 127.0.0.1 port %s")):
            for target in ("demo", "demo-once"):
                with self.subTest(taken=taken, target=target), socket.socket() as holder:
                    holder.bind(("127.0.0.1", int(self.ports[taken])))
                    holder.listen()
                    done = self.make(target)
                    self.assertNotEqual(done.returncode, 0)
                    self.assertIn(words % self.ports[taken], done.stderr)
                    self.assertIn("%s=" % taken, done.stderr)  # how to pass another port
                    self.assertNotIn("Traceback", done.stderr)
                    if taken == "DEMO_PORT":  # both stopped: the fake's port is free again
                        with socket.socket() as probe:
                            probe.bind(("127.0.0.1", int(self.ports["FAKE_PORT"])))

    def test_the_readme_terminal_section_works_as_pasted(self):
        section = readme().split("## In a terminal", 1)[1].split("\n## ", 1)[0]
        block = section.split("```sh\n", 1)[1].split("```", 1)[0]
        commands = [line.split("  #")[0].strip() for line in block.splitlines()
                    if line.startswith(("make demo-once", "python3 tests/demo.py"))]
        self.assertEqual(len(commands), 5, block)
        self.assertTrue(any("--json" in c for c in commands))
        self.assertTrue(any("--print-token" in c for c in commands))
        paths = {os.path.join(ROOT, word) for c in commands for word in shlex.split(c)
                 if word.endswith(".json")}
        self.assertEqual(paths, {os.path.join(ROOT, "tests", "output", "netatmo-demo.json")})
        for path in paths:
            self.addCleanup(lambda p=path: os.path.exists(p) and os.remove(p))
            if os.path.exists(path):
                os.remove(path)
        outputs = []
        for command in commands:
            with self.subTest(command=command):
                process = subprocess.Popen(
                    command, shell=True, cwd=ROOT, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, universal_newlines=True, encoding="utf-8",
                    stdin=subprocess.DEVNULL,
                    env=shell_environment(PYTHONIOENCODING="utf-8", **self.ports))
                self.addCleanup(lambda p=process: p.poll() is None and p.kill())
                if "--no-browser" not in command:  # a person opens the address printed
                    line = process.stderr.readline()
                    match = re.search(r"open (\S+) in a browser", line)
                    self.assertIsNotNone(match, line)
                    self.assertEqual(Browser().follow(match.group(1), approve_as="alice")[-1]
                                     .status, 200)
                out, err = process.communicate(timeout=60)
                self.assertEqual(process.returncode, 0, err)
                outputs.append(out)
        self.assertTrue(outputs[0].startswith("NAME"))  # make demo-once: the device table
        self.assertEqual(len(json.loads(outputs[1])["devices"]), 73)
        self.assertRegex(outputs[-1], r"^[0-9a-f]{24}\|[0-9a-f]{32}\n$")  # the token


class FakeTimesTest(unittest.TestCase):
    """The fake keeps its fixtures' times relative to now: the demo looks alive."""

    def test_the_newest_reading_is_minutes_old_and_the_gaps_are_kept(self):
        recorded = FakeNetatmo(recorded_times=True).users
        now = FakeNetatmo().users
        for user in ("alice", "carol", "dave"):
            with self.subTest(user=user):
                old = times_of(recorded[user], READING_TIMES)
                new = times_of(now[user], READING_TIMES)
                self.assertAlmostEqual(time.time() - max(new), 180, delta=5)
                offsets = {b - a for a, b in zip(old, new)}
                self.assertEqual(len(offsets), 1)  # one offset for the whole account
        homes = now["alice"]["/api/homesdata"]["homes"][0]
        self.assertGreater(homes["modules"][0]["setup_date"], 1.5e9)  # setup dates moved too

    def test_the_demo_page_reads_minutes_ago(self):
        fake = FakeNetatmo("c", "s")
        fake.start()
        self.addCleanup(fake.stop)
        import netatmo_stdlib
        import threading
        server = netatmo_stdlib.Server(netatmo_stdlib.Config("c", "s", port=0,
                                                             api_url=fake.url))
        fake.register_redirect_uri(server.config.redirect_uri)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = "http://127.0.0.1:%d/login" % server.server_address[1]
        page = Browser().follow(url, approve_as="dave")[-1].text
        self.assertIn("3 min ago", page)


class TableTest(TokenFileCase):
    """The --once table fits the terminal, counted in screen columns."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.users["zoe"] = {
            "/api/homesdata": {"homes": [{"id": "z1", "name": "Zoë's flat", "modules": [
                {"id": "70:ee:50:00:00:01", "type": "NAPlug", "name": "Küche ☃ 温度 relay"},
                {"id": "70:ee:50:00:00:02", "type": "NATherm1",
                 "name": "Cafe\u0301 Noe\u0308l thermostat"},
                {"id": "70:ee:50:00:00:03", "type": "NRV", "name": "温度温度温度温度 valve"}]}]},
            "/api/getstationsdata": {"devices": []},
            "/api/gethomecoachsdata": {"devices": []},
            "/api/homestatus": {"z1": {"home": {"id": "z1", "modules": [
                {"id": "70:ee:50:00:00:0%d" % i, "reachable": True, "rf_strength": 60,
                 "last_seen": int(time.time()) - 600} for i in (1, 2, 3)]}}}}
        TokenFileCase.browser_login(self)

    def table(self, *args, **env):
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   *args, **env).finish()
        self.assertEqual(status, 0, err)
        return out.splitlines()

    def login_as_zoe(self):
        os.remove(self.path)
        run = OnceRun(self, "--token-file", self.path)
        Browser().follow(run.wait_for_login_url(), approve_as="zoe")
        self.assertEqual(run.finish()[0], 0)

    def assertAligned(self, lines):
        """Every row's STATUS starts at the same screen column as its heading."""
        column = columns_of(lines[0][:lines[0].index("STATUS")])
        for line in lines[1:]:
            status = re.search(r"  (online|offline|unknown)", line)
            self.assertEqual(columns_of(line[:status.start() + 2]), column, line)

    def test_at_80_and_200_columns_with_wide_characters_and_combining_marks(self):
        self.login_as_zoe()
        for width in (80, 200, 40):
            with self.subTest(width=width):
                lines = self.table(COLUMNS=str(width))
                self.assertTrue(all(columns_of(line) <= width for line in lines), lines)
                self.assertAligned(lines)
                self.assertEqual(lines[0].split()[:2], ["NAME", "STATUS"])
        wide = self.table(COLUMNS="200")
        self.assertIn("ID", wide[0])
        self.assertIn("温度温度温度温度 valve", "\n".join(wide))
        narrow = self.table(COLUMNS="40")
        self.assertNotIn("ID", narrow[0].split())
        self.assertNotIn("HOME", narrow[0].split())

    def test_alice_at_80_columns_drops_id_and_home_first(self):
        lines = self.table(COLUMNS="80")
        self.assertTrue(all(columns_of(line) <= 80 for line in lines))
        self.assertEqual(lines[0].split(), ["NAME", "STATUS", "READINGS"])
        lines = self.table(COLUMNS="120")
        self.assertTrue(all(columns_of(line) <= 120 for line in lines))
        self.assertEqual(lines[0].split(), ["NAME", "STATUS", "BATTERY", "LAST", "SEEN",
                                            "READINGS"])
        self.assertAligned(lines)

    def test_piped_without_columns_or_with_wide_the_table_stays_whole(self):
        whole = ["NAME", "STATUS", "BATTERY", "LAST", "SEEN", "READINGS", "PRODUCT", "TYPE",
                 "ID", "HOME"]
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   environment=env).finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(out.splitlines()[0].split(), whole)
        self.assertGreater(max(len(line) for line in out.splitlines()), 150)
        self.assertEqual(self.table("--wide", COLUMNS="80")[0].split(), whole)

    @unittest.skipUnless(hasattr(os, "openpty"), "a terminal of our own needs a pty")
    def test_on_a_terminal_the_table_takes_its_width(self):
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "netatmo_stdlib.py"), "--once", "--port", "0",
             "--api-url", self.fake.url, "--token-file", self.path, "--no-browser"],
            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=dict(env, NETATMO_CLIENT_ID="test-client", NETATMO_CLIENT_SECRET="test-secret",
                     PYTHONIOENCODING="utf-8"))
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        self.assertEqual(process.wait(timeout=30), 0)
        lines = b"".join(chunks).decode("utf-8").replace("\r", "").splitlines()
        self.assertTrue(all(columns_of(line) <= 100 for line in lines))
        self.assertNotIn("ID", lines[0].split())


class ButtonsTest(TokenFileCase):
    """Every button says what it did, on the page that follows it."""

    def test_renew_fetch_again_and_log_out_say_what_they_did(self):
        browser, _ = self.login("alice")
        origin = {"Origin": self.url}
        hops = [browser.post(self.url + "/refresh", headers=origin)]
        page = browser.get(self.url + hops[0].location).text
        expires = self.server.sessions.sessions[browser.cookie()].tokens.expires_at
        self.assertRegex(page, r"Renewed at \d\d:\d\d UTC; valid until %s\."
                         % time.strftime("%H:%M UTC", time.gmtime(expires)))
        self.assertNotIn("Renewed at", browser.get(self.url + "/devices").text)  # once
        browser.post(self.url + "/devices", headers=origin)
        self.assertIn("Fetched just now from Netatmo.", browser.get(self.url + "/devices").text)
        browser.post(self.url + "/logout", headers=origin)
        home = browser.get(self.url + "/").text
        self.assertIn("Logged out of this browser. Its tokens are forgotten.", home)

    def test_log_out_says_the_saved_login_stays(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        browser.follow(url + server.login_path(), approve_as="alice")
        browser.post(url + "/logout", headers={"Origin": url})
        self.assertIn("Logged out of this browser. The saved login in --token-file stays",
                      browser.get(url + "/").text)


class SharedNamesTest(AppTestCase):
    """A name two devices share is told apart, in the summary and the problem lines."""

    def test_bedroom_the_home_coach_is_not_bedroom_the_indoor_module(self):
        browser, hops = self.login("alice")
        page = hops[-1].text
        self.assertIn("<strong>4 offline</strong>: Commande sans fil, Window Hall, Module, "
                      "Bedroom (Home Coach).", page)
        self.fake.serve_fixture("/api/homestatus", "home_status_error_and_data.json")
        page = browser.get(self.url + "/devices").text
        self.assertIn("Netatmo says Hall (Indoor Camera) does not answer", page)


class HelpTest(unittest.TestCase):
    """--help and the README say exactly what runs."""

    def test_help_says_which_flags_work_with_which_mode(self):
        status, out, _ = run(["--help"])
        self.assertEqual(status, 0)
        text = " ".join(out.split())
        for flag in ("--wait SECONDS with --once or --print-token",
                     "--no-browser with --once or --print-token",
                     "--token-file PATH save the tokens here"):
            self.assertIn(flag, text)
        self.assertIn("exit status of --once and --print-token: 0 done", text)
        self.assertIn("130 Ctrl-C", text)
        self.assertIn("make demo-once", text)

    def test_a_demo_says_nothing_is_registered(self):
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "netatmo_stdlib.py"), "--port", "0",
             "--api-url", "http://127.0.0.1:9"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, stdin=subprocess.DEVNULL,
            env=clean_environment(NETATMO_CLIENT_ID="i", NETATMO_CLIENT_SECRET="s"))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        process.stdout.readline()
        line = process.stdout.readline()
        self.assertNotIn("dev.netatmo.com", line)
        self.assertIn("--api-url is not Netatmo's: no app registration applies to it (a "
                      "test cloud, a demo); the redirect URI is http://127.0.0.1:", line)
        process.kill()
        process.communicate()

    def test_the_readme_names_every_demo_user(self):
        text = readme()
        for user in FakeNetatmo(recorded_times=True).users:
            self.assertIn("`%s`" % user, text)
