"""Nothing crosses from one person to another (issue 24): the security review's faults.

An answer carries only the cookies of its own request; the owner's key stays in the
terminal; --open gives nothing away to other users of the host; the settings a
locked-down site expects; any string from Netatmo is safe to show; and the review's
smaller faults.
"""

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

from tests.fake_netatmo import TLS_CERT, TLS_KEY
from tests.support import AppTestCase, Browser, CLIENT_SECRET
from tests.test_cli import GOOD, Started, run
from tests.test_terminal import BrowserStub, OnceRun, TokenFileCase, redirect_target


class RawConnection(object):
    """One kept-alive connection to the app, speaking raw bytes, as a reverse proxy does."""

    def __init__(self, port):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def close(self):
        self.reader.close()
        self.sock.close()

    def exchange(self, data):
        """Send data; return (status, [(header, value)], body) of the one answer."""
        self.sock.sendall(data)
        status_line = self.reader.readline()
        if not status_line:
            return None, [], b""
        headers = []
        while True:
            line = self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        length = int(dict((n.lower(), v) for n, v in headers).get("content-length", 0))
        return int(status_line.split()[1]), headers, self.reader.read(length)

    def get(self, target, cookie=None):
        """GET target on this connection; return the answer."""
        return self.exchange(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (
            target.encode(), self.port, b"Cookie: %s\r\n" % cookie.encode() if cookie
            else b""))


def set_cookies(headers):
    """Return the Set-Cookie values of an answer's headers."""
    return [value for name, value in headers if name.lower() == "set-cookie"]


class OwnCookiesTest(AppTestCase):
    """1. An answer carries only the cookies of its own request (high)."""

    def app_settings(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.remove(os.path.join(folder, f))
                                 for f in os.listdir(folder)] and os.rmdir(folder))
        return {"token_file": os.path.join(folder, "tokens.json")}

    # Requests that http.server refuses itself, and those our handler refuses; all
    # but the last two close the connection after their answer.
    REFUSALS = [
        (431, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-%d: y\r\n" % i for i in range(60)) + b"\r\n"),
        (400, b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n"),
        (414, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        (505, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
        (413, b"POST /devices HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"),
        (411, b"POST /devices HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (404, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"),
        (405, b"DELETE /devices HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]

    def callback(self, connection):
        """Send, on connection, a callback that logs a browser in; return its answer."""
        browser = Browser()
        authorize = browser.get(self.url + "/login").location
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        target = back.split(str(self.server.server_address[1]), 1)[1]
        cookie = "; ".join("%s=%s" % kv for kv in browser.cookies["127.0.0.1"].items())
        return connection.get(target, cookie)

    def openers(self):
        """Return (name, function of a connection) of requests that set cookies."""
        owners = self.server.login_path()
        return [("the callback", self.callback),
                ("/login", lambda c: c.get("/login")),
                ("an owner's /login?k=", lambda c: c.get(owners))]

    def test_a_refused_request_never_carries_the_cookies_of_the_one_before(self):
        for opener_name, opener in self.openers():
            for status, refused in self.REFUSALS:
                with self.subTest(opener=opener_name, refusal=status):
                    connection = RawConnection(self.server.server_address[1])
                    self.addCleanup(connection.close)
                    first, headers, _ = opener(connection)
                    self.assertIn(first, (302, 303))
                    self.assertTrue(set_cookies(headers))
                    answer, headers, _ = connection.exchange(refused)
                    self.assertEqual(answer, status)
                    self.assertEqual(set_cookies(headers), [])
                    if status not in (404, 405):
                        continue
                    # The connection stays open: a good request carries its own only.
                    answer, headers, _ = connection.get("/healthz")
                    self.assertEqual((answer, set_cookies(headers)), (200, []))
                    answer, headers, _ = connection.get("/login")
                    self.assertEqual(answer, 302)
                    [cookie] = set_cookies(headers)
                    self.assertTrue(cookie.startswith("netatmo_login="), cookie)
        self.assertNoTraceback()


class OpenBrowserTest(TokenFileCase):
    """3. --open gives nothing away to other users of the host (medium)."""

    def test_the_browser_gets_neither_the_key_nor_the_client_secret(self):
        home = tempfile.mkdtemp()
        os.chmod(home, 0o755)  # as many home folders are: others may look in
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", home]))
        stub = BrowserStub(self)
        run = OnceRun(self, "--open", "--token-file", self.path, BROWSER=stub.command(),
                      HOME=home)
        url = run.wait_for_login_url()
        key = url.split("k=")[1]
        argv, environ = stub.opened()
        self.assertNotIn(key, " ".join(argv))
        self.assertNotIn("NETATMO_CLIENT_SECRET", environ)
        self.assertNotIn(CLIENT_SECRET, json.dumps(environ))
        # Another user of the host reads argv in ps: first, and with all it gives.
        page = urllib.parse.unquote(urllib.parse.urlsplit(argv[0]).path)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            other = subprocess.run(
                [sys.executable, "-c", "import os, sys; os.setgid(65534); os.setuid(65534); "
                 "open(sys.argv[1]).read()", page], stderr=subprocess.PIPE,
                universal_newlines=True)
            self.assertIn("PermissionError", other.stderr)
        origin = url.split("/login")[0]
        stranger = Browser()
        for target in [origin + "/login"] + [origin + "/login?k=" + word for word in
                                             re.split(r"[/?&=]", argv[0]) if word]:
            self.assertEqual(stranger.follow(target, approve_as="bob")[-1].status, 403)
        self.assertEqual(self.fake.requests_to("/oauth2/authorize"), [])
        self.assertFalse(os.path.exists(self.path))
        # The person's browser reads the page, and its login works.
        hops = Browser().follow(redirect_target(argv), approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)


class SettingsTest(TokenFileCase):
    """4. Settings a locked-down site expects (medium)."""

    def test_host_and_port_are_netatmo_host_and_netatmo_port(self):
        # tcsh exports HOST as the machine's name: it must not move the server.
        started = Started(["--port", "0"], HOST="0.0.0.0", PORT="1", **GOOD)
        started.interrupt()
        self.assertRegex(started.open_line, r"open http://127\.0\.0\.1:\d+/ in a browser")
        started = Started([], NETATMO_HOST="127.0.0.1", NETATMO_PORT="0", **GOOD)
        started.interrupt()
        self.assertRegex(started.open_line, r"open http://127\.0\.0\.1:\d+/ in a browser")
        status, _, err = run([], NETATMO_PORT="x", **GOOD)
        self.assertEqual(status, 2)
        self.assertIn("NETATMO_PORT", err)

    def start_lines(self, args, **settings):
        """Return what the web app prints at start."""
        started = Started(args, **dict(GOOD, **settings))
        url = started.open_line.split()[2]
        with urllib.request.urlopen(url + "healthz", timeout=10, context=ssl.create_default_context(
                cafile=TLS_CERT)) as answer:
            self.assertEqual(answer.status, 200)  # serving: every start line is out
        started.process.send_signal(signal.SIGINT)
        out = started.process.stdout.read()  # with what readline() buffered
        started.process.stderr.read()
        started.process.wait(30)
        return started.open_line + started.redirect_line + out

    def test_plain_http_on_the_network_says_the_cookies_travel_in_clear(self):
        said = "over plain http: the cookies travel in clear on the network"
        for args, settings, warned in (
                (["--port", "0"], {}, False),
                (["--port", "0", "--host", "0.0.0.0"], {}, True),
                (["--port", "0"], {"NETATMO_HOST": "0.0.0.0"}, True),
                (["--port", "0", "--host", "::1"], {}, False),
                (["--port", "0", "--host", "0.0.0.0", "--redirect-uri",
                  "https://box.lan/authenticate"], {}, False),
                (["--port", "0", "--host", "0.0.0.0", "--certfile", TLS_CERT, "--keyfile",
                  TLS_KEY], {}, False)):
            with self.subTest(args=args, settings=settings):
                lines = self.start_lines(args, **settings)
                self.assertEqual(said in lines, warned, lines)
                if warned:
                    self.assertIn("--certfile and --keyfile", lines)

    def test_an_api_url_in_clear_to_another_host_is_refused(self):
        for api_url, refused in (("http://api.example.com", True),
                                 ("http://10.0.0.1:8001", True),
                                 ("http://127.0.0.2:9", False), ("http://localhost:9", False),
                                 ("http://[::1]:9", False), ("https://api.example.com", False)):
            for proxy in ({}, {"http_proxy": "http://127.0.0.1:9"}):
                with self.subTest(api_url=api_url, proxy=proxy):
                    status, _, err = run(["--once", "--no-browser", "--token-file", self.path,
                                          "--port", "0", "--api-url", api_url],
                                         **dict(GOOD, **proxy))
                    self.assertEqual(status, 2 if refused else 1, err)
                    self.assertEqual("in clear" in err, refused, err)
                    self.assertEqual(len(err.strip().splitlines()), 1, err)

    def secret_file(self, content, mode):
        path = os.path.join(os.path.dirname(self.path), "secret")
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def test_a_secret_file_others_can_read_is_refused_as_ssh_refuses_a_key(self):
        for mode in (0o644, 0o640, 0o604, 0o660):
            with self.subTest(mode=oct(mode)):
                status, _, err = run(["--client-secret-file", self.secret_file(b"s\n", mode)],
                                     NETATMO_CLIENT_ID="i")
                self.assertEqual(status, 2, err)
                self.assertIn("can be read by other users", err)
                self.assertIn("chmod 600", err)
        big = self.secret_file(b"s" * (64 * 1024 + 1), 0o600)
        status, _, err = run(["--client-secret-file", big], NETATMO_CLIENT_ID="i")
        self.assertEqual(status, 2, err)
        self.assertIn("larger than 64 KB", err)
        fifo = os.path.join(os.path.dirname(self.path), "fifo")
        os.mkfifo(fifo, 0o600)
        status, _, err = run(["--client-secret-file", fifo], NETATMO_CLIENT_ID="i")
        self.assertEqual(status, 2, err)
        self.assertIn("is not a regular file", err)
        started = Started(["--port", "0", "--client-secret-file",
                           self.secret_file(b"s" * 1000 + b"\n", 0o600)], NETATMO_CLIENT_ID="i")
        self.assertIn("open http://", started.open_line)
        started.interrupt()

    def test_a_token_file_in_a_folder_others_may_write_is_refused(self):
        folder = os.path.dirname(self.path)
        cases = [(0o777, None, True), (0o1777, None, False), (0o770, None, False),
                 (0o755, None, False)]
        if os.geteuid() == 0:  # only root can give a folder to another group
            cases += [(0o770, 65534, True), (0o1770, 65534, False)]
        for mode, group, refused in cases:
            with self.subTest(mode=oct(mode), group=group):
                os.chown(folder, -1, os.getgid() if group is None else group)
                os.chmod(folder, mode)
                status, _, err = run(["--once", "--no-browser", "--token-file", self.path,
                                      "--port", "0"], **GOOD)
                self.assertEqual(status, 2 if refused else 1, err)  # 1: no saved login yet
                if refused:
                    self.assertIn("may write in its folder", err)
                    self.assertEqual(len(err.strip().splitlines()), 1, err)
        os.chmod(folder, 0o700)
