"""make test-stress: the long runs (a flood of logins, 200 slow clients, rotation under load).

Not in `make test` (they take a minute or more); .ci/run runs them once, with python3.
"""

import http.client
import os
import subprocess
import sys
import threading
import time
import unittest

from tests import bench
from tests.support import ROOT, Browser, flood_login
from tests.test_hardening import SlowClientTest


def flood(port, count):
    """GET /login count times from 127.0.0.1 (for a child process)."""
    flood_login(port, count)


class LoginFloodTest(unittest.TestCase):
    """As deployed: the app in a process of its own, whose memory is measured alone."""

    def test_100000_logins_from_the_persons_own_address(self):
        fake = bench.Fake()
        self.addCleanup(fake.stop)
        app = bench.App(fake, cache_seconds=0)
        self.addCleanup(app.stop)
        browser = Browser()
        authorize = browser.get(app.url + "/login").location  # the person, at Netatmo
        before = app.rss()
        started = time.time()
        flooders = [subprocess.Popen(  # 4 processes, 25,000 requests each
            [sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
             "from tests.stress_test import flood; flood(%d, 25000)" % (ROOT, app.port)])
            for _ in range(4)]
        for process in flooders:
            self.assertEqual(process.wait(timeout=600), 0)
        took = time.time() - started
        growth = app.rss() - before
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        final = browser.follow(back)[-1]
        print("\nflood: 100,000 GET /login from the person's own address in %.1f s (%.0f "
              "req/s); app RSS %.1f MB before, %+.2f MB after; the person's login, begun "
              "before the flood and finished after: %d"
              % (took, 100000 / took, before, growth, final.status))
        self.assertLessEqual(growth, 2)
        self.assertEqual(final.status, 200)


class ManySlowClientsTest(SlowClientTest):

    def test_200_slow_clients(self):
        self.run_slow_clients(200)


class RotationUnderLoadTest(unittest.TestCase):
    """As deployed: the browsers, the app and Netatmo are three processes."""

    def test_20_sessions_times_10_clients_for_20_seconds_with_2_second_tokens(self):
        seconds = float(os.environ.get("ROTATION_SECONDS", "20"))
        fake = bench.Fake("--expires-in", "2")
        self.addCleanup(fake.stop)
        app = bench.App(fake, cache_seconds=0)
        self.addCleanup(app.stop)
        clients = []
        # 50 clients from each of four addresses: the server lets one address hold 64
        # connections, and 200 browsers are not one machine.
        addresses = ["127.0.0.%d" % (2 + i % 4) for i in range(200)]
        for user in ["alice", "carol", "dave", "bob"] * 5:
            first = bench.Client(addresses[len(clients)])
            first.login(app, user)
            clients.append(first)
            for _ in range(9):  # 9 more clients (tabs) of the same session
                tab = bench.Client(addresses[len(clients)])
                tab.cookie = first.cookie
                clients.append(tab)
        statuses, errors = {}, set()
        lock = threading.Lock()
        stop_at = time.time() + seconds

        def hammer(client):
            while time.time() < stop_at:
                try:
                    status, text = client.get(app.url + "/devices.json")
                except (OSError, http.client.HTTPException) as error:
                    status, text = "failed", repr(error)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status != 200:
                        errors.add(text[:300])

        threads = [threading.Thread(target=hammer, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        still_in = sum(c.get(app.url + "/devices.json")[0] == 200 for c in clients[::10])
        stats = fake.stats()
        print("\nrotation: %d requests in %.0f s by 200 clients of 20 sessions: %s; "
              "%d refreshes, %d refresh tokens presented twice, %d of 20 sessions still in"
              % (sum(statuses.values()), seconds, statuses, stats["refreshes"],
                 stats["refresh_reuse"], still_in))
        self.assertEqual(set(statuses), {200}, sorted(errors)[:5])
        self.assertEqual(stats["refresh_reuse"], 0)
        self.assertEqual(still_in, 20)
        self.assertGreater(stats["refreshes"], 20 * seconds / 2)  # all kept refreshing


def load_tests(loader, tests, pattern):
    """Only the stress tests of this file, not those its classes inherit."""
    return unittest.TestSuite([
        LoginFloodTest("test_100000_logins_from_the_persons_own_address"),
        ManySlowClientsTest("test_200_slow_clients"),
        RotationUnderLoadTest("test_20_sessions_times_10_clients_for_20_seconds_with_2_second_tokens"),
    ])
