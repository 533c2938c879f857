"""The browser never sees a back-channel secret (issue 21).

The back channel is what only Netatmo may see: the PKCE code_verifier, the client
secret, the access token and the refresh token. The front channel is everything the
browser receives: every URL it is sent to, every header, every page. Over whole
logins, in every mode, no back-channel value may appear in the front channel: not
raw, not percent-encoded (tokens hold "|", which is %7C in a URL), not HTML-escaped,
and not as its S256 hash. The one value derived from a secret that the browser is
meant to carry is the S256 challenge: it must be BASE64URL(SHA256(verifier)), and
differ from the state. The state, the code, the login cookie, the session id and
--once's key are front-channel values by design.
"""

import base64
import hashlib
import html
import urllib.parse

from tests.support import AppTestCase, Browser, CLIENT_SECRET
from tests.test_terminal import OnceRun


def s256(value):
    """Return BASE64URL(SHA256(value)), unpadded, as PKCE's S256 method computes it."""
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def shapes(value):
    """Return every form in which a secret could show up in a URL, a header or a page."""
    parts = [value] + ([p for p in value.split("|") if len(p) >= 16] if "|" in value else [])
    found = set()
    for part in parts:
        found.update({part, urllib.parse.quote(part, safe=""), urllib.parse.quote(part),
                      urllib.parse.quote_plus(part), html.escape(part),
                      html.escape(part, quote=False), s256(part)})
    return found


def front_channel(browsers):
    """Return everything the browsers received, as text: URLs, headers, bodies."""
    text = []
    for browser in browsers:
        for response in browser.history:
            text.append(response.url)
            text.extend("%s: %s" % header for header in response.headers.items())
            text.append(response.body.decode("utf-8", "replace"))
    return "\n".join(text)


class BackChannelTest(AppTestCase):

    def back_channel(self):
        """Return {what: value} of every back-channel secret that crossed the fake."""
        secrets = {"client_secret": CLIENT_SECRET}
        for number, (access, refresh) in enumerate(self.fake.issued):
            secrets["access token %d" % number] = access
            secrets["refresh token %d" % number] = refresh
        for number, request in enumerate(self.fake.token_requests("authorization_code")):
            if "code_verifier" in request.form:
                secrets["code_verifier %d" % number] = request.form["code_verifier"]
        return secrets

    def assertKeptApart(self, browsers, pkce=True):
        """No back-channel value in the front channel; the challenge is the verifier's."""
        front = front_channel(browsers)
        authorizations = [r.query for r in self.fake.requests_to("/oauth2/authorize")]
        verifiers = [r.form.get("code_verifier")
                     for r in self.fake.token_requests("authorization_code")]
        self.assertTrue(verifiers)
        if pkce:
            challenges = {q["state"]: q["code_challenge"] for q in authorizations}
            for verifier in verifiers:
                self.assertIsNotNone(verifier)
                challenge = s256(verifier)
                self.assertIn(challenge, challenges.values())
                for state, sent in challenges.items():
                    self.assertNotEqual(sent, state)
                # The challenge is the one hash of a secret the browser may carry.
                front = front.replace("code_challenge=" + challenge, "code_challenge=...")
        else:
            self.assertEqual(verifiers, [None] * len(verifiers))
            self.assertFalse(any("code_challenge" in q for q in authorizations))
        secrets = self.back_channel()
        self.assertGreaterEqual(len(secrets), 3)
        for what, value in sorted(secrets.items()):
            for shape in shapes(value):
                self.assertNotIn(shape, front, "%s reached the browser (as %r)"
                                 % (what, shape))
        return front

    def use_the_app(self, url, browser, login_path="/login"):
        """Log in, look at every page, renew, and meet a refusal and a stale link."""
        hops = browser.follow(url + login_path, approve_as="alice")
        self.assertEqual(hops[-1].status, 200, hops[-1].text[:300])
        for path in ("/", "/devices", "/devices.json"):
            self.assertEqual(browser.get(url + path).status, 200)
        renewed = browser.post(url + "/refresh", headers={"Origin": url})
        self.assertEqual(renewed.status, 303)
        self.assertEqual(browser.get(url + "/").status, 200)
        self.assertEqual(browser.get(url + "/devices").status, 200)
        refused = Browser()
        self.assertEqual(refused.follow(url + login_path, approve_as="deny")[-1].status, 403)
        stale = hops[-2].url  # the callback this browser already used
        self.assertEqual(browser.get(stale).status, 400)
        return [browser, refused]

    def test_web_mode_with_pkce(self):
        browsers = self.use_the_app(self.url, Browser())
        self.fake.refuse_without_state = True
        unconfirmed = Browser()
        unconfirmed.follow(self.url + "/login", approve_as="deny")
        unconfirmed.post(self.url + "/authenticate", headers={"Origin": self.url})
        front = self.assertKeptApart(browsers + [unconfirmed])
        self.assertIn("Cancel this login", front)
        self.assertIn("This login link is not valid", front)
        self.assertIn("You declined", front)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)

    def test_web_mode_without_pkce(self):
        server = self.start_app(pkce=False)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        self.assertKeptApart(self.use_the_app(url, Browser()), pkce=False)

    def once(self, *args):
        """Log in to a --once run in a browser; return the browser."""
        run = OnceRun(self, *args)
        browser = Browser()
        hops = browser.follow(run.wait_for_login_url(), approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        self.assertEqual(run.finish()[0], 0)
        return browser

    def test_once_with_pkce(self):
        self.assertKeptApart([self.once()])

    def test_once_without_pkce(self):
        self.assertKeptApart([self.once("--no-pkce")], pkce=False)

    def test_a_print_token_login_made_in_the_browser(self):
        run = OnceRun(self, mode="--print-token")
        browser = Browser()
        hops = browser.follow(run.wait_for_login_url(), approve_as="alice")
        self.assertIn("The terminal has your access token", hops[-1].text)
        status, out, _ = run.finish()
        self.assertEqual(status, 0)
        self.assertIn(out.strip(), dict(self.fake.issued))  # the token went to stdout only
        self.assertKeptApart([browser])
