"""Hostile input, slow clients, floods of /login: the server holds, and says so."""

import os
import socket
import threading
import time

from tests import fuzz
from tests.support import AppTestCase, Browser

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

    def setUp(self):
        AppTestCase.setUp(self)
        self.server.config.client_timeout = 1.0

    def open_slow_connections(self, count):
        """Open idle connections, and some that send one byte a second."""
        port = self.server.server_address[1]
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
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


class FloodTest(AppTestCase):

    def flood_from(self, address, count):
        """GET /login count times without cookies, from a loopback address of its own."""
        self.flood_login(self.server.server_address[1], address, count)

    @staticmethod
    def flood_login(port, address, count):
        """GET /login count times on one kept-alive connection from address."""
        request = b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
        sock = socket.socket()
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        reader = sock.makefile("rb")
        try:
            for _ in range(count):
                sock.sendall(request)
                status = reader.readline()
                assert status.startswith(b"HTTP/1.1 302"), status
                while reader.readline() not in (b"\r\n", b""):
                    pass
        finally:
            reader.close()
            sock.close()

    def test_a_flood_evicts_its_own_pending_logins_not_a_persons(self):
        store = self.server.sessions
        store.max_pending, store.max_pending_per_client = 500, 100
        browser = Browser()
        authorize = browser.get(self.url + "/login").location  # a person, at Netatmo now
        self.flood_from("127.0.0.2", 2000)
        self.assertEqual(len(store.pending), 101)
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        self.assertEqual(browser.follow(back)[-1].status, 200)

    def test_the_store_stays_at_its_cap(self):
        store = self.server.sessions
        store.max_pending, store.max_pending_per_client = 300, 100
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            self.flood_from(address, 150)
        self.assertEqual(len(store.pending), 300)
        self.assertEqual(sum(store.pending_count.values()), 300)

    def test_a_flood_from_many_addresses_spares_a_persons_single_login(self):
        store = self.server.sessions
        store.max_pending, store.max_pending_per_client = 300, 100
        browser = Browser()
        authorize = browser.get(self.url + "/login").location
        for last in range(2, 12):
            self.flood_from("127.0.0.%d" % last, 100)  # 1,000 in all, 100 per address
        self.assertEqual(len(store.pending), 300)
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        self.assertEqual(browser.follow(back)[-1].status, 200)


class NetatmoFaultsTest(AppTestCase):
    """Netatmo misbehaving at each step: a clear page, the right status, never a 500."""

    API = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")
    COMMON = [("hang", 504), ("reset", 502), ("500_html", 502), ("non_json", 502),
              ("rate_limit", 429)]

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.rate_limits = None
        self.server.config.timeout = 1.0

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
        for path in self.API:
            for kind, status in self.COMMON + [("no_body", 502), ("redirect", 502)]:
                with self.subTest(path=path, kind=kind):
                    # A GET that a kept-alive connection loses is sent again, once:
                    # the reset hits both tries.
                    self.fake.fail(path, kind, times=2 if kind == "reset" else 1)
                    response, elapsed = self.timed(lambda: browser.get(self.url + "/devices"))
                    self.fake.clear_faults()
                    self.check(response, elapsed, status, kind)
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
        self.assertIn("<td>unknown</td>", page)
        self.assertNoTraceback()
