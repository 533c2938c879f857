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
import re
import signal
import subprocess
import sys
import urllib.parse

from tests.support import AppTestCase, Browser, CLIENT_ID, CLIENT_SECRET
from tests.test_bad_days import PROGRAM, query_of
from tests.test_cli import clean_environment
from tests.test_terminal import OnceRun, TokenFileCase


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


def answers_of(browsers):
    """Return every answer the browsers received, as text: status, headers, bodies."""
    return "\n".join("%d\n%s\n%s" % (r.status, "\n".join("%s: %s" % h for h in r.headers.items()),
                                     r.body.decode("utf-8", "replace"))
                     for browser in browsers for r in browser.history)


def key_shapes(key):
    """Return the forms in which the owner's key could show up: raw, %-encoded, escaped."""
    return {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key),
            html.escape(key)}


class OwnersKeyTest(TokenFileCase):
    """The owner's key (/login?k=...) is printed once, and reaches no answer, log or trace
    (issue 24, item 2)."""

    def assertKeyOnlyPrinted(self, key, browsers, printed, elsewhere):
        """The key is in no answer, once in what was printed, nowhere in elsewhere."""
        for where, text in (("an answer", answers_of(browsers)), ("the log", elsewhere)):
            for shape in key_shapes(key):
                at = text.find(shape)
                self.assertEqual(at, -1, "the key reached %s: ...%s..." % (
                    where, text[max(0, at - 300):at + 60]))
        self.assertEqual(printed.count(key), 1, printed)

    def every_kind_of_answer(self, origin, owners, browser):
        """As the owner and as strangers: pages, refusals, a cancel, errors."""
        strangers = Browser()
        for path in ("/", "/login", "/login?k=wrong", "/devices", "/devices.json",
                     "/authenticate?error=x", "/authenticate?code=c&state=s", "/nowhere"):
            strangers.get(origin + path)
        strangers.request("DELETE", origin + "/devices")
        strangers.follow(origin + "/login", approve_as="deny")
        self.fake.refuse_without_state = False
        browser.follow(owners, approve_as="deny")  # a refusal with the state
        self.fake.refuse_without_state = True
        browser.follow(owners, approve_as="deny")  # without it: the person decides
        browser.post(origin + "/authenticate", headers={"Origin": origin})  # cancels
        self.fake.refuse_without_state = False
        hops = browser.follow(owners, approve_as="alice")
        browser.get(hops[-2].url)  # the callback again: a stale link
        port = origin.rsplit(":", 1)[1]
        Browser().get("http://localhost:%s/login?k=%s" % (port, query_of(owners)["k"]))
        return [strangers, browser]

    def test_web_mode_with_a_token_file(self):
        process = subprocess.Popen(
            [sys.executable, PROGRAM, "--port", "0", "--api-url", self.fake.url,
             "--token-file", self.path, "--trace"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, universal_newlines=True,
            env=clean_environment(NETATMO_CLIENT_ID=CLIENT_ID,
                                  NETATMO_CLIENT_SECRET=CLIENT_SECRET))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        start = [process.stdout.readline() for _ in range(3)]
        self.fake.register_redirect_uri(start[1].split()[-1])
        owners = start[2].split()[-1]
        origin = owners.split("/login")[0]
        browser = Browser()
        browsers = self.every_kind_of_answer(origin, owners, browser)
        self.assertEqual(browser.get(origin + "/devices").status, 200)
        self.assertEqual(browser.post(origin + "/refresh", headers={"Origin": origin})
                         .status, 303)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        self.assertIn("(d) exchange it for a token", err)  # the trace was on
        self.assertKeyOnlyPrinted(query_of(owners)["k"], browsers + [Browser()],
                                  "".join(start) + out, err)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)

    def test_once_refusals_cancel_and_errors(self):
        for refuse_without_state in (False, True):
            with self.subTest(refuse_without_state=refuse_without_state):
                self.fake.refuse_without_state = refuse_without_state
                run = OnceRun(self, "--token-file", self.path, "--trace")
                printed = run.process.stderr.readline()
                self.fake.register_redirect_uri(run.process.stderr.readline().split()[-1])
                owners = re.search(r"open (\S+) in a browser", printed).group(1)
                origin = owners.split("/login")[0]
                browser, strangers = Browser(), Browser()
                for path in ("/", "/login", "/devices", "/authenticate?code=c&state=s"):
                    strangers.get(origin + path)
                hops = browser.follow(owners, approve_as="deny")
                if refuse_without_state:
                    self.assertIn("Cancel this login", hops[-1].text)
                    browser.post(origin + "/authenticate", headers={"Origin": origin})
                status, out, err = run.finish()
                self.assertEqual(status, 1, err)
                self.assertKeyOnlyPrinted(query_of(owners)["k"], [browser, strangers],
                                          printed, out + err)

    def test_once_login(self):
        run = OnceRun(self, "--token-file", self.path, "--trace")
        printed = run.process.stderr.readline()
        self.fake.register_redirect_uri(run.process.stderr.readline().split()[-1])
        owners = re.search(r"open (\S+) in a browser", printed).group(1)
        browser = Browser()
        self.assertEqual(browser.follow(owners, approve_as="alice")[-1].status, 200)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertKeyOnlyPrinted(query_of(owners)["k"], [browser], printed, out + err)
