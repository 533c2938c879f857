"""What every answer carries, and what never leaves the server: headers, logs, limits."""

import base64
import hashlib
import os
import re
import resource
import urllib.parse

import netatmo_stdlib
from tests.fake_netatmo import FakeNetatmo, TLS_CERT
from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET, raw_exchange


def trust_test_certificate(test):
    """Have urllib trust tests/tls/cert.pem (through SSL_CERT_FILE) until the test ends."""
    saved = os.environ.get("SSL_CERT_FILE")
    test.addCleanup(lambda: os.environ.pop("SSL_CERT_FILE") if saved is None
                    else os.environ.__setitem__("SSL_CERT_FILE", saved))
    os.environ["SSL_CERT_FILE"] = TLS_CERT


class HeadersTest(AppTestCase):

    def html_pages(self):
        """Return a response of every kind of HTML page the app serves."""
        browser, hops = self.login("alice")
        return {
            "home": browser.get(self.url + "/"),
            "devices": hops[-1],
            "not found": browser.get(self.url + "/nowhere"),
            "wrong method": browser.request("PUT", self.url + "/devices"),
            "bad state": Browser().get(self.url + "/authenticate?code=x&state=y"),
            "declined": Browser().get(self.url + "/authenticate?error=access_denied"),
        }

    def test_every_html_page_carries_the_security_headers(self):
        for name, response in self.html_pages().items():
            with self.subTest(page=name):
                h = response.headers
                self.assertEqual(h["Content-Type"], "text/html; charset=utf-8")
                self.assertEqual(h["Cache-Control"], "no-store")
                self.assertEqual(h["Referrer-Policy"], "same-origin")
                self.assertEqual(h["X-Content-Type-Options"], "nosniff")
                csp = h["Content-Security-Policy"]
                self.assertIn("default-src 'none'", csp)
                self.assertIn("frame-ancestors 'none'", csp)
                self.assertEqual(int(h["Content-Length"]), len(response.body))
                self.assertIn('<meta name="viewport"', response.text)

    def test_pages_load_nothing_external_and_the_policy_allows_their_own_style(self):
        for name, response in self.html_pages().items():
            with self.subTest(page=name):
                text = response.text
                self.assertNotRegex(text, r"<script|<link|<img|<iframe|@import|url\(")
                self.assertNotRegex(text, r"(src|href)=\"(https?:)?//")
                [style] = re.findall(r"<style>(.*?)</style>", text, re.S)
                digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
                self.assertIn("style-src 'sha256-%s'" % digest,
                              response.headers["Content-Security-Policy"])

    def test_not_found_and_wrong_method(self):
        response = Browser().get(self.url + "/nowhere")
        self.assertEqual(response.status, 404)
        self.assertIn("Page not found", response.text)
        response = Browser().get(self.url + "/%3Cscript%3Ex%22'")
        self.assertIn("There is nothing at /&lt;script&gt;x&quot;&#x27; here.", response.text)
        self.assertNotIn("<script>x", response.text)
        response = Browser().request("DELETE", self.url + "/logout")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers["Allow"], "POST")
        response = Browser().post(self.url + "/devices.json")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.headers["Allow"], "GET, HEAD")

    def test_head_answers_like_get_without_a_body(self):
        response = Browser().request("HEAD", self.url + "/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")
        self.assertGreater(int(response.headers["Content-Length"]), 100)

    def test_healthz(self):
        response = Browser().get(self.url + "/healthz")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"ok\n")
        self.assertEqual(response.headers["Content-Type"], "text/plain; charset=utf-8")

    def test_post_from_another_origin_is_refused(self):
        browser, _ = self.login("alice")
        response = browser.post(self.url + "/logout", headers={"Origin": "http://evil.example"})
        self.assertEqual(response.status, 403)
        response = browser.post(self.url + "/refresh", headers={"Origin": "null"})
        self.assertEqual(response.status, 403)
        self.assertEqual(self.fake.token_requests("refresh_token"), [])
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)  # still in
        response = browser.post(self.url + "/logout", headers={"Origin": self.url})
        self.assertEqual(response.status, 303)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 401)

    def test_post_that_fetch_metadata_calls_another_site_is_refused(self):
        browser, _ = self.login("alice")
        for site in ("cross-site", "same-site"):
            with self.subTest(site=site):
                response = browser.post(self.url + "/logout",
                                        headers={"Sec-Fetch-Site": site})
                self.assertEqual(response.status, 403)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)  # still in
        response = browser.post(self.url + "/logout", headers={
            "Sec-Fetch-Site": "same-origin", "Origin": self.url})
        self.assertEqual(response.status, 303)
        self.assertEqual(browser.get(self.url + "/devices.json").status, 401)

    def test_server_header_does_not_name_the_python_version(self):
        response = Browser().get(self.url + "/healthz")
        self.assertEqual(response.headers["Server"], "netatmo_stdlib/" + netatmo_stdlib.__version__)


class ConnectionTest(AppTestCase):

    def port(self):
        return self.server.server_address[1]

    def test_keep_alive_survives_an_error_answer(self):
        data = (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = raw_exchange(self.port(), data)
        statuses = re.findall(rb"^HTTP/1.1 (\d+)", answer, re.M)
        self.assertEqual(statuses, [b"404", b"303", b"200"])
        self.assertTrue(answer.endswith(b"ok\n"))

    def test_large_body_is_refused_without_being_read(self):
        data = b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        answer = raw_exchange(self.port(), data)  # the server closes without waiting
        self.assertTrue(answer.startswith(b"HTTP/1.1 413"))
        self.assertIn(b"Connection: close", answer)

    def test_bad_content_length(self):
        for value in (b"-1", b"abc", b"1e3"):
            with self.subTest(value=value):
                data = b"POST /logout HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + \
                    b"\r\n\r\n"
                self.assertTrue(raw_exchange(self.port(), data).startswith(b"HTTP/1.1 400"))


class LogTest(AppTestCase):

    def test_log_of_a_whole_flow_holds_no_token_code_state_or_secret(self):
        browser, _ = self.login("bob")
        browser.post(self.url + "/refresh")
        browser.get(self.url + "/devices.json")
        Browser().get(self.url + "/authenticate?code=0123456789abcdef&state=guessed-state")
        raw_exchange(self.server.server_address[1],
                     b"GET /authenticate?code=fedcba9876543210 junk HTTP/1.1\r\n\r\n")
        session_id = browser.cookie()
        browser.post(self.url + "/logout")
        log = self.log.text()
        self.assertIn('"GET /authenticate" 303', log)
        self.assertIn('"GET /devices" 200', log)
        # Every cookie value: the session's id, and the login cookie's nonce and signature.
        cookies = set()
        for header in browser.set_cookies:
            if header.startswith("netatmo_done="):  # what a button did: no secret in it
                continue
            value = header.split(";", 1)[0].split("=", 1)[1]
            cookies.update(part for part in value.split(".") if not part.isdigit())
        cookies.discard("")
        self.assertIn(session_id, cookies)
        self.assertEqual(len(cookies), 3)
        secrets = self.fake.every_secret() | cookies | {
            "0123456789abcdef", "guessed-state", "fedcba9876543210"}
        for secret in secrets:
            for part in secret.split("|"):
                self.assertNotIn(part, log)
        self.assertNotIn("code=", log)
        self.assertNoTraceback()


API = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")


class KeptAliveToNetatmoTest(AppTestCase):
    """Connections to Netatmo stay open from call to call; lost ones cost no page."""

    def api_calls(self):
        return [r for path in API for r in self.fake.requests_to(path)]

    def test_device_pages_reuse_their_connections_to_netatmo(self):
        browser, _ = self.login("alice")
        for _ in range(10):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        calls = self.api_calls()
        self.assertEqual(len(calls), 33)
        # 3 calls at once, and homestatus: 4 connections at most.
        self.assertLessEqual(len(set(r.connection for r in calls)), 4)

    def test_token_requests_never_ride_on_a_kept_connection(self):
        browser, _ = self.login("alice")
        for _ in range(3):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
            self.assertEqual(browser.post(self.url + "/refresh").status, 303)
        with self.fake.lock:
            requests = list(self.fake.requests)
        first_on = {}
        for r in requests:
            first_on.setdefault(r.connection, r)
        tokens = [r for r in requests if r.path == "/oauth2/token"]
        self.assertEqual(len(tokens), 4)
        for token in tokens:  # a POST cannot be sent twice, so it takes a new connection
            self.assertIs(first_on[token.connection], token)

    def test_a_get_that_a_kept_connection_loses_is_sent_again_once(self):
        # One call per page, so that each page's call finds the last one's connection.
        # (carol has no home, so no homestatus call either.)
        self.fake.withheld_scopes = {"read_station", "read_homecoach"}
        browser, _ = self.login("carol")
        before = len(self.fake.requests_to("/api/homesdata"))
        self.fake.fail("/api/homesdata", "reset")
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertEqual(len(self.fake.requests_to("/api/homesdata")), before + 2)
        self.assertIn("the kept connection was lost", self.log.text())
        self.fake.fail("/api/homesdata", "reset", times=5)
        response = browser.get(self.url + "/devices.json")
        self.assertEqual(response.status, 502)
        self.assertIn("Netatmo could not be reached", response.json()["message"])
        self.assertEqual(len(self.fake.requests_to("/api/homesdata")), before + 4)

    def test_connections_netatmo_closed_while_idle_are_not_used(self):
        self.fake.idle_timeout = 0.2
        browser, _ = self.login("alice")
        self.assertTrue(self.fake.wait_for_closed_connections(self.fake.connections_opened))
        for _ in range(2):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        log = self.log.text()
        self.assertNotIn("failed", log)
        self.assertNotIn("lost", log)  # seen closed before use: not tried and lost

    def test_kept_connections_work_beside_more_than_1024_open_files(self):
        # select() refuses descriptors above 1023, which a busy server soon holds.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1200:
            if hard != resource.RLIM_INFINITY and hard < 1200:
                self.skipTest("this machine allows %d open files" % hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        files = []
        self.addCleanup(lambda: [f.close() for f in files])
        files.extend(open(os.devnull) for _ in range(1100))
        browser, _ = self.login("alice")
        for _ in range(2):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        self.assertLessEqual(len(set(r.connection for r in self.api_calls())), 4)  # reused

    def test_netatmo_closing_a_connection_after_its_answer_is_honoured(self):
        self.fake.requests_per_connection = 1  # every answer says Connection: close
        browser, _ = self.login("alice")
        for _ in range(3):
            self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        calls = self.api_calls()
        self.assertEqual(len(set(r.connection for r in calls)), len(calls))
        self.assertNoTraceback()


class ProxyTest(AppTestCase):
    """Corporate hosts reach Netatmo through https_proxy / http_proxy."""

    def setUp(self):
        AppTestCase.setUp(self)
        saved = {k: os.environ.get(k) for k in ("http_proxy", "https_proxy", "no_proxy",
                                                "NO_PROXY")}

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.addCleanup(restore)

    def test_calls_to_netatmo_go_through_the_proxy(self):
        # The fake also serves as the proxy: a request for http://127.0.0.2:9/... can
        # only reach it through the proxy, since nothing listens there. (Plain http
        # to another host than this one is refused at start, proxy or not.)
        os.environ["http_proxy"] = self.fake.url
        os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"
        server = self.start_app(api_url="http://127.0.0.2:9")
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        authorize = browser.get(url + "/login").location
        self.assertTrue(authorize.startswith("http://127.0.0.2:9/oauth2/authorize?"))
        back = browser.get(authorize.replace("http://127.0.0.2:9", self.fake.url),
                           headers={"X-Fake-Approve": "alice"}).location
        hops = browser.follow(back)
        self.assertEqual(hops[-1].status, 200)
        [token] = self.fake.token_requests()
        self.assertTrue(token.via_proxy)
        self.assertTrue(all(r.via_proxy for r in self.fake.requests_to("/api/homesdata")))

    def test_https_goes_through_a_tunnel_and_the_proxy_password_stays_with_the_proxy(self):
        # The fake serves as the proxy again, now with CONNECT, in front of a second
        # fake that speaks HTTPS as Netatmo does.
        trust_test_certificate(self)
        netatmo = FakeNetatmo(CLIENT_ID, CLIENT_SECRET)
        netatmo.start(tls=True)
        self.addCleanup(netatmo.stop)
        netatmo_host = "localhost:%d" % netatmo.server.server_address[1]
        os.environ["https_proxy"] = "http://someone:proxy-secret@127.0.0.1:%d" \
            % self.fake.server.server_address[1]
        os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"
        server = self.start_app(api_url="https://" + netatmo_host)
        netatmo.register_redirect_uri(server.config.redirect_uri)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="alice")[-1].status, 200)
        for _ in range(3):
            self.assertEqual(browser.get(url + "/devices.json").status, 200)
        tunnels = self.fake.requests_to(netatmo_host)
        self.assertGreaterEqual(len(tunnels), 1)  # https_proxy was used
        self.assertTrue(all(t.method == "CONNECT" for t in tunnels))
        self.assertLessEqual(len(tunnels), 4)  # the token's, then 3 kept for 12 API calls
        password = "Basic " + base64.b64encode(b"someone:proxy-secret").decode()
        self.assertTrue(all(t.headers.get("Proxy-Authorization") == password
                            for t in tunnels))
        with netatmo.lock:
            reached = list(netatmo.requests)
        self.assertEqual(len([r for r in reached if r.path in API]), 12)
        self.assertFalse([r for r in reached if "Proxy-Authorization" in r.headers])

    def test_no_proxy_is_honoured(self):
        os.environ["http_proxy"] = "http://127.0.0.1:9"  # nothing listens there
        os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1"
        server = self.start_app()
        url = "http://127.0.0.1:%d" % server.server_address[1]
        hops = Browser().follow(url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 200)


class UnparseableRequestTest(AppTestCase):

    def test_http_servers_own_errors_are_our_pages_too(self):
        port = self.server.server_address[1]
        cases = [(b"GARBAGE\r\n\r\n", b"400"),
                 (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414"),
                 (b"GET / HTTP/2.0\r\n\r\n", b"505")]
        for data, status in cases:
            with self.subTest(status=status):
                answer = raw_exchange(port, data)
                head, _, body = answer.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(b"HTTP/1.1 " + status), head)
                self.assertIn(b"Content-Security-Policy: default-src 'none'", head)
                self.assertIn(b"Connection: close", head)
                self.assertNotIn(b"<script>", body)
                self.assertNotIn(b"aaaa", body)
        self.assertNoTraceback()

    def test_any_method_on_a_known_path_is_a_405_with_allow(self):
        port = self.server.server_address[1]
        answer = raw_exchange(port, b"BREW /?<script>x HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 405"), answer[:100])
        self.assertIn(b"\r\nAllow: GET, HEAD\r\n", answer)
        self.assertNotIn(b"<script>x", answer)


class NetatmoConnectionTest(AppTestCase):
    """How we reach Netatmo: verified TLS, and no redirects that carry the token."""

    def start_tls_app(self):
        tls_fake = FakeNetatmo(CLIENT_ID, CLIENT_SECRET)
        tls_fake.start(tls=True)
        self.addCleanup(tls_fake.stop)
        server = self.start_app(api_url=tls_fake.url)
        tls_fake.register_redirect_uri(server.config.redirect_uri)
        return tls_fake, "http://127.0.0.1:%d" % server.server_address[1]

    def test_certificate_is_verified(self):
        tls_fake, url = self.start_tls_app()
        browser = Browser()
        authorize = browser.get(url + "/login").location
        back = browser.get(authorize, headers={"X-Fake-Approve": "alice"}).location
        response = browser.get(back)
        self.assertEqual(response.status, 502)
        self.assertIn("CERTIFICATE_VERIFY_FAILED", response.text)

    def test_trusted_certificate_works(self):
        trust_test_certificate(self)
        tls_fake, url = self.start_tls_app()
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="alice")[-1].status, 200)
        for _ in range(3):
            self.assertEqual(browser.get(url + "/devices.json").status, 200)
        # 12 calls, and a TLS handshake only for each connection: 3 at once at most.
        calls = [r for path in API for r in tls_fake.requests_to(path)]
        self.assertEqual(len(calls), 12)
        self.assertLessEqual(len(set(r.connection for r in calls)), 4)  # with homestatus

    def test_host_name_is_verified(self):
        trust_test_certificate(self)  # a certificate for 127.0.0.1 and localhost...
        tls_fake = FakeNetatmo(CLIENT_ID, CLIENT_SECRET)
        tls_fake.start(tls=True, host="127.0.0.2")  # ...on a server called otherwise
        self.addCleanup(tls_fake.stop)
        server = self.start_app(api_url=tls_fake.url)
        tls_fake.register_redirect_uri(server.config.redirect_uri)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        state = urllib.parse.parse_qs(urllib.parse.urlsplit(
            browser.get(url + "/login").location).query)["state"][0]
        response = browser.get(url + "/authenticate?code=abc&state=" + state)
        self.assertEqual(response.status, 502)
        self.assertIn("Netatmo could not be reached", response.text)
        self.assertEqual(tls_fake.token_requests(), [])  # the name did not match: no call

    def test_a_redirect_from_netatmo_is_not_followed_with_the_token(self):
        browser, _ = self.login("alice")
        self.fake.fail("/api/getstationsdata", "redirect")
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 200)  # that product line failed, not followed
        self.assertIn("Netatmo answered 302", response.text)
        self.assertEqual(self.fake.requests_to("/elsewhere"), [])
