"""The terminal mode (--once, --json, --token-file), HTTPS serving and --open."""

import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

from tests.fake_netatmo import TLS_CERT, TLS_KEY
from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET, ROOT

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")


def client_hello():
    """Return the bytes of a TLS ClientHello, as a browser starts a handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    handshake = context.wrap_bio(ssl.MemoryBIO(), outgoing)
    try:
        handshake.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


# Start the program with files capped at N bytes (writing more fails with EFBIG).
FILE_SIZE_CAP = ("import os, resource, sys; n = int(sys.argv.pop(1)); "
                 "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                 "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
# Start the program giving up on the token file's lock after N seconds, not 60.
LOCK_WAIT = ("import os, sys; wait = float(sys.argv.pop(1)); "
             "sys.path.insert(0, os.path.dirname(sys.argv[1])); import netatmo_stdlib; "
             "netatmo_stdlib.TokenFile.lock_wait = wait; "
             "sys.exit(netatmo_stdlib.main(sys.argv[2:]))")


class OnceRun(object):
    """netatmo_stdlib --once (or mode=...) in a child process, against the test's fake."""

    def __init__(self, test, *args, **env):
        self.test = test
        cap = env.pop("file_size_cap", None)
        wait = env.pop("lock_wait", None)
        mode = env.pop("mode", "--once")
        environment = dict(env.pop("environment", os.environ), NETATMO_CLIENT_ID=CLIENT_ID,
                           NETATMO_CLIENT_SECRET=CLIENT_SECRET, PYTHONIOENCODING="utf-8")
        environment.update(env)
        start = [sys.executable] + (["-c", FILE_SIZE_CAP, str(cap)] if cap else []) + (
            ["-c", LOCK_WAIT, str(wait)] if wait else [])
        self.process = subprocess.Popen(
            start + [PROGRAM, mode, "--port", "0", "--api-url", test.fake.url,
                     "--cache-seconds", "0"] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            universal_newlines=True, encoding="utf-8", env=environment)
        test.addCleanup(self.kill)

    def wait_for_login_url(self, register=True):
        """Read the two lines --once prints at start; return the URL to open."""
        first = self.process.stderr.readline()
        second = self.process.stderr.readline()
        match = re.search(r"open (\S+) in a browser", first)
        self.test.assertIsNotNone(match, first + second)
        if register:
            self.test.fake.register_redirect_uri(second.split()[-1])
        return match.group(1)

    def finish(self):
        """Wait for the end; return (exit status, stdout, the rest of stderr)."""
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class OnceTest(AppTestCase):

    def login_in_browser(self, run, user="alice"):
        url = run.wait_for_login_url()
        return Browser().follow(url, approve_as=user)

    def test_prints_the_devices_as_a_table_and_the_tab_says_so(self):
        run = OnceRun(self)
        hops = self.login_in_browser(run)
        self.assertEqual(hops[-1].status, 200)
        self.assertIn("The terminal has the list of your 73 devices", hops[-1].text)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "STATUS", "BATTERY", "LAST", "SEEN",
                                            "READINGS", "PRODUCT", "TYPE", "ID", "HOME"])
        self.assertEqual(len(lines), 74)
        column = lines[0].index("PRODUCT")
        self.assertTrue(any(line.startswith("Villa") and line[column:].startswith(
            "Weather Station") for line in lines))
        self.assertNotIn("Traceback", err)

    def test_the_table_says_status_battery_last_seen_and_readings(self):
        run = OnceRun(self)
        self.login_in_browser(run, "carol")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        lines = out.splitlines()
        self.assertEqual(len(lines), 1 + 9)  # one line per device
        header = lines[0]
        columns = {name: header.index(name) for name in (
            "STATUS", "BATTERY", "LAST SEEN", "READINGS", "PRODUCT")}
        [gauge] = [line for line in lines if line.startswith("Wind Gauge ")]
        cell = lambda name: gauge[columns[name]:].split("  ")[0]  # noqa: E731
        self.assertEqual(cell("STATUS"), "offline, battery very low")  # issue 25: both
        self.assertEqual(cell("BATTERY"), "very low (3 %)")
        self.assertRegex(cell("LAST SEEN"), r"^\d+ days ago$")
        [station] = [line for line in lines if line.startswith("MyStation ")]
        self.assertIn("24.6 \u00b0C \u00b7 36 % \u00b7 749 ppm", station)
        self.assertEqual(station[columns["STATUS"]:].split("  ")[0], "online")

    def test_json_output_is_the_same_as_devices_json(self):
        run = OnceRun(self, "--json")
        self.login_in_browser(run, "carol")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        answer = json.loads(out)
        self.assertEqual(set(answer), {"devices", "not_granted", "homes_without_status",
                                       "failed", "fetched_at"})
        self.assertEqual(len(answer["devices"]), 9)

    def test_device_names_cannot_drive_the_terminal(self):
        run = OnceRun(self)
        self.login_in_browser(run, "bob")
        status, out, _ = run.finish()
        self.assertEqual(status, 0)
        self.assertIn("Mystery??box", out)
        self.assertNotIn("\r", out)

    def test_declined_exits_1(self):
        run = OnceRun(self)
        hops = self.login_in_browser(run, "deny")
        self.assertEqual(hops[-1].status, 403)
        status, out, err = run.finish()
        self.assertEqual((status, out), (1, ""))
        self.assertIn("You declined", err)

    def test_wrong_secret_is_a_bad_setting_exit_2(self):
        self.fake.clients[CLIENT_ID] = "another"
        run = OnceRun(self)
        self.login_in_browser(run)
        status, _, err = run.finish()
        self.assertEqual(status, 2)
        self.assertIn("client id or client secret is wrong", err)

    def test_redirect_uri_mismatch_exit_2(self):
        run = OnceRun(self)
        url = run.wait_for_login_url(register=False)
        Browser().follow(url, approve_as="alice")
        status, _, err = run.finish()
        self.assertEqual(status, 2)
        self.assertIn("redirect_uri_mismatch", err)

    def test_no_login_within_wait_exits_3(self):
        run = OnceRun(self, "--wait", "0.5")
        run.wait_for_login_url()
        status, _, err = run.finish()
        self.assertEqual(status, 3)
        self.assertIn("no login was completed within 0.5 s", err)

    def test_netatmo_failing_exits_4(self):
        for kind in ("500_html", "rate_limit"):
            with self.subTest(kind=kind):
                self.fake.fail("/oauth2/token", kind)
                run = OnceRun(self)
                self.login_in_browser(run)
                status, _, err = run.finish()
                self.assertEqual(status, 4, err)
                self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_a_forged_callback_does_not_end_the_wait(self):
        run = OnceRun(self)
        url = run.wait_for_login_url()
        Browser().get(url.replace("/login", "/authenticate?code=x&state=y"))
        hops = Browser().follow(url, approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        self.assertEqual(run.finish()[0], 0)

    def test_a_refusal_without_the_login_cookie_does_not_end_the_run(self):
        run = OnceRun(self)
        url = run.wait_for_login_url()
        forged = Browser().get(url.split("/login")[0] + "/authenticate?error=access_denied")
        self.assertEqual(forged.status, 400)
        hops = Browser().follow(url, approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 74)

    def test_timeout_for_netatmo_by_flag_and_by_environment(self):
        for args, env in ((["--timeout", "0.5"], {}), ([], {"NETATMO_TIMEOUT": "0.5"})):
            with self.subTest(args=args, env=env):
                self.fake.fail("/oauth2/token", "hang")
                run = OnceRun(self, *args, **env)
                url = run.wait_for_login_url()
                started = time.time()
                Browser().follow(url, approve_as="alice")
                self.assertLess(time.time() - started, 2)
                status, _, err = run.finish()
                self.assertEqual(status, 4, err)
                self.assertIn("Netatmo did not answer within 0.5 seconds", err)

    def test_client_timeout_by_flag_and_by_environment(self):
        for args, env in ((["--client-timeout", "1"], {}),
                          ([], {"NETATMO_CLIENT_TIMEOUT": "1"})):
            with self.subTest(args=args, env=env):
                run = OnceRun(self, *args, **env)
                netloc = urllib.parse.urlsplit(run.wait_for_login_url()).netloc
                host, port = netloc.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as idle:
                    started = time.time()
                    self.assertEqual(idle.recv(100), b"")  # closed by the server
                    self.assertLess(time.time() - started, 3)
                run.kill()

    def test_ctrl_c_exits_130(self):
        run = OnceRun(self)
        run.wait_for_login_url()
        run.process.send_signal(signal.SIGINT)
        status, _, err = run.finish()
        self.assertEqual(status, 130)
        self.assertNotIn("Traceback", err)

    def test_only_the_printed_login_address_can_log_in(self):
        run = OnceRun(self)
        url = run.wait_for_login_url()
        key = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["k"][0]
        self.assertGreaterEqual(len(key), 22)  # at least 128 bits, base64
        origin = url.split("/login")[0]
        for other in (origin + "/login", origin + "/login?k=" + "A" * len(key),
                      origin + "/login?k=" + key + "&k=x"):
            with self.subTest(url=other):
                response = Browser().get(other)  # another user of this host, first
                self.assertEqual(response.status, 403)
                self.assertIn("Open the address printed in the terminal", response.text)
        self.assertEqual(self.fake.requests_to("/oauth2/authorize"), [])
        hops = Browser().follow(url, approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        self.assertEqual(run.finish()[0], 0)

    def test_terminal_flags_need_once(self):
        for flag in (["--json"], ["--wait", "5"], ["--no-browser"]):
            with self.subTest(flag=flag):
                process = subprocess.run(
                    [sys.executable, PROGRAM] + flag, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, universal_newlines=True,
                    env=dict(os.environ, NETATMO_CLIENT_ID="i", NETATMO_CLIENT_SECRET="s"))
                self.assertEqual(process.returncode, 2)
                self.assertIn("works with --once or --print-token only", process.stderr)


class TokenFileCase(AppTestCase):
    """A token file in a folder of its own, and a login saved to it."""

    def setUp(self):
        AppTestCase.setUp(self)
        folder = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", folder]))
        self.path = os.path.join(folder, "netatmo-tokens.json")

    def saved(self):
        with open(self.path) as f:
            return json.load(f)

    def expire_saved(self):
        """Let three hours pass: the saved access token has expired, here and at Netatmo."""
        self.fake.expire_access_tokens()
        tokens = dict(self.saved(), expires_at=int(time.time()) - 1)
        with open(self.path, "w") as f:
            json.dump(tokens, f)

    def browser_login(self, *args):
        run = OnceRun(self, "--token-file", self.path, *args)
        url = run.wait_for_login_url()
        Browser().follow(url, approve_as="alice")
        return run.finish()


class TokenFileTest(TokenFileCase):

    def test_login_writes_the_tokens_readable_by_the_owner_only(self):
        status, _, err = self.browser_login()
        self.assertEqual(status, 0, err)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        saved = self.saved()
        self.assertEqual(set(saved), {"access_token", "refresh_token", "expires_at", "scope"})
        self.assertIn(saved["refresh_token"], self.fake.refresh_tokens)
        self.assertGreater(saved["expires_at"], 1e9)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))),
                         ["netatmo-tokens.json", "netatmo-tokens.json.lock"])

    def test_second_run_refreshes_without_a_browser_and_saves_the_rotated_pair(self):
        self.browser_login()
        self.expire_saved()
        old = self.saved()["refresh_token"]
        run = OnceRun(self, "--token-file", self.path, "--json")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(err, "")  # no URL to open: no browser needed
        self.assertEqual(len(json.loads(out)["devices"]), 73)
        new = self.saved()["refresh_token"]
        self.assertNotEqual(new, old)
        self.assertIn(old, self.fake.retired_refresh_tokens)  # dead at Netatmo
        self.assertIn(new, self.fake.refresh_tokens)
        self.assertEqual(len(self.fake.requests_to("/oauth2/authorize")), 1)

    def test_rotated_pair_is_saved_before_the_device_calls_can_fail(self):
        self.browser_login()
        self.expire_saved()
        old = self.saved()["refresh_token"]
        for path in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
            self.fake.fail(path, "500_html")
        status, _, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual(status, 4, err)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        self.assertNotEqual(self.saved()["refresh_token"], old)

    def test_a_refreshed_pair_that_cannot_be_saved_is_said_and_the_devices_printed(self):
        self.browser_login()
        self.expire_saved()
        before = self.saved()
        # The folder takes new files, but not their content: a full disk, a quota.
        status, out, err = OnceRun(self, "--token-file", self.path, "--json",
                                   file_size_cap=64).finish()
        self.assertEqual(status, 6, err)
        self.assertEqual(len(json.loads(out)["devices"]), 73)  # fetched with the new pair
        self.assertIn("could not take the new pair", err)
        self.assertIn("the file now holds a used refresh token, and the next run that reads "
                      "it needs a login", err)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)
        self.assertEqual(self.saved(), before)

    def test_refresh_token_used_elsewhere(self):
        self.browser_login()
        self.expire_saved()
        with self.fake.lock:  # another program used it: Netatmo retired it
            token = self.saved()["refresh_token"]
            self.fake.refresh_tokens.pop(token)
            self.fake.retired_refresh_tokens.add(token)
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (1, ""))
        self.assertIn("expired or was used elsewhere", err)
        # Without --no-browser, it falls back to a login in the browser.
        run = OnceRun(self, "--token-file", self.path)
        self.assertIn("expired or was used elsewhere", run.process.stderr.readline())
        Browser().follow(run.wait_for_login_url(), approve_as="alice")
        self.assertEqual(run.finish()[0], 0)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)

    def test_no_saved_login_and_no_browser_exits_1(self):
        status, _, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 1)
        self.assertIn("no saved login", err)

    def assertRefused(self, content, mode, words):
        with open(self.path, "w") as f:
            f.write(content)
        os.chmod(self.path, mode)
        status, _, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual(status, 2, err)
        self.assertIn(words, err)
        with open(self.path) as f:
            self.assertEqual(f.read(), content)  # left as it was

    def test_corrupt_file_is_refused_and_kept(self):
        self.assertRefused('{"access_token": "x", "refr', 0o600, "corrupt")

    def test_someone_elses_file_is_not_overwritten(self):
        self.assertRefused("export PATH=/usr/bin\n", 0o600, "not a token file")
        self.assertRefused('{"name": "something else"}', 0o600, "not a token file")

    def test_file_readable_by_others_is_refused(self):
        content = json.dumps({"access_token": "a", "refresh_token": "r", "expires_at": 1,
                              "scope": []})
        self.assertRefused(content, 0o644, "chmod 600")

    def test_unreadable_or_unwritable(self):
        status, _, err = OnceRun(self, "--token-file", "/nonexistent/dir/t.json").finish()
        self.assertEqual(status, 2)
        self.assertIn("not writable", err)

    def test_a_fifo_at_the_path_is_refused_at_once(self):
        os.mkfifo(self.path, 0o600)
        started = time.time()
        status, _, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual(status, 2, err)
        self.assertIn("is not a regular file", err)
        self.assertLess(time.time() - started, 10)

    @unittest.skipUnless(hasattr(os, "geteuid") and os.geteuid() == 0,
                         "only root can give a file to another user")
    def test_another_users_file_is_refused_even_by_root(self):
        content = json.dumps({"access_token": "a", "refresh_token": "r", "expires_at": 1,
                              "scope": []})
        with open(self.path, "w") as f:
            f.write(content)
        os.chmod(self.path, 0o600)
        os.chown(self.path, 65534, 65534)
        status, _, err = OnceRun(self, "--token-file", self.path).finish()
        self.assertEqual(status, 2, err)
        self.assertIn("belongs to another user", err)
        self.assertEqual(self.fake.token_requests(), [])

    def test_content_of_any_wrong_type_exits_2(self):
        good = {"access_token": "a", "refresh_token": "r", "expires_at": 1, "scope": []}
        for field, value in (("scope", 5), ("scope", "read_station"), ("scope", [1]),
                             ("expires_at", "soon"), ("expires_at", True),
                             ("access_token", 7), ("refresh_token", {"r": 1})):
            with self.subTest(field=field, value=value):
                self.assertRefused(json.dumps(dict(good, **{field: value})), 0o600,
                                   "not a token file")
        self.assertRefused(json.dumps(good).replace("1,", "NaN,"), 0o600, "not a token file")
        self.assertRefused("[" * 100000, 0o600, "not a token file")

    def test_a_name_taken_in_the_folder_does_not_stop_the_save(self):
        os.mkdir(self.path + ".tmp")  # what a fixed temporary name would have met
        status, _, err = self.browser_login()
        self.assertEqual(status, 0, err)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))),
                         ["netatmo-tokens.json", "netatmo-tokens.json.lock",
                          "netatmo-tokens.json.tmp"])

    @unittest.skipIf(sys.version_info < (3, 8), "audit hooks came with Python 3.8")
    def test_the_folder_is_synced_after_the_rename(self):
        self.browser_login()
        self.expire_saved()
        record = self.path + ".events"
        watch = ("import json, sys, runpy, atexit; seen = []; sys.addaudithook(lambda e, a: "
                 "seen.append([e, str(a[0]), str(a[1])]) if e in ('os.rename', 'open') "
                 "else None); atexit.register(lambda: open(%r, 'w').write(json.dumps("
                 "list(seen)))); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
                 "run_name='__main__')" % record)
        process = subprocess.run(
            [sys.executable, "-c", watch, PROGRAM, "--once", "--port", "0", "--api-url",
             self.fake.url, "--token-file", self.path, "--no-browser"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True,
            env=dict(os.environ, NETATMO_CLIENT_ID=CLIENT_ID,
                     NETATMO_CLIENT_SECRET=CLIENT_SECRET), timeout=30)
        self.assertEqual(process.returncode, 0, process.stderr)
        with open(record) as f:
            events = json.load(f)
        renamed = [i for i, (e, _, target) in enumerate(events)
                   if e == "os.rename" and target == self.path]
        self.assertEqual(len(renamed), 1)
        folder = os.path.dirname(self.path)
        self.assertIn(["open", folder], [e[:2] for e in events[renamed[0]:]])

    def test_an_unwritable_folder_stops_the_run_before_any_refresh(self):
        self.browser_login()
        folder = os.path.dirname(self.path)
        if os.geteuid() == 0:  # root writes anywhere, but not into an immutable folder
            if subprocess.call(["chattr", "+i", folder], stderr=subprocess.DEVNULL):
                self.skipTest("chattr +i is not available here")
            self.addCleanup(subprocess.call, ["chattr", "-i", folder])
        else:
            os.chmod(folder, 0o500)
            self.addCleanup(os.chmod, folder, 0o700)
        before = self.saved()
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertIn("not writable", err)
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertEqual(self.saved(), before)

    def test_symlink_planted_at_the_temporary_name_is_not_followed(self):
        victim = self.path + ".victim"
        with open(victim, "w") as f:
            f.write("precious")
        os.symlink(victim, self.path + ".tmp")
        status, _, err = self.browser_login()
        self.assertEqual(status, 0, err)
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        self.assertFalse(os.path.islink(self.path))

    def test_web_mode_saves_at_login_and_after_each_refresh(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)  # the owner's address, printed at start
        first = self.saved()["refresh_token"]
        inode = os.stat(self.path).st_ino
        browser.post(url + "/refresh")
        self.assertNotEqual(self.saved()["refresh_token"], first)
        self.assertNotEqual(os.stat(self.path).st_ino, inode)  # replaced by a rename
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_the_owners_last_login_owns_the_file(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        older, newer = Browser(), Browser()
        owners = url + server.login_path()  # the owner's address, printed at start
        self.assertEqual(older.follow(owners, approve_as="alice")[-1].status, 200)
        self.assertEqual(newer.follow(owners, approve_as="carol")[-1].status, 200)
        carols = self.saved()
        self.assertEqual(older.post(url + "/refresh").status, 303)  # the older session
        self.assertEqual(self.saved(), carols)
        # ...refreshed its own pair: it did not take carol's from the file.
        self.assertEqual(len(older.get(url + "/devices.json").json()["devices"]), 73)
        self.assertEqual(newer.post(url + "/refresh").status, 303)
        self.assertNotEqual(self.saved()["refresh_token"], carols["refresh_token"])
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)


class HttpsTest(AppTestCase):

    def test_https_serving_with_a_secure_cookie(self):
        server = self.start_app(certfile=TLS_CERT, keyfile=TLS_KEY)
        self.assertTrue(server.config.redirect_uri.startswith("https://127.0.0.1:"))
        url = "https://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        hops = browser.follow(url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        self.assertIn("Villa", hops[-1].text)
        for header in browser.set_cookies:
            self.assertIn("Secure", [a.strip() for a in header.split(";")])

    def test_plain_http_to_the_https_port_is_told_to_use_https(self):
        server = self.start_app(certfile=TLS_CERT, keyfile=TLS_KEY)
        port = server.server_address[1]
        plain = Browser().get("http://127.0.0.1:%d/healthz" % port)
        self.assertEqual(plain.status, 400)
        self.assertEqual(plain.headers["Content-Type"], "text/plain; charset=utf-8")
        self.assertIn("open https://127.0.0.1:%d/ instead" % port, plain.text)
        https = Browser().get("https://127.0.0.1:%d/healthz" % port)
        self.assertEqual(https.status, 200)
        self.assertEqual(https.headers["Strict-Transport-Security"], "max-age=31536000")
        self.assertNoTraceback()

    def test_bad_certificate_files_are_a_bad_setting(self):
        process = subprocess.run(
            [sys.executable, PROGRAM, "--port", "0", "--certfile", TLS_KEY, "--keyfile",
             TLS_CERT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True,
            env=dict(os.environ, NETATMO_CLIENT_ID="i", NETATMO_CLIENT_SECRET="s"))
        self.assertEqual(process.returncode, 2)
        self.assertIn("--certfile", process.stderr)
        self.assertEqual(len(process.stderr.strip().splitlines()), 1)

    def test_a_silent_or_dribbling_tls_client_is_cut_off(self):
        server = self.start_app(certfile=TLS_CERT, keyfile=TLS_KEY, client_timeout=1.0)
        port = server.server_address[1]
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        dribbler = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(silent.close)
        self.addCleanup(dribbler.close)
        stop = threading.Event()
        hello = client_hello()

        def dribble():  # a real ClientHello, a byte every 0.4 s: no read ever times out
            for byte in hello:
                if stop.wait(0.4):
                    return
                try:
                    dribbler.sendall(bytes([byte]))
                except OSError:
                    return
        thread = threading.Thread(target=dribble)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(stop.set)
        started = time.time()
        for sock in (silent, dribbler):
            try:
                self.assertEqual(sock.recv(1024), b"")
            except ConnectionResetError:
                pass
        self.assertLess(time.time() - started, 5)
        self.assertEqual(Browser().get("https://127.0.0.1:%d/healthz" % port).status, 200)
        self.assertNoTraceback()


# A stand-in for the person's browser (BROWSER=...): it sends the test its argv and its
# environment over a socket, the test's readiness signal. No colon in it: webbrowser
# splits BROWSER at os.pathsep.
BROWSER_STUB = ("import json, os, socket, sys; s = socket.create_connection(('127.0.0.1', "
                "int(sys.argv[1])), timeout=30); s.sendall(json.dumps(dict(argv=sys.argv[slice"
                "(2, None)], environ=dict(os.environ))).encode()); s.close()")


class BrowserStub(object):
    """Listens for what the stub browser was given; use .environment() for OnceRun."""

    def __init__(self, test):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(30)
        test.addCleanup(self.listener.close)

    def command(self):
        """Return the BROWSER variable that runs the stub."""
        return '%s -c "%s" %d %%s' % (sys.executable, BROWSER_STUB,
                                       self.listener.getsockname()[1])

    def opened(self):
        """Wait for the stub; return (its argv, its environment)."""
        connection, _ = self.listener.accept()
        with connection:
            data = b""
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
        record = json.loads(data.decode())
        return record["argv"], record["environ"]


def redirect_target(argv):
    """Return the address the private page the browser was given sends it to."""
    parsed = urllib.parse.urlsplit(argv[0])
    assert parsed.scheme == "file", argv
    with open(urllib.parse.unquote(parsed.path), encoding="utf-8") as f:
        page = f.read()
    return re.search(r'http-equiv="refresh" content="0;url=([^"]+)"', page).group(1) \
        .replace("&amp;", "&")


class OpenTest(AppTestCase):

    def test_open_hands_the_browser_a_private_page_that_leads_to_the_address(self):
        home = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", home]))
        stub = BrowserStub(self)
        run = OnceRun(self, "--open", "--wait", "30", BROWSER=stub.command(), HOME=home)
        url = run.wait_for_login_url()
        argv, _ = stub.opened()
        # Not the address: its key would be in ps for every user of the host (issue 24).
        self.assertEqual(redirect_target(argv), url)
        self.assertNotIn(url.split("k=")[1], " ".join(argv))
        page = urllib.parse.unquote(urllib.parse.urlsplit(argv[0]).path)
        self.assertEqual(os.path.dirname(os.path.dirname(page)), home)  # not /tmp, not hidden
        self.assertEqual(stat.S_IMODE(os.stat(page).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(page)).st_mode), 0o700)
        Browser().follow(url, approve_as="alice")
        self.assertEqual(run.finish()[0], 0)
        self.assertEqual(os.listdir(home), [])  # the page is removed when the run ends
