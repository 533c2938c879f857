"""make test-stress: the long runs of issue 3 (flood, 200 slow clients, rotation under load).

Not in `make test` (they take a minute or more); .ci/run runs them once, with python3.
"""

import os
import subprocess
import sys
import threading
import time
import unittest

from tests import bench
from tests.support import ROOT, Browser
from tests.test_hardening import FloodTest, SlowClientTest


def rss_mb():
    """Return this process's resident memory, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0


def flood(port, addresses, count):
    """GET /login count times from each address, on one kept-alive connection each."""
    for address in addresses:
        FloodTest.flood_login(port, address, count)


class LoginFloodTest(FloodTest):

    def test_100000_logins_without_cookies(self):
        store = self.server.sessions
        port = self.server.server_address[1]
        before = rss_mb()
        flooders = []
        started = time.time()
        for f in range(4):  # 4 processes, 5 addresses each, 5,000 requests per address
            addresses = ["127.0.%d.%d" % (f + 1, a) for a in range(1, 6)]
            flooders.append(subprocess.Popen(
                [sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                 "from tests.stress_test import flood; flood(%d, %r, 5000)"
                 % (ROOT, port, addresses)]))
        while len(store.pending) < 5000:  # the person arrives in the middle of the flood
            time.sleep(0.01)
        browser = Browser()
        authorize = browser.get(self.url + "/login").location
        for process in flooders:
            self.assertEqual(process.wait(), 0)
        took = time.time() - started
        growth = rss_mb() - before
        pending = len(store.pending)
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        final = browser.follow(back)[-1]
        print("\nflood: 100,000 GET /login from 20 addresses in %.1f s (%.0f req/s); "
              "pending logins %d (cap %d); server process RSS +%.1f MB; the person's login "
              "begun mid-flood: %d" % (took, 100000 / took, pending, store.max_pending,
                                      growth, final.status))
        self.assertEqual(pending, store.max_pending)
        self.assertLess(growth, 50)
        self.assertEqual(final.status, 200)
        self.assertNoTraceback()


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
        for user in ["alice", "carol", "dave", "bob"] * 5:
            first = bench.Client()
            first.login(app, user)
            clients.append(first)
            for _ in range(9):  # 9 more clients (tabs) of the same session
                tab = bench.Client()
                tab.cookie = first.cookie
                clients.append(tab)
        statuses, errors = {}, set()
        lock = threading.Lock()
        stop_at = time.time() + seconds

        def hammer(client):
            while time.time() < stop_at:
                status, text = client.get(app.url + "/devices.json")
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
        LoginFloodTest("test_100000_logins_without_cookies"),
        ManySlowClientsTest("test_200_slow_clients"),
        RotationUnderLoadTest("test_20_sessions_times_10_clients_for_20_seconds_with_2_second_tokens"),
    ])
