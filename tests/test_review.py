"""Nothing crosses from one person to another (issue 24): the security review's faults.

An answer carries only the cookies of its own request; the owner's key stays in the
terminal; --open gives nothing away to other users of the host; the settings a
locked-down site expects; any string from Netatmo is safe to show; and the review's
smaller faults.
"""

import html.parser
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import netatmo_stdlib
from tests.fake_netatmo import TLS_CERT, TLS_KEY, generated_statuses, hostile_account
from tests.support import AppTestCase, Browser, CLIENT_SECRET, Response
from tests.test_bad_days import query_of
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


def raw_response(port, data):
    """Send data on a new connection; return the http.client answer, read."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer


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


# What never reaches a terminal raw (TERMINAL_CONTROLS): C0, DEL, C1, the bidi controls
# and the line and paragraph separators.
NEVER_RAW = "".join(map(chr, list(range(0x20)) + list(range(0x7f, 0xa0)) + [0x200e, 0x200f]
                        + list(range(0x202a, 0x202f)) + list(range(0x2066, 0x206a))
                        + [0x2028, 0x2029]))
LONE = "\ud800 and \udfff"  # json.loads takes both from "\ud800" escapes


def strange_account(text):
    """Return an account whose every device, room and home name carries text, and whose
    home's gateway does not answer (its name is then in a problem line)."""
    account = hostile_account()
    home = account["/api/homesdata"]["homes"][0]
    home["name"] = "Home " + text
    for module in home["modules"]:
        module["name"] = "Name " + text
    for room in home["rooms"]:
        room["name"] = "Room " + text
    return account


class NetatmoStringsTest(TokenFileCase):
    """5. Any string from Netatmo is safe to show (low-medium)."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.users["sam"] = strange_account(LONE)
        self.fake.users["tom"] = strange_account(NEVER_RAW + "é温")

    def test_a_lone_surrogate_in_a_name_or_a_message_is_shown_as_a_replacement(self):
        browser, hops = self.login("sam")
        self.assertIn("Name \ufffd and \ufffd", hops[-1].text)
        answer = browser.get(self.url + "/devices.json")
        self.assertEqual(answer.status, 200)
        self.assertIn("Name \ufffd and \ufffd", answer.text)
        for endpoint in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
            self.fake.fail(endpoint, ("status", 500, {"error": {"code": 0, "message": LONE}}),
                           times=2)
        for path in ("/devices", "/devices.json"):  # every line fails: the failure's page
            answer = browser.get(self.url + path)
            self.assertEqual(answer.status, 502, answer.text[:300])
            self.assertIn("\ufffd and \ufffd", answer.text)
        self.assertNoTraceback()

    def test_once_when_the_token_endpoints_message_holds_one(self):
        self.fake.fail("/oauth2/token", ("status", 500, {"error": {"code": 0,
                                                                    "message": LONE}}))
        run = OnceRun(self, "--wait", "60")
        Browser().follow(run.wait_for_login_url(), approve_as="alice")
        status, out, err = run.finish()
        self.assertEqual((status, out), (4, ""), err)  # not 3, after --wait
        self.assertIn("\ufffd and \ufffd", err)
        self.assertNotIn("Traceback", err)

    def test_devices_json_writes_the_terminal_controls_escaped_and_keeps_text_readable(self):
        browser, _ = self.login("tom")
        raw = browser.get(self.url + "/devices.json").body.decode("utf-8")
        for c in NEVER_RAW:
            self.assertNotIn(c, raw, hex(ord(c)))
        self.assertIn("\\u009b\\u009c", raw)
        self.assertIn("\\u202e", raw)
        self.assertIn("\\u2028\\u2029", raw)
        self.assertIn("é温", raw)  # other text stays readable
        names = {d["name"] for d in json.loads(raw)["devices"]}
        self.assertIn("Name " + NEVER_RAW + "é温", names)  # the same text, for a program

    def test_none_of_them_reaches_a_terminal_raw(self):
        self.fake.fail("/api/getstationsdata", ("status", 500, {"error": {
            "code": 0, "message": "Mongo" + NEVER_RAW}}))
        run = OnceRun(self, "--trace")
        Browser().follow(run.wait_for_login_url(), approve_as="tom")
        status, out, err = run.finish()
        self.assertEqual(status, 5, err)  # a partial list: the stations failed
        self.assertIn("Name ?", out)  # the table
        self.assertIn("Home ?", out)  # the problem line of the home that does not answer
        self.assertIn("Mongo\\x00\\x01", err)  # the failed line, on stderr
        self.assertIn("\\x9f\\u200e\\u200f\\u202a", err)
        self.assertIn("\\u2069\\u2028\\u2029", err)
        for text, where in ((out, "stdout"), (err, "stderr")):
            for c in NEVER_RAW:
                if c == "\n":  # the newline that ends a line
                    continue
                self.assertNotIn(c, text, "%s reached %s raw" % (hex(ord(c)), where))


class BlocksInParagraphs(html.parser.HTMLParser):
    """Finds block elements opened inside a <p>, which HTML forbids."""

    BLOCKS = ("form", "div", "table", "p", "ul", "ol", "h1", "h2", "pre")

    def __init__(self):
        html.parser.HTMLParser.__init__(self)
        self.open = []
        self.found = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCKS and "p" in self.open:
            self.found.append("<%s> inside <p>" % tag)
        if tag not in ("meta", "br", "input"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]


class ReviewRestTest(TokenFileCase):
    """6. The rest of the review."""

    def test_a_done_cookie_of_any_size_or_time_is_ignored(self):
        browser, _ = self.login("alice")
        now = int(time.time())
        for value, said in (("renewed-99999999999999999999", False),
                            ("renewed-" + "9" * 5000, False),
                            ("renewed-%d" % (now - 2 * 86400), False),
                            ("renewed-%d" % (now + 2 * 86400), False),
                            ("renewed-000%d" % now, False),  # 12 digits at most
                            ("renewed-%d" % now, True)):
            with self.subTest(value=value[:30]):
                browser.cookies["127.0.0.1"]["netatmo_done"] = value
                for path in ("/", "/devices"):
                    page = browser.get(self.url + path)
                    self.assertEqual(page.status, 200)
                    self.assertEqual("Renewed at" in page.text, said and path == "/")
        self.assertNoTraceback()

    def test_tokens_from_the_token_file_are_checked_and_never_echoed(self):
        good = {"access_token": "a" * 20, "refresh_token": "r" * 20,
                "expires_at": time.time() + 3600, "scope": ["read_station"]}
        for field, token in (("access_token", "MARK1234\n"), ("access_token", "MARK\x1b]0;x"),
                             ("refresh_token", "MARK with space"), ("access_token", "")):
            for mode in ("--print-token", "--once"):
                with self.subTest(field=field, token=token, mode=mode):
                    with open(self.path, "w") as f:
                        json.dump(dict(good, **{field: token}), f)
                    os.chmod(self.path, 0o600)
                    status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                               mode=mode).finish()
                    self.assertEqual((status, out), (2, ""), err)
                    self.assertIn("is not a token file of this program (or it is corrupt)", err)
                    self.assertIn(self.path, err)
                    self.assertEqual(len(err.strip().splitlines()), 1, err)
                    self.assertNotIn("MARK", err)
        self.assertEqual(self.fake.requests, [])

    def test_no_page_puts_a_block_element_inside_a_paragraph(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        owner, stranger, refused = Browser(), Browser(), Browser()
        owner.follow(url + server.login_path(), approve_as="bob")
        owner.get(url + "/")
        owner.post(url + "/refresh", headers={"Origin": url})
        owner.get(url + "/devices")
        for path in ("/", "/nowhere", "/devices", "/authenticate?code=x&state=y",
                     "/authenticate?error=access_denied"):
            stranger.get(url + path)
        stranger.request("PUT", url + "/devices")
        refused.follow(url + "/login", approve_as="deny")
        self.fake.refuse_without_state = True
        refused.follow(url + "/login", approve_as="deny")
        refused.post(url + "/authenticate", headers={"Origin": url})
        refused.follow(url + server.login_path(), approve_as="deny")
        pages = [r for b in (owner, stranger, refused) for r in b.history
                 if r.headers.get("Content-Type", "").startswith("text/html")]
        pages.append(Response(raw_response(server.server_address[1], b"GET / HTTP/2.0\r\n\r\n"),
                              "505"))
        self.assertGreaterEqual(len(pages), 15)
        for page in pages:
            with self.subTest(url=page.url, status=page.status):
                checker = BlocksInParagraphs()
                checker.feed(page.text)
                self.assertEqual(checker.found, [])

    def test_a_page_waits_for_a_busy_lock_once_not_once_per_call(self):
        server = self.start_app(token_file=self.path)
        server.config.token_file.lock_wait = 1.0
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)  # the owner's login: its session shares the file
        self.fake.expire_access_tokens()  # every call of the page is refused: code 3
        with netatmo_stdlib.FileLock(self.path + ".lock", 1):  # another program's
            started = time.time()
            page = browser.get(url + "/devices")
            took = time.time() - started
        self.assertEqual(page.status, 503)
        self.assertIn("Another program is renewing this login", page.text)
        self.assertEqual(self.log.text().count("waiting up to 1 s for another program that "
                                               "holds %s.lock" % self.path), 1)
        self.assertLess(took, 1.9)  # 4 calls: 4 s when each waited
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertEqual(browser.get(url + "/devices").status, 200)  # the next page tries

    def test_sessions_are_capped_the_least_recently_used_dropped_first(self):
        self.server.sessions.max_sessions = 5
        browsers = [self.login("carol")[0] for _ in range(5)]
        self.assertEqual(browsers[0].get(self.url + "/devices.json").status, 200)  # used now
        browsers += [self.login("carol")[0] for _ in range(2)]
        statuses = [b.get(self.url + "/devices.json").status for b in browsers]
        self.assertEqual(statuses, [200, 401, 401, 200, 200, 200, 200])
        self.assertEqual(len(self.server.sessions.sessions), 5)

    def test_a_device_list_older_than_the_cache_is_dropped(self):
        server = self.start_app(cache_seconds=30)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        clock = [time.time()]
        server.sessions.clock = lambda: clock[0]
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="alice")[-1].status, 200)
        [session] = server.sessions.sessions.values()
        self.assertEqual(len(session.device_list.devices), 73)  # kept for the cache
        clock[0] += 29
        self.assertEqual(browser.get(url + "/devices.json").status, 200)
        self.assertIsNotNone(session.device_list)
        clock[0] += 61  # older than --cache-seconds, at the next sweep
        self.assertEqual(Browser().get(url + "/healthz").status, 200)
        self.assertEqual(browser.get(url + "/").status, 200)  # a request of any session
        self.assertIsNone(session.device_list)
        self.assertEqual(len(browser.get(url + "/devices.json").json()["devices"]), 73)


def flood_of_codes(url, count, address="127.0.0.1"):
    """Send count pairs of /login and /authenticate?code=x with its state, from address;
    return the statuses of the callbacks, and the last one's (Retry-After, page)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10,
                                            source_address=(address, 0))
    statuses, last = [], None
    try:
        for _ in range(count):
            connection.request("GET", "/login")
            answer = connection.getresponse()
            answer.read()
            cookie = answer.getheader("Set-Cookie").split(";", 1)[0]
            state = query_of(answer.getheader("Location"))["state"]
            connection.request("GET", "/authenticate?code=x&state=" + state,
                               headers={"Cookie": cookie})
            answer = connection.getresponse()
            last = answer.getheader("Retry-After"), answer.read().decode("utf-8")
            statuses.append(answer.status)
    finally:
        connection.close()
    return statuses, last


class CodeFloodTest(AppTestCase):
    """6. No flood of token POSTs, with the client secret, for anyone who can connect."""

    def test_ten_refused_codes_a_minute_from_one_address_then_429_without_a_post(self):
        started = time.time()
        statuses, (retry_after, page) = flood_of_codes(self.url, 200)
        took = time.time() - started
        posts = len(self.fake.token_requests("authorization_code"))
        print("\ncode flood: 200 pairs of /login and /authenticate?code=x in %.1f s: %d POSTs "
              "to the token endpoint, %d answered 429" % (took, posts, statuses.count(429)))
        self.assertEqual(statuses, [400] * 10 + [429] * 190)
        self.assertEqual(posts, 10)
        self.assertTrue(1 <= int(retry_after) <= 61, retry_after)
        self.assertIn("Too many refused logins from your address", page)
        # Another address is not held up: its login works.
        statuses, _ = flood_of_codes(self.url, 1, "127.0.0.2")
        self.assertEqual(statuses, [400])
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 11)
        # A minute later the address may try again.
        self.server.exchanges.clock = lambda: time.time() + 61
        self.assertEqual(flood_of_codes(self.url, 1)[0], [400])
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 12)


class DeadlineTest(AppTestCase):
    """6. A call to Netatmo has one deadline, --timeout, however its answer trickles in."""

    def app_settings(self):
        return {"timeout": 1.0}

    def test_an_answer_dribbled_a_byte_at_a_time_is_cut_off_at_the_deadline(self):
        for path, login_first in (("/oauth2/token", False), ("/api/homesdata", True)):
            with self.subTest(path=path):
                browser = self.login("alice")[0] if login_first else Browser()
                if login_first:
                    for other in ("/api/getstationsdata", "/api/gethomecoachsdata"):
                        self.fake.fail(other, "drip")  # every line dribbles: no list
                self.fake.fail(path, "drip")  # 100 bytes, 0.2 s apart: 20 s
                started = time.time()
                hops = browser.follow(self.url + ("/devices" if login_first else "/login"),
                                      approve_as="alice")
                took = time.time() - started
                self.assertEqual(hops[-1].status, 504, hops[-1].text[:300])
                self.assertIn("Netatmo did not answer within 1 seconds", hops[-1].text)
                self.assertLess(took, 3)  # each read waited less than 1 s: 20 s before
                self.fake.clear_faults()
        self.assertNoTraceback()


class ManyHomesTest(AppTestCase):
    """6. A page asks the status of 50 homes at most, and names the others."""

    def landlord(self, count):
        """Give the fake a user of count homes, one relay each."""
        homes = {"homes": [{"id": "%024x" % h, "name": "Flat %d" % h, "modules": [
            {"id": "70:ee:50:00:%02x:01" % h, "type": "NAPlug", "name": "Relay %d" % h}]}
            for h in range(count)]}
        self.fake.users["landlord"] = {
            "/api/homesdata": homes, "/api/getstationsdata": {"devices": []},
            "/api/gethomecoachsdata": {"devices": []},
            "/api/homestatus": generated_statuses(homes)}
        self.fake.rate_limits = None

    def test_the_homes_left_out_are_named_ten_at_most(self):
        self.landlord(63)
        _, hops = self.login("landlord")
        self.assertIn("The status of 13 more homes was not asked: a page asks the status of "
                      "50 homes at most. They are Flat 50, Flat 51, Flat 52, Flat 53, Flat 54, "
                      "Flat 55, Flat 56, Flat 57, Flat 58, Flat 59 and 3 more.", hops[-1].text)

    def test_an_account_of_55_homes(self):
        self.landlord(55)
        browser, hops = self.login("landlord")
        self.assertEqual(len(self.fake.requests_to("/api/homestatus")), 50)
        self.assertIn("The status of 5 more homes was not asked: a page asks the status of "
                      "50 homes at most. They are Flat 50, Flat 51, Flat 52, Flat 53, Flat 54.",
                      hops[-1].text)
        answer = browser.get(self.url + "/devices.json").json()
        self.assertEqual(len(answer["devices"]), 55)  # listed all the same
        self.assertEqual([p["home"] for p in answer["homes_without_status"]],
                         ["Flat %d" % h for h in range(50, 55)])
        self.assertEqual({p["reason"] for p in answer["homes_without_status"]}, {"not_asked"})
        self.assertEqual(len(self.fake.requests_to("/api/homestatus")), 100)  # 50 a page
