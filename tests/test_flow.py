"""The login flow, steps (a) to (d), and every way it can go wrong."""

import base64
import hashlib
import html
import re
import threading
import time
import urllib.parse

from tests.support import AppTestCase, Browser, CLIENT_ID, flood_login, rss_mb


def query_of(url):
    """Return the query parameters of a URL as a dict of single values."""
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


class LoginFlowTest(AppTestCase):

    def test_login_redirects_to_netatmo_with_every_parameter(self):
        response = Browser().get(self.url + "/login")
        self.assertEqual(response.status, 302)
        location = response.location
        self.assertTrue(location.startswith(self.fake.url + "/oauth2/authorize?"))
        params = query_of(location)
        self.assertEqual(params["client_id"], CLIENT_ID)
        self.assertEqual(params["redirect_uri"], self.url + "/authenticate")
        self.assertEqual(params["scope"], "read_station read_thermostat read_homecoach")
        self.assertIn("scope=read_station%20read_thermostat%20read_homecoach", location)
        self.assertEqual(params["response_type"], "code")
        self.assertEqual(params["code_challenge_method"], "S256")
        self.assertRegex(params["state"], r"^[A-Za-z0-9_-]{43}$")  # 256 bits, base64url
        self.assertRegex(params["code_challenge"], r"^[A-Za-z0-9_-]{43}$")

    def test_each_login_gets_its_own_state_and_cookie(self):
        first, second = Browser().get(self.url + "/login"), Browser().get(self.url + "/login")
        self.assertNotEqual(query_of(first.location)["state"],
                            query_of(second.location)["state"])
        self.assertNotEqual(first.headers["Set-Cookie"], second.headers["Set-Cookie"])

    def test_full_flow_lists_the_devices(self):
        browser, hops = self.login("alice")
        self.assertEqual([h.status for h in hops], [302, 302, 303, 200])
        self.assertEqual(hops[2].location, "/devices")  # the code leaves the address bar
        self.assertIn("MyStation", hops[-1].text)
        self.assertIn("Villa", hops[-1].text)

    def test_token_request_carries_the_same_redirect_uri_and_the_pkce_verifier(self):
        self.login("alice")
        authorize = self.fake.requests_to("/oauth2/authorize")[0].query
        [token] = self.fake.token_requests("authorization_code")
        self.assertEqual(token.form["redirect_uri"], authorize["redirect_uri"])
        self.assertEqual(token.form["client_id"], CLIENT_ID)
        self.assertEqual(token.form["client_secret"], "test-secret")
        digest = hashlib.sha256(token.form["code_verifier"].encode()).digest()
        self.assertEqual(base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
                         authorize["code_challenge"])
        self.assertTrue(token.headers["Content-Type"].startswith(
            "application/x-www-form-urlencoded"))

    def test_session_id_changes_at_login_and_the_old_one_stops_working(self):
        browser, _ = self.login("alice")
        before = browser.cookie()
        self.assertIsNotNone(before)
        self.login("alice", browser)  # the same browser logs in again
        self.assertNotEqual(browser.cookie(), before)
        stale = Browser()
        stale.cookies["127.0.0.1"] = {"netatmo_session": before}
        self.assertEqual(stale.get(self.url + "/devices.json").status, 401)
        self.assertEqual(len(self.server.sessions.sessions), 1)

    def test_cookie_attributes(self):
        browser, _ = self.login("alice")
        # At /login the login cookie; at the return, the session's id, and the login
        # cookie expired.
        login, session, expired = [[a.strip() for a in header.split(";")]
                                   for header in browser.set_cookies]
        for attributes in (login, session, expired):
            self.assertIn("HttpOnly", attributes)
            self.assertIn("SameSite=Lax", attributes)
            self.assertNotIn("Secure", attributes)
        self.assertTrue(login[0].startswith("netatmo_login="))
        self.assertIn("Path=/authenticate", login)
        self.assertIn("Max-Age=600", login)
        nonce, issued, signature = login[0].split("=", 1)[1].split(".")
        self.assertGreaterEqual(len(nonce), 22)  # at least 128 bits
        self.assertAlmostEqual(int(issued), time.time(), delta=60)
        self.assertEqual(len(signature), 43)  # HMAC-SHA256
        self.assertTrue(session[0].startswith("netatmo_session="))
        self.assertIn("Path=/", session)
        self.assertGreaterEqual(len(session[0].split("=", 1)[1]), 43)
        self.assertEqual(expired[:1] + expired[3:5], ["netatmo_login=", "Path=/authenticate",
                                                      "Max-Age=0"])

    def test_cookie_is_secure_when_the_redirect_uri_is_https(self):
        server = self.start_app(redirect_uri="https://netatmo.example.org/authenticate")
        url = "http://127.0.0.1:%d/login" % server.server_address[1]
        response = Browser().get(url, headers={"Host": "netatmo.example.org"})
        self.assertEqual(response.status, 302)
        self.assertIn("Secure", [a.strip() for a in response.headers["Set-Cookie"].split(";")])

    def test_login_on_another_origin_first_moves_to_the_redirect_uris_origin(self):
        port = self.server.server_address[1]
        response = Browser().get("http://localhost:%d/login" % port)
        self.assertEqual(response.status, 302)
        self.assertEqual(response.location, self.url + "/login")
        self.assertIsNone(response.headers.get("Set-Cookie"))
        self.assertEqual(self.fake.requests_to("/oauth2/authorize"), [])

    def test_consent_page_form_as_a_person_uses_it(self):
        browser = Browser()
        authorize = browser.get(self.url + "/login").location
        consent = browser.get(authorize)
        self.assertEqual(consent.status, 200)
        self.assertIn("Yes, I accept", consent.text)
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">',
                                 consent.text))
        fields = {k: html.unescape(v) for k, v in fields.items()}
        fields.update(user="carol", decision="approve")
        back = browser.post(self.fake.url + "/oauth2/authorize", body=urllib.parse.urlencode(
            fields).encode(), headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(back.status, 302)
        hops = browser.follow(back.location)
        self.assertEqual(hops[-1].status, 200)
        self.assertIn("MyRemoteStation", hops[-1].text)

    def test_two_users_at_once_see_only_their_own_devices(self):
        results = {}

        def run(user):
            browser, hops = self.login(user)
            results[user] = (hops[-1].text, browser.get(self.url + "/devices.json").json())

        threads = [threading.Thread(target=run, args=(u,)) for u in ("alice", "dave")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alice_page, alice_json = results["alice"]
        dave_page, dave_json = results["dave"]
        self.assertIn("MyStation", alice_page)
        self.assertNotIn("A BIG HOME", alice_page)
        self.assertIn("A BIG HOME", dave_page)
        self.assertNotIn("MyStation", dave_page)
        alice_ids = {d["id"] for d in alice_json["devices"]}
        dave_ids = {d["id"] for d in dave_json["devices"]}
        self.assertEqual(len(dave_ids), 139)
        self.assertFalse(alice_ids & dave_ids)

    def test_home_page_shows_login_link_then_expiry_and_scopes_never_the_token(self):
        browser = Browser()
        page = browser.get(self.url + "/")
        self.assertIn('href="/login"', page.text)
        self.assertIn("Log in with Netatmo", page.text)
        self.login("alice", browser)
        page = browser.get(self.url + "/").text
        self.assertIn('href="/devices"', page)
        self.assertIn("Access token valid until: 20", page)
        self.assertIn("read_station read_thermostat read_homecoach", page)
        self.assertIn('action="/logout"', page)
        for secret in self.fake.every_secret():
            self.assertNotIn(secret, page)

    def test_logout_forgets_the_session_on_the_server_and_expires_the_cookie(self):
        browser, _ = self.login("alice")
        cookie = browser.cookie()
        response = browser.post(self.url + "/logout")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.location, "/")
        self.assertIn("Max-Age=0", response.headers["Set-Cookie"])
        replay = Browser()
        replay.cookies["127.0.0.1"] = {"netatmo_session": cookie}
        self.assertEqual(replay.get(self.url + "/devices").status, 303)
        self.assertEqual(replay.get(self.url + "/devices.json").status, 401)


class CallbackTest(AppTestCase):
    """Step (c): the callback must come from this browser's own login."""

    def start_login(self):
        """Begin a login and get Netatmo's answer, without going back to the app yet."""
        browser = Browser()
        authorize = browser.get(self.url + "/login").location
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        return browser, back

    def assertRefusedWithoutTokenRequest(self, response):
        self.assertEqual(response.status, 400)
        self.assertIn('href="/login"', response.text)
        self.assertEqual(self.fake.token_requests(), [])

    def test_forged_state_never_reaches_token_endpoint(self):
        browser, back = self.start_login()
        params = query_of(back)
        forged = "%s/authenticate?code=%s&state=%s" % (self.url, params["code"], "A" * 43)
        self.assertRefusedWithoutTokenRequest(browser.get(forged))

    def test_missing_state_never_reaches_token_endpoint(self):
        browser, back = self.start_login()
        response = browser.get("%s/authenticate?code=%s" % (self.url, query_of(back)["code"]))
        self.assertRefusedWithoutTokenRequest(response)

    def test_missing_cookie_never_reaches_token_endpoint(self):
        _, back = self.start_login()
        self.assertRefusedWithoutTokenRequest(Browser().get(back))

    def test_callback_in_another_browser_never_reaches_token_endpoint(self):
        _, back = self.start_login()
        other = Browser()
        other.get(self.url + "/login")  # the other browser has a login of its own
        self.assertRefusedWithoutTokenRequest(other.get(back))

    def test_replayed_state_never_reaches_token_endpoint_twice(self):
        browser, back = self.start_login()
        cookie = browser.cookies["127.0.0.1"]["netatmo_login"]
        self.assertEqual(browser.get(back).status, 303)
        self.assertEqual(len(self.fake.token_requests()), 1)
        again = browser.get(back)
        self.assertEqual(again.status, 400)
        self.assertEqual(len(self.fake.token_requests()), 1)
        # Even with the login cookie the callback came with (copied, or kept by a
        # browser that ignored its expiry), the state works once.
        replay = Browser()
        replay.cookies["127.0.0.1"] = {"netatmo_login": cookie}
        self.assertEqual(replay.get(back).status, 400)
        self.assertEqual(len(self.fake.token_requests()), 1)

    def test_expired_state_never_reaches_token_endpoint(self):
        clock = [1000000.0]
        self.server.logins.clock = lambda: clock[0]
        browser, back = self.start_login()
        clock[0] += 10 * 60 + 1
        self.assertRefusedWithoutTokenRequest(browser.get(back))

    def test_state_still_valid_just_before_ten_minutes(self):
        clock = [1000000.0]
        self.server.logins.clock = lambda: clock[0]
        browser, back = self.start_login()
        clock[0] += 10 * 60 - 1
        self.assertEqual(browser.get(back).status, 303)

    def test_repeated_state_parameter_is_refused(self):
        browser, back = self.start_login()
        params = query_of(back)
        url = "%s/authenticate?code=%s&state=%s&state=x" % (self.url, params["code"],
                                                            params["state"])
        self.assertRefusedWithoutTokenRequest(browser.get(url))

    def test_user_declines(self):
        browser = Browser()
        hops = browser.follow(self.url + "/login", approve_as="deny")
        self.assertEqual(hops[-1].status, 403)
        self.assertIn("You declined", hops[-1].text)
        self.assertIn('href="/login"', hops[-1].text)
        self.assertEqual(self.fake.token_requests(), [])

    def test_redirect_uri_mismatch_is_named_with_its_cause(self):
        self.fake.redirect_uris.clear()
        hops = Browser().follow(self.url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 400)
        self.assertIn("redirect_uri_mismatch", hops[-1].text)
        self.assertIn("registered", hops[-1].text)
        self.assertEqual(self.fake.token_requests(), [])

    def test_unknown_error_is_named_escaped(self):
        browser, _ = self.start_login()
        page = browser.get(self.url + "/authenticate?error=%3Cscript%3Ex&error_description="
                                      "%3Cb%3Eno%3C%2Fb%3E%20%22now%22").text
        self.assertNotIn("<script>x", page)
        self.assertIn("an unreadable error", page)
        self.assertNotIn("<b>no", page)
        self.assertIn("It said: &quot;&lt;b&gt;no&lt;/b&gt; &quot;now&quot;&quot;.", page)
        browser, _ = self.start_login()
        page = browser.get(self.url + "/authenticate?error=temporarily_unavailable").text
        self.assertIn("temporarily_unavailable", page)

    def test_code_already_used_gives_a_fresh_login_link(self):
        browser, back = self.start_login()
        self.fake.fail("/oauth2/token", "invalid_grant")
        response = browser.get(back)
        self.assertEqual(response.status, 400)
        self.assertIn("already used or expired", response.text)
        self.assertIn('href="/login"', response.text)

    def test_expired_code_at_netatmo(self):
        self.fake.code_ttl = -1
        hops = Browser().follow(self.url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 400)
        self.assertIn("already used or expired", hops[-1].text)

    def test_wrong_client_secret_says_so(self):
        self.fake.clients[CLIENT_ID] = "another-secret"
        hops = Browser().follow(self.url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 502)
        self.assertIn("client id or client secret is wrong", hops[-1].text)
        self.assertIn("few minutes", hops[-1].text)

    def test_netatmo_faults_at_the_token_endpoint(self):
        cases = [("500_html", 502, "Netatmo"), ("non_json", 502, "not JSON"),
                 ("no_token", 502, "without a token"), ("reset", 502, "Netatmo"),
                 ("rate_limit", 429, "limit"), ("too_many_connections", 429, "limit")]
        for kind, status, words in cases:
            with self.subTest(kind=kind):
                browser, back = self.start_login()
                self.fake.fail("/oauth2/token", kind)
                response = browser.get(back)
                self.assertEqual(response.status, status, response.text)
                self.assertIn(words, response.text)
                self.assertIn("failing side is Netatmo" if status == 502 else "Try again later",
                              response.text)
        self.assertNoTraceback()

    def test_token_endpoint_timeout_is_a_504(self):
        self.server = self.start_app(timeout=0.5)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        browser, back = self.start_login()
        self.fake.fail("/oauth2/token", "hang")
        started = time.time()
        response = browser.get(back)
        self.assertLess(time.time() - started, 2)
        self.assertEqual(response.status, 504)
        self.assertIn("Netatmo did not answer within 0.5 seconds", response.text)

    def test_netatmo_unreachable_is_a_502(self):
        browser, back = self.start_login()
        self.fake.stop()
        response = browser.get(back)
        self.assertEqual(response.status, 502)
        self.assertIn("Netatmo could not be reached", response.text)


class SessionStoreTest(AppTestCase):
    """Sessions end after 24 hours idle."""

    def test_session_idle_for_24_hours_is_forgotten(self):
        clock = [1000000.0]
        self.server.sessions.clock = lambda: clock[0]
        browser, _ = self.login("alice")
        clock[0] += 23 * 3600
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        clock[0] += 23 * 3600  # used an hour ago: still in
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        clock[0] += 24 * 3600 + 1
        self.assertEqual(browser.get(self.url + "/devices.json").status, 401)
        self.assertEqual(self.server.sessions.sessions, {})


class LoginStateTest(AppTestCase):
    """A login in progress lives in a signed cookie: nothing to fill, evict or forge."""

    def login_cookie(self, browser):
        return browser.cookies["127.0.0.1"]["netatmo_login"]

    def assertRefusedWithoutTokenRequest(self, response, before=0):
        self.assertEqual(response.status, 400)
        self.assertIn("This login link is not valid", response.text)
        self.assertIn('href="/login"', response.text)  # a fresh login
        self.assertEqual(len(self.fake.token_requests()), before)

    def test_a_tampered_login_cookie_never_reaches_the_token_endpoint(self):
        browser, back = CallbackTest.start_login(self)
        nonce, issued, signature = self.login_cookie(browser).split(".")
        other = "B" if nonce[0] != "B" else "C"
        for forged in (other + nonce[1:] + "." + issued + "." + signature,
                       nonce + "." + str(int(issued) + 1) + "." + signature,
                       nonce + "." + issued + "." + signature[:-1] + other,
                       nonce + "." + issued, nonce + "." + issued + "." + signature + ".x",
                       nonce + ".\u00b2." + signature, ""):
            with self.subTest(cookie=forged):
                browser.cookies["127.0.0.1"]["netatmo_login"] = forged
                self.assertRefusedWithoutTokenRequest(browser.get(back))
        self.assertNoTraceback()

    def test_a_login_begun_before_a_restart_gets_a_fresh_link(self):
        browser, back = CallbackTest.start_login(self)
        restarted = self.start_app()  # a new run: a new key
        self.fake.register_redirect_uri(restarted.config.redirect_uri)
        port = "127.0.0.1:%d" % restarted.server_address[1]
        moved = back.replace("127.0.0.1:%d" % self.server.server_address[1], port)
        self.assertRefusedWithoutTokenRequest(browser.get(moved))

    def test_two_tabs_the_later_login_wins(self):
        browser = Browser()
        first = browser.get(self.url + "/login").location
        second = browser.get(self.url + "/login").location  # replaces the login cookie
        first_back = browser.get(first, headers={"X-Fake-Approve": "alice"}).location
        second_back = browser.get(second, headers={"X-Fake-Approve": "alice"}).location
        self.assertRefusedWithoutTokenRequest(browser.get(first_back))
        self.assertEqual(browser.get(second_back).status, 303)
        self.assertEqual(len(self.fake.token_requests()), 1)

    def test_login_and_failed_callbacks_leave_the_session_alone(self):
        browser, _ = self.login("alice")
        self.assertEqual(browser.get(self.url + "/login").status, 302)  # a link elsewhere
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        _, back = CallbackTest.start_login(self)
        params = query_of(back)
        wrong = "%s/authenticate?code=%s&state=%s" % (self.url, params["code"], "A" * 43)
        self.assertRefusedWithoutTokenRequest(browser.get(wrong), before=1)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        browser.cookies["127.0.0.1"]["netatmo_login"] = "x.1.y"  # tampered
        self.assertRefusedWithoutTokenRequest(browser.get(back), before=1)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(len(self.server.sessions.sessions), 1)

    def test_netatmos_answer_is_the_persons_only_with_their_login_cookie_and_state(self):
        declined = "/authenticate?error=access_denied"
        self.assertRefusedWithoutTokenRequest(Browser().get(self.url + declined))
        browser, back = CallbackTest.start_login(self)
        self.assertRefusedWithoutTokenRequest(browser.get(self.url + declined + "&state=x"))
        state = query_of(back)["state"]
        response = browser.get(self.url + declined + "&state=" + state)
        self.assertEqual(response.status, 403)
        self.assertIn("You declined", response.text)
        self.assertIn("Max-Age=0", response.headers["Set-Cookie"])  # that login is over
        browser, _ = CallbackTest.start_login(self)
        self.assertEqual(browser.get(self.url + declined).status, 403)  # no state: Netatmo's

    def test_used_states_are_remembered_within_a_bound_oldest_dropped_first(self):
        self.server.logins.max_used = 3
        nonces = []
        for _ in range(4):
            browser, _ = self.login("alice")
            nonces.append(browser.set_cookies[0].split("=", 1)[1].split(".")[0])
        self.assertEqual(list(self.server.logins.used), nonces[1:])

    def test_a_flood_of_logins_from_the_persons_own_address_keeps_nothing(self):
        browser = Browser()
        authorize = browser.get(self.url + "/login").location  # a person, at Netatmo now
        before = rss_mb()
        flood_login(self.server.server_address[1], 3000)  # from the person's address
        growth = rss_mb() - before
        print("\n3,000 GET /login: RSS %+.2f MB" % growth)
        self.assertLess(growth, 2)
        self.assertEqual(len(self.server.logins.used), 0)
        self.assertEqual(self.server.sessions.sessions, {})
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        self.assertEqual(browser.follow(back)[-1].status, 200)

    def test_without_pkce_the_login_carries_no_challenge_and_no_verifier(self):
        self.fake.refuse_pkce = True  # should Netatmo ever refuse the extra parameters
        hops = Browser().follow(self.url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 400)
        self.assertIn("invalid_request", hops[-1].text)
        self.assertIn("code_challenge is not supported", hops[-1].text)
        self.assertIn("--no-pkce", hops[-1].text)
        server = self.start_app(pkce=False)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        hops = Browser().follow(url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        authorize = self.fake.requests_to("/oauth2/authorize")[-1].query
        self.assertNotIn("code_challenge", authorize)
        [token] = self.fake.token_requests("authorization_code")
        self.assertNotIn("code_verifier", token.form)
