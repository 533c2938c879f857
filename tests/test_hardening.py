"""Hostile input, slow clients, floods of /login: the server holds, and says so."""

import os
import socket
import threading
import time

from tests import fuzz
from tests.support import AppTestCase, Browser, raw_exchange, rss_mb

FUZZ_SEED = 20261125
FUZZ_COUNT = int(os.environ.get("FUZZ_COUNT", "5000"))


def thread_count_drops_to(limit, within):
    """Wait until at most `limit` threads run, up to `within` seconds; return the count."""
    deadline = time.time() + within
    while threading.active_count() > limit and time.time() < deadline:
        time.sleep(0.01)  # a readiness check on the thread count, bounded
    return threading.active_count()


class FuzzTest(AppTestCase):

    cache_seconds = 30  # a fuzzed page view of the real session must not flood the fake

    def test_hostile_requests_get_clean_answers_and_the_server_keeps_working(self):
        self.fake.rate_limits = None
        owner, _ = self.login("alice")
        port = self.server.server_address[1]
        failures, answered, closed = [], 0, 0
        for number, (data, must_answer) in enumerate(
                fuzz.cases(FUZZ_SEED, FUZZ_COUNT, owner.cookie())):
            answer = fuzz.exchange(port, data)
            answered += bool(answer)
            closed += not answer
            for problem in fuzz.problems_with(answer, must_answer):
                failures.append("case %d: %s; sent %r" % (number, problem, data[:200]))
        print("\nfuzz: %d requests (seed %d): %d answered, %d closed without an answer"
              % (FUZZ_COUNT, FUZZ_SEED, answered, closed))
        self.assertEqual(failures[:10], [])
        self.assertNoTraceback()
        # The real session still lists its devices, and a new person can log in.
        devices = owner.get(self.url + "/devices.json")
        self.assertEqual(devices.status, 200)
        self.assertEqual(len(devices.json()["devices"]), 73)
        self.login("bob")


class SlowClientTest(AppTestCase):

    def app_settings(self):
        return {"client_timeout": 1.0}

    def open_slow_connections(self, count):
        """Open idle connections, and some that send one byte a second.

        50 from each address: one address may hold 64 connections, and the person
        who logs in meanwhile comes from 127.0.0.1.
        """
        port = self.server.server_address[1]
        sockets = [connect_from("127.0.0.%d" % (2 + i // 50), port) for i in range(count)]
        for sock in sockets[::2]:
            sock.sendall(b"G")
        for sock in sockets:
            self.addCleanup(sock.close)
        return sockets

    def assertServerCloses(self, sockets, slow_sender):
        """Each connection is closed by the server; the slow ones keep sending meanwhile."""
        started = time.time()
        for sock in sockets:
            sock.settimeout(10)
            while True:
                try:
                    data = sock.recv(1024)
                except ConnectionResetError:
                    break
                if not data:
                    break
        elapsed = time.time() - started
        slow_sender.set()
        self.assertLess(elapsed, 5)

    def run_slow_clients(self, count):
        baseline = threading.active_count()
        open_files = len(os.listdir("/proc/self/fd"))
        sockets = self.open_slow_connections(count)
        stop = threading.Event()

        def drip():  # one byte a second to half of them: each byte resets a read timeout
            while not stop.wait(0.5):
                for sock in sockets[::2]:
                    try:
                        sock.sendall(b"E")
                    except OSError:
                        pass
        dripper = threading.Thread(target=drip)
        dripper.start()
        self.addCleanup(dripper.join)
        self.addCleanup(stop.set)
        started = time.time()
        browser, _ = self.login("alice")
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        took = time.time() - started
        self.assertServerCloses(sockets, stop)
        # The fake lives in this process: each connection kept open to it holds a thread.
        self.server.netatmo.close()
        left = thread_count_drops_to(baseline + 1, within=5)
        for sock in sockets:  # our ends; the server closed its ends already
            sock.close()
        files_left = len(os.listdir("/proc/self/fd"))
        print("\nslow clients: %d held open; a login and a device list took %.0f ms; "
              "threads %d before, %d after; open files %d before, %d after"
              % (count, took * 1000, baseline, left, open_files, files_left))
        self.assertLess(took, 2)
        self.assertLessEqual(left, baseline + 1)  # + the dripper, until it stops
        self.assertLessEqual(files_left, open_files + 2)  # the login's kept-alive sockets
        self.assertNoTraceback()

    def test_idle_and_one_byte_a_second_clients_are_cut_off(self):
        self.run_slow_clients(int(os.environ.get("SLOW_CLIENTS", "40")))

    def test_keep_alive_connection_left_idle_is_closed(self):
        port = self.server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while not first.endswith(b"ok\n"):
                first += sock.recv(65536)
            self.assertTrue(first.startswith(b"HTTP/1.1 200"))
            started = time.time()
            self.assertEqual(sock.recv(65536), b"")  # closed by the server
            self.assertLess(time.time() - started, 3)


class NetatmoFaultsTest(AppTestCase):
    """Netatmo misbehaving at each step: a clear page, the right status, never a 500."""

    API = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")
    COMMON = [("hang", 504), ("reset", 502), ("500_html", 502), ("non_json", 502),
              ("rate_limit", 429)]

    def app_settings(self):
        return {"timeout": 1.0}

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.rate_limits = None

    def timed(self, function):
        started = time.time()
        response = function()
        return response, time.time() - started

    def check(self, response, elapsed, status, kind):
        self.assertEqual(response.status, status, response.text[:300])
        self.assertIn("Netatmo", response.text)
        self.assertNotIn("Internal error", response.text)
        if kind == "hang":
            self.assertLess(elapsed, self.server.config.timeout + 1)

    def test_token_exchange(self):
        for kind, status in self.COMMON + [("no_token", 502), ("invalid_client", 502)]:
            with self.subTest(kind=kind):
                browser = Browser()
                authorize = browser.get(self.url + "/login").location
                back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
                self.fake.fail("/oauth2/token", kind)
                response, elapsed = self.timed(lambda: browser.get(back))
                self.check(response, elapsed, status, kind)
                self.assertEqual(browser.get(self.url + "/devices.json").status, 401)
        self.assertNoTraceback()

    def test_refresh(self):
        browser, _ = self.login("alice")
        for kind, status in self.COMMON + [("no_token", 502)]:
            with self.subTest(kind=kind):
                self.fake.fail("/oauth2/token", kind)
                response, elapsed = self.timed(lambda: browser.post(self.url + "/refresh"))
                self.check(response, elapsed, status, kind)
                self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertNoTraceback()

    def test_each_device_endpoint(self):
        browser, _ = self.login("alice")
        for paths in [(path,) for path in self.API] + [self.API]:
            for kind, status in self.COMMON + [("no_body", 502), ("redirect", 502)]:
                with self.subTest(paths=paths, kind=kind):
                    # A GET that a kept-alive connection loses is sent again, once:
                    # the reset hits both tries.
                    for path in paths:
                        self.fake.fail(path, kind, times=2 if kind == "reset" else 1)
                    response, elapsed = self.timed(lambda: browser.get(self.url + "/devices"))
                    self.fake.clear_faults()
                    # One product line failing is a partial list; all of them, the page.
                    self.check(response, elapsed, status if len(paths) > 1 else 200, kind)
                    self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertNoTraceback()

    def test_odd_but_valid_bodies_are_listed(self):
        browser, _ = self.login("alice")
        cases = [("/api/homesdata", {"homes": []}, 28),  # the stations stand alone
                 ("/api/homesdata", {"homes": None}, 28),
                 ("/api/getstationsdata", {"devices": None}, 56),
                 ("/api/gethomecoachsdata", {"devices": [{"_id": "70:ee:50:aa:aa:aa"}]}, 69),
                 ("/api/homesdata", [], 28)]
        for path, body, count in cases:
            with self.subTest(path=path, body=body):
                self.fake.fail(path, ("body", body))
                response = browser.get(self.url + "/devices.json")
                self.assertEqual(response.status, 200)
                self.assertEqual(len(response.json()["devices"]), count)
        self.fake.fail("/api/gethomecoachsdata", ("body", {"devices": [{"_id": "x"}]}))
        page = browser.get(self.url + "/devices").text
        self.assertIn('<td class="wide">unknown</td>', page)  # the product column
        self.assertNoTraceback()


def connect_from(address, port):
    """Return a connection to the app on port from a loopback address of its own."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sockets, expected, within=10):
    """Return the sockets the server has closed, once `expected` of them are; bounded."""
    import select
    deadline = time.time() + within
    closed = set()
    while len(closed) < expected and time.time() < deadline:
        poller = select.poll()
        for sock in sockets:
            if sock not in closed:
                poller.register(sock, select.POLLIN)
        by_fd = {s.fileno(): s for s in sockets}
        for fd, _ in poller.poll(100):  # a readiness check: an end to read
            sock = by_fd[fd]
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except ConnectionResetError:
                closed.add(sock)
    return closed


class RequestHeadTest(AppTestCase):
    """A request head is capped as a whole: 16 KB and 50 header lines."""

    def port(self):
        return self.server.server_address[1]

    def status_of(self, head):
        answer = raw_exchange(self.port(), head)
        return int(answer.split(b" ", 2)[1]) if answer else None

    def test_heads_over_the_caps_get_431_and_those_under_pass(self):
        line = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        cases = [(b"".join(b"X-%d: y\r\n" % i for i in range(48)), 200),  # 50 lines
                 (b"".join(b"X-%d: y\r\n" % i for i in range(49)), 431),  # 51 lines
                 (b"X-Big: " + b"a" * (16 * 1024 - 100) + b"\r\n", 200),
                 (b"X-Big: " + b"a" * (16 * 1024) + b"\r\n", 431),
                 (b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(17)), 431)]
        for extra, status in cases:
            with self.subTest(lines=extra.count(b"\n"), size=len(extra)):
                self.assertEqual(self.status_of(line + extra + b"\r\n"), status)
        self.assertNoTraceback()

    def test_many_connections_with_huge_heads_cost_little_memory(self):
        # Each sends 99 header lines of 65 KB: http.server alone keeps 6 MB of each.
        head = b"GET / HTTP/1.1\r\n" + b"".join(
            b"X-%d: %s\r\n" % (i, b"a" * 65000) for i in range(99)) + b"\r\n"
        before = rss_mb()
        statuses = []

        def send():
            try:
                with socket.create_connection(("127.0.0.1", self.port()), timeout=10) as s:
                    try:
                        s.sendall(head)
                    except OSError:
                        pass  # refused midway: the answer still comes
                    statuses.append(s.recv(12))
            except OSError as e:
                statuses.append(repr(e).encode())
        threads = [threading.Thread(target=send) for _ in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        growth = rss_mb() - before
        print("\nhuge heads: 60 connections of 6.4 MB heads; RSS +%.1f MB" % growth)
        self.assertEqual(statuses, [b"HTTP/1.1 431"] * 60)
        self.assertLess(growth, 40)  # without the cap: about 380 MB


class ConnectionCapTest(AppTestCase):
    """Connections are capped in all (256) and per address (64); extras close at once."""

    def port(self):
        return self.server.server_address[1]

    def hold(self, address, count):
        sockets = [connect_from(address, self.port()) for _ in range(count)]
        for sock in sockets:
            self.addCleanup(sock.close)
        return sockets

    def test_one_address_holding_1100_idle_connections_leaves_the_server_answering(self):
        sockets = self.hold("127.0.0.2", 1100)
        closed = closed_by_server(sockets, 1100 - 64)
        self.assertEqual(len(closed), 1100 - 64)
        started = time.time()
        response = Browser().get(self.url + "/healthz")  # from 127.0.0.1
        self.assertEqual(response.status, 200)
        self.assertLess(time.time() - started, 1)
        self.assertIn("connection refused, too many open", self.log.text())
        # The connections it still holds are its own 64, served as usual.
        kept = [s for s in sockets if s not in closed]
        kept[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(kept[0].recv(100).startswith(b"HTTP/1.1 200"))

    def test_five_addresses_meet_the_cap_of_all_connections(self):
        sockets = []
        for last in range(2, 7):
            sockets += self.hold("127.0.0.%d" % last, 64)
        closed = closed_by_server(sockets, 5 * 64 - 256)
        self.assertEqual(len(closed), 64)
        self.assertEqual(sum(self.server.connections.values()), 256)
        # Closing some makes room again.
        for sock in sockets[:10]:
            sock.close()
        deadline = time.time() + 10
        while sum(self.server.connections.values()) > 246 and time.time() < deadline:
            time.sleep(0.01)  # a readiness check on the server's count, bounded
        self.assertEqual(Browser().get(self.url + "/healthz").status, 200)

    def test_a_kept_alive_connection_serves_100_requests_then_closes(self):
        with socket.create_connection(("127.0.0.1", self.port()), timeout=10) as sock:
            reader = sock.makefile("rb")
            answers = 0
            while answers < 150:
                try:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                except OSError:
                    break
                status = reader.readline()
                if not status:
                    break
                answers += 1
                head = []
                while True:
                    line = reader.readline()
                    if line == b"\r\n":
                        break
                    head.append(line)
                reader.read(3)  # "ok\n"
            reader.close()
        self.assertEqual(answers, 100)
        self.assertIn(b"Connection: close\r\n", head)

    def test_an_idle_kept_alive_connection_has_a_shorter_limit_than_a_new_one(self):
        kept = socket.create_connection(("127.0.0.1", self.port()), timeout=20)
        new = socket.create_connection(("127.0.0.1", self.port()), timeout=20)
        self.addCleanup(kept.close)
        self.addCleanup(new.close)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"ok\n"):
            answer += kept.recv(65536)
        started = time.time()
        self.assertEqual(kept.recv(65536), b"")  # closed by the server
        waited = time.time() - started
        self.assertGreater(waited, 4)
        self.assertLess(waited, 7)
        # The new connection has --client-timeout (30 s) for its first request.
        new.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue(new.recv(100).startswith(b"HTTP/1.1 200"))


class RequestParsingTest(AppTestCase):

    def test_content_length_must_be_ascii_digits_and_single(self):
        port = self.server.server_address[1]
        for lengths in ([b"\xb2"], [b"\xd9\xa3"], [b"5", b"5"], [b"5", b"7"], [b" "]):
            with self.subTest(lengths=lengths):
                head = b"POST /logout HTTP/1.1\r\nHost: x\r\n" + b"".join(
                    b"Content-Length: " + v + b"\r\n" for v in lengths) + b"\r\nhello"
                self.assertTrue(raw_exchange(port, head).startswith(b"HTTP/1.1 400"))
        self.assertNoTraceback()

    def test_the_log_escapes_control_characters(self):
        port = self.server.server_address[1]
        raw_exchange(port, b"GET /\x1b[31mred\x1b]0;title\x07 HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
        log = self.log.text()
        self.assertIn("/\\x1b[31mred\\x1b]0;title\\x07", log)
        self.assertNotIn("\x1b", log)
        self.assertNotIn("\x07", log)


class CookieTossingTest(AppTestCase):
    """Two session cookies mean no login: a planted one cannot choose the account."""

    def test_a_second_session_cookie_logs_out_and_both_are_expired(self):
        person, _ = self.login("alice")
        planter, _ = self.login("bob")  # another program's own login on this host
        both = "netatmo_session=%s; netatmo_session=%s" % (planter.cookie(), person.cookie())
        for path in ("/devices.json", "/devices", "/"):
            with self.subTest(path=path):
                response = Browser().get(self.url + path, headers={"Cookie": both})
                expired = response.headers.get_all("Set-Cookie")
                self.assertIn("netatmo_session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0; "
                              "Expires=Thu, 01 Jan 1970 00:00:00 GMT", expired)
                if path != "/":
                    self.assertTrue(any("Path=%s;" % path in c for c in expired), expired)
                if path == "/devices.json":
                    self.assertEqual(response.status, 401)
                elif path == "/devices":
                    self.assertEqual((response.status, response.location), (303, "/login"))
                else:
                    self.assertIn("Log in with Netatmo", response.text)
                    self.assertNotIn("Bob", response.text)
        self.assertEqual(person.get(self.url + "/devices.json").status, 200)  # alone: in

    def test_over_https_the_cookies_have_their_prefixes(self):
        server = self.start_app(redirect_uri="https://netatmo.example.org/authenticate")
        self.fake.register_redirect_uri(server.config.redirect_uri)
        url = "http://127.0.0.1:%d" % server.server_address[1]  # behind a TLS proxy
        host = {"Host": "netatmo.example.org"}
        browser = Browser()
        response = browser.get(url + "/login", headers=host)
        self.assertEqual(response.headers["Strict-Transport-Security"], "max-age=31536000")
        login = [a.strip() for a in response.headers["Set-Cookie"].split(";")]
        # __Host-, not __Secure-: a sibling subdomain cannot plant it (issue 24).
        self.assertTrue(login[0].startswith("__Host-netatmo_login="), login)
        self.assertIn("Secure", login)
        self.assertIn("Path=/", login)
        self.assertFalse([a for a in login if a.lower().startswith("domain")])
        back = browser.get(response.location, headers={"X-Fake-Approve": "alice"}).location
        response = browser.get(back.replace("https://netatmo.example.org", url), headers=host)
        self.assertEqual(response.status, 303)
        cookie = response.headers["Set-Cookie"]
        self.assertTrue(cookie.startswith("__Host-netatmo_session="), cookie)
        attributes = [a.strip() for a in cookie.split(";")]
        self.assertIn("Secure", attributes)
        self.assertIn("Path=/", attributes)
        self.assertFalse([a for a in attributes if a.lower().startswith("domain")])
        self.assertEqual(browser.get(url + "/devices.json", headers=host).status, 200)


class NetatmoAnswerTest(AppTestCase):
    """Answers from Netatmo are bounded in size and depth, and checked for type."""

    def test_oversized_and_too_deep_answers_get_the_502_page(self):
        browser, _ = self.login("alice")
        for kind, words in (("huge", "larger than 8 MB"), ("endless", "larger than 8 MB"),
                            ("deep", "not JSON")):
            with self.subTest(kind=kind):
                self.fake.fail("/api/homesdata", kind)
                response = browser.get(self.url + "/devices")  # one line: a partial list
                self.assertEqual(response.status, 200)
                self.assertIn(words, response.text)
                for path in ("/api/homesdata", "/api/getstationsdata",
                             "/api/gethomecoachsdata"):
                    self.fake.fail(path, kind)
                response = browser.get(self.url + "/devices")
                self.assertEqual(response.status, 502)
                self.assertIn(words, response.text)
                self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertNoTraceback()

    def test_a_token_of_the_wrong_type_gets_the_502_page(self):
        for body in ({"body": {}, "access_token": {"a": 1}, "refresh_token": "r|1"},
                     {"access_token": "a|1", "refresh_token": ["r"]},
                     {"access_token": "a|1\r\nX: y", "refresh_token": "r|1"}):
            with self.subTest(body=body):
                self.fake.fail("/oauth2/token", ("json", body))
                hops = Browser().follow(self.url + "/login", approve_as="alice")
                self.assertEqual(hops[-1].status, 502)
                self.assertIn("answered without a token", hops[-1].text)
        self.assertNoTraceback()

    def test_a_lifetime_that_is_no_real_number_means_unknown(self):
        for lifetime in (float("nan"), float("inf"), 400 * 86400, 10 ** 400):
            with self.subTest(lifetime=lifetime):
                self.fake.expires_in = lifetime
                browser, _ = self.login("alice")
                self.assertIn("valid until: unknown", browser.get(self.url + "/").text)
                for _ in range(2):
                    self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertNoTraceback()
