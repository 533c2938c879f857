"""Token lifetime: refresh before expiry, after code 2 or 3, once at a time, rotated."""

import calendar
import re
import threading
import time
import urllib.parse
import urllib.request

from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET


def wait_until_half_life(server):
    """Let the clock run until the only session's token has lived half its life."""
    [session] = server.sessions.sessions.values()
    tokens = session.tokens
    time.sleep(max(0, tokens.expires_at - tokens.lifetime / 2 - time.time()) + 0.05)


class RefreshTest(AppTestCase):

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.rate_limits = None  # these tests count refreshes, not calls

    def refreshes(self):
        return len(self.fake.token_requests("refresh_token"))

    def bearer_tokens(self):
        return [r.headers["Authorization"] for r in self.fake.requests_to("/api/homesdata")]

    def test_twenty_concurrent_requests_on_an_expired_token_make_exactly_one_refresh(self):
        browser, _ = self.login("alice")
        self.fake.expire_access_tokens()
        barrier = threading.Barrier(20)
        statuses = []

        def fetch():
            barrier.wait()
            statuses.append(browser.get(self.url + "/devices.json").status)

        threads = [threading.Thread(target=fetch) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(statuses, [200] * 20)
        self.assertEqual(self.refreshes(), 1)
        self.assertEqual(self.fake.refresh_reuse, 0)

    def test_token_about_to_expire_is_refreshed_before_the_call(self):
        self.fake.expires_in = 2  # the margin is then half of that: 1 s
        browser, _ = self.login("alice")
        self.assertEqual(self.refreshes(), 0)
        wait_until_half_life(self.server)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(self.refreshes(), 1)
        # The calls after the refresh carried the new token, so none was refused.
        statuses = [r for r in self.fake.requests_to("/api/homesdata")]
        self.assertEqual(len(statuses), 2)
        self.assertNotEqual(self.bearer_tokens()[0], self.bearer_tokens()[1])

    def test_invalid_token_code_2_refreshes_and_retries_once(self):
        browser, _ = self.login("alice")
        with self.fake.lock:
            self.fake.access_tokens.clear()  # Netatmo no longer knows the access token
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(self.refreshes(), 1)

    def test_retry_happens_once_only(self):
        # One endpoint, and carol has no home: no homestatus either, so one thread.
        server = self.start_app(scopes="read_thermostat")
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="carol")[-1].status, 200)
        self.fake.expires_in = -1  # every new token is born expired
        self.fake.expire_access_tokens()
        response = browser.get(url + "/devices.json")
        self.assertEqual(response.status, 502)
        self.assertIn("code 3", response.json()["message"])
        self.assertEqual(self.refreshes(), 1)
        self.assertEqual(len(self.fake.requests_to("/api/homesdata")), 3)

    def test_post_refresh_rotates_the_pair_and_the_old_refresh_token_is_dead(self):
        browser, _ = self.login("alice")
        [(sid, session)] = self.server.sessions.sessions.items()
        old = session.tokens
        response = browser.post(self.url + "/refresh")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.location, "/devices")
        new = session.tokens
        self.assertNotEqual(new.access_token, old.access_token)
        self.assertNotEqual(new.refresh_token, old.refresh_token)
        # At Netatmo, the old refresh token no longer works.
        form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                       "client_secret": CLIENT_SECRET,
                                       "refresh_token": old.refresh_token}).encode()
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(self.fake.url + "/oauth2/token", form)
        self.assertEqual(caught.exception.code, 400)
        caught.exception.close()
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(self.bearer_tokens()[-1], "Bearer " + new.access_token)

    def test_refresh_without_session_goes_to_login(self):
        response = Browser().post(self.url + "/refresh")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.location, "/login")

    def test_invalid_grant_on_refresh_drops_the_session(self):
        browser, _ = self.login("alice")
        self.fake.fail("/oauth2/token", "invalid_grant")
        response = browser.post(self.url + "/refresh")
        self.assertEqual(response.status, 401)
        self.assertIn('href="/login"', response.text)
        self.assertIn("Max-Age=0", response.headers["Set-Cookie"])
        self.assertEqual(self.server.sessions.sessions, {})

    def test_refresh_token_used_elsewhere_logs_out_on_the_next_page(self):
        browser, _ = self.login("alice")
        [(sid, session)] = self.server.sessions.sessions.items()
        # Another program refreshes with the same refresh token first.
        form = urllib.parse.urlencode({"grant_type": "refresh_token", "client_id": CLIENT_ID,
                                       "client_secret": CLIENT_SECRET,
                                       "refresh_token": session.tokens.refresh_token}).encode()
        urllib.request.urlopen(self.fake.url + "/oauth2/token", form).close()
        response = browser.get(self.url + "/devices")  # our access token died with it
        self.assertEqual(response.status, 401)
        self.assertIn("Log in again", response.text)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 401)
        self.assertEqual(browser.get(self.url + "/devices").location, "/login")

    def test_failed_refresh_keeps_the_session(self):
        browser, _ = self.login("alice")
        for kind, status in (("500_html", 502), ("rate_limit", 429), ("reset", 502)):
            with self.subTest(kind=kind):
                self.fake.fail("/oauth2/token", kind)
                self.assertEqual(browser.post(self.url + "/refresh").status, status)
                self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertNoTraceback()

    def test_refresh_timeout_is_a_504_and_keeps_the_session(self):
        server = self.start_app(timeout=0.5)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="alice")[-1].status, 200)
        self.fake.fail("/oauth2/token", "hang")
        started = time.time()
        self.assertEqual(browser.post(url + "/refresh").status, 504)
        self.assertLess(time.time() - started, 2)
        self.assertEqual(browser.get(url + "/devices.json").status, 200)


class LifetimeTest(AppTestCase):

    def test_expire_in_is_read_when_expires_in_is_missing(self):
        self.fake.lifetime_fields = ("expire_in",)
        self.fake.expires_in = 7200
        browser, _ = self.login("alice")
        page = browser.get(self.url + "/").text
        shown = re.search(r"valid until: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", page)
        expiry = calendar.timegm(time.strptime(shown.group(1), "%Y-%m-%d %H:%M:%S"))
        self.assertAlmostEqual(expiry, time.time() + 7200, delta=60)

    def test_short_lived_token_is_refreshed_at_half_its_life_not_on_every_call(self):
        self.fake.expires_in = 2  # under the 60 s margin: refreshed with 1 s left
        self.fake.rate_limits = None
        browser, _ = self.login("alice")
        for _ in range(3):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 0)
        wait_until_half_life(self.server)
        for _ in range(3):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)

    def test_no_lifetime_at_all_shows_unknown_and_relies_on_code_3(self):
        self.fake.lifetime_fields = ()
        browser, _ = self.login("alice")
        self.assertIn("valid until: unknown", browser.get(self.url + "/").text)
        self.fake.expire_access_tokens()
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)

    def test_older_403_code_26_is_a_rate_limit_too(self):
        browser, _ = self.login("alice")
        for path in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
            self.fake.fail(path, "rate_limit_403")  # the limit is the user's: every line
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 429)
        self.assertIn("limit was reached", response.text)
