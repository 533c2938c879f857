#!/usr/bin/env python3
"""netatmo_stdlib: log in to the Netatmo cloud with OAuth2 and list your devices.

One file, standard library only, CPython 3.6 to 3.13. Run it, open the address it
prints, log in at Netatmo, and it shows the devices of your account.

It is also a lesson. Part 1 is the OAuth2 authorization-code flow (RFC 6749, 4.1)
in the order it happens, each line that does a step marked (a) to (e): the browser
asks to log in (a) and is sent to Netatmo (b), where the person approves; Netatmo
sends it back with a code (c), which counts only with the `state` of this browser's
signed login cookie; we trade the code, with our client secret and the PKCE verifier,
for tokens (d), which stay in memory under a new session id; and each page calls the
device endpoints with `Authorization: Bearer` and lists one row per device (e).
--trace tells each step as it happens, every secret hidden. --once and --print-token
run the same flow in a terminal (with --paste, on a host no browser can reach: the
person pastes back the address Netatmo sent the browser to); --token-file keeps the
login for scripts to share.

What this protects: the login against forged callbacks (state), the code against
interception (PKCE), the tokens (never in a URL, a page or a log line), the session
cookie (HttpOnly, SameSite=Lax, Secure over https). What it does not: it is a small
teaching server, not a hardened production one. Use it on loopback; elsewhere serve
TLS (--certfile, --keyfile) or put it behind a TLS-terminating proxy you trust.

The map of the file, one line per banner, in order. Part 2 opens with what the
program touches (hosts, ports, files, secrets, children, input), each in the one
place where it happens, and a table of every limit: a reviewer reads both in two
screens. Then it follows the data: the settings, the wire, the tokens and their
renewal, the login state, the file that shares the login, the devices, the pages
and the handler; then what tells it all on a terminal, and main().

Part 1, the flow
    (a) Receive the authorization request    login(): a signed login cookie
    (b) Redirect to Netatmo                  authorize_url(): the consent page
    (c) Receive the code                     authenticate(): the state's check
    (d) Exchange it for a token              exchange_code(), start_session()
    (e) Retrieve and output the devices      show_devices(), fetch_device_list()
Part 2, what makes it hold
    What it touches                          network, files, secrets, children: where
    Limits                                   every limit once, and what happens past it
    Configuration                            settings read once, checked; exit statuses
    Talking to Netatmo                       the wire: post_form(), get_json()
    Sessions and their tokens                refreshed in time, one at a time
    The signed login state                   who may start a login; whose answer it is
    The routes beside the flow               after a login; start page, renew, log out
    The token file                           one login shared with scripts, locked
    Devices and their status                 the merge rules, rooms, the product table
    Pages                                    HTML, every value escaped
    The HTTP handler                         routing, reading, writing, error pages
    The trace and the terminal               --trace, and what may reach a terminal
    The terminal modes                       --once, --print-token, and --paste
    The command line                         main()
"""

import argparse
import base64
import contextlib
import html
import http.client
import io
import json
import logging
import os
import re
import select
import shutil
import socket
import socketserver
import stat
import sys
import threading
import time
import urllib.parse
from collections import Counter, OrderedDict, namedtuple
from http.server import BaseHTTPRequestHandler, HTTPServer

__version__ = "1.0"

log = logging.getLogger("netatmo_stdlib")

# What the flow names: Netatmo's address, the scopes a device list needs, the two
# cookies, and the endpoints that list devices, each with the scope it needs and
# what a person calls that product line.
DEFAULT_API_URL = "https://api.netatmo.com"
DEFAULT_SCOPES = "read_station read_thermostat read_homecoach"
COOKIE_NAME = "netatmo_session"      # the logged-in session's id
LOGIN_COOKIE_NAME = "netatmo_login"  # a login in progress, signed (see Logins)
DEVICE_ENDPOINTS = (
    ("homesdata", "read_thermostat", "homes (energy, security and other home devices)"),
    ("getstationsdata", "read_station", "weather stations"),
    ("gethomecoachsdata", "read_homecoach", "home coaches"),
)


# ==== Part 1, the flow ============================================================
# Each step builds its own HTTP message; what it needs but does not teach (the wire,
# caps, locks, escaping, the trace), it calls from Part 2 by a name that says so.


# ---- (a) Receive the authorization request --------------------------------------

def login(server, request):
    """GET /login: (a) receive the authorization request, then (b) redirect to Netatmo.

    A login starts here, and the server keeps nothing of it: the browser keeps it,
    in a signed cookie. The session cookie, if any, is left alone: a link to /login
    from another site must not log the person out; only a login that succeeds
    replaces it.
    """
    config, logins = server.config, server.logins
    owner = may_start_login(server, request)  # the printed address, on the right host
    cookie, nonce = logins.start(owner)  # (a) a new login: a nonce and its time, signed
    request.set_cookie(config.login_cookie_name, cookie, config.login_cookie_path,  # (a)
                       logins.ttl)
    # The state and the PKCE verifier are derived from the nonce in that signed cookie,
    # under its key: the web app stores nothing for a login in progress.
    state = logins.state(nonce)
    verifier = logins.code_verifier(nonce) if config.pkce else None
    challenge = code_challenge(verifier) if verifier else None
    server.trace.login(request, cookie, state, challenge)  # told before the answer
    request.redirect(302, authorize_url(config, state, challenge))  # (b) to Netatmo


# ---- (b) Redirect to Netatmo -----------------------------------------------------

def authorize_url(config, state, code_challenge=None):
    """Return the address of Netatmo's consent page for this login: (b)'s message.

    The person logs in and approves there, never here. Netatmo then sends the
    browser back to redirect_uri with a code, and with the state.
    """
    params = [
        ("client_id", config.client_id),
        ("redirect_uri", config.redirect_uri),
        ("scope", config.scopes),
        ("state", state),
        ("response_type", "code"),
    ]
    if code_challenge is not None:  # PKCE, unless --no-pkce
        params += [("code_challenge", code_challenge), ("code_challenge_method", "S256")]
    # quote_via=quote writes the spaces between scopes as %20, as Netatmo expects.
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    return config.api_url + "/oauth2/authorize?" + query  # (b) the consent page


# ---- (c) Receive the code --------------------------------------------------------

def authenticate(server, request):
    """GET /authenticate: (c) receive the code, then (d) exchange it for tokens.

    The code counts only with the login cookie signed here, younger than 10
    minutes, and the state derived from its nonce, once: this is what stops a
    forged or replayed callback. Otherwise nothing is sent to Netatmo.
    """
    config, logins = server.config, server.logins
    nonce, owner, problem = logins.check(request.cookie(config.login_cookie_name))
    state, code = request.param("state"), request.param("code")
    matches = state_matches(logins, nonce, state)
    if request.param("error") is not None:  # Netatmo's "no", or a link that says so
        raise refusal(server, request, nonce, owner, problem, state, matches)
    if not (code and matches and logins.use(nonce)):  # (c) and only once
        raise not_this_login(server, request, code, state, problem, matches)
    verifier = logins.code_verifier(nonce) if config.pkce else None
    with server.trace.accepted(request, code, state) as told, server.exchanges.guard(request):
        tokens = exchange_code(server, code, verifier, told)
        sid, session = start_session(server, request, tokens, told)
    after_login(server, request, session, owner)


def state_matches(logins, nonce, state):
    """Return True if state is the one derived from this login's nonce: (c)'s check.

    In constant time, so that how long a wrong state takes says nothing of how much
    of it was right. The callback and a pasted address (--paste) both call it.
    """
    import hmac  # late, as hashlib: a run on a saved login, a cron job's, never needs them
    return nonce is not None and state is not None and hmac.compare_digest(
        state.encode(), logins.state(nonce).encode())  # (c) the state of this login?


# ---- (d) Exchange it for a token -------------------------------------------------

def exchange_code(server, code, code_verifier, told):
    """Return the Tokens Netatmo trades for the code: (d)'s POST, server to server.

    The code is worth nothing alone: only with the client secret, and the PKCE
    verifier, does Netatmo trade it for an access token (for about 3 hours) and a
    refresh token (for the next one), out of the browser's sight.
    """
    config = server.config
    form = [
        ("grant_type", "authorization_code"),
        ("client_id", config.client_id),
        ("client_secret", config.client_secret),
        ("code", code),
        # Byte for byte the redirect_uri of step (b), or Netatmo says invalid_grant.
        ("redirect_uri", config.redirect_uri),
    ]
    if code_verifier is not None:  # PKCE, unless --no-pkce
        form.append(("code_verifier", code_verifier))
    return server.netatmo.post_form("/oauth2/token", form, told)  # (d) code for tokens


def start_session(server, request, tokens, told):
    """Keep the tokens in this server's memory under a new session id; return both.

    The browser holds only the id, which means nothing to anyone else, and a new
    one at each login: a new login replaces the browser's old session.
    """
    config = server.config
    old = request.cookie(config.cookie_name)
    if old:
        server.sessions.delete(old)
    sid, session = server.sessions.create(tokens)
    request.set_cookie(config.cookie_name, sid)  # (d) the browser gets the session id only
    request.expire_cookie(config.login_cookie_name, config.login_cookie_path)  # login over
    told.session_started(config, sid)
    return sid, session


# ---- (e) Retrieve and output the devices -----------------------------------------

def show_devices(server, request):
    """GET /devices: (e) retrieve the devices, and output them as a page."""
    _, session = logged_in(server, request)
    if session is None:
        return request.redirect(303, "/login")
    found = device_list(server, session, "as /devices")
    request.send_html(200, devices_page(found, done_before(server, request)))  # (e) a page


def devices_json(server, request):
    """GET /devices.json: (e) the same list, for programs."""
    _, session = logged_in(server, request)
    if session is None:
        return request.send_json(401, {"error": "not_authenticated",
                                       "message": "Log in at /login first."})
    found = device_list(server, session, "as /devices.json")
    request.send_json(200, device_list_json(found))  # (e) the devices, as JSON


def fetch_device_list(server, session, told):
    """Return a DeviceList fresh from Netatmo: (e)'s calls, all at once, merged.

    Each device endpoint that the granted scopes allow is called, and, for each
    home that has modules, /api/homestatus for its devices' status. The calls go at
    once, so a page waits for the slowest, not for the sum of them. Home ids come
    from homesdata: the first fetch of a session asks for the statuses once it has
    answered; later fetches send all their calls at once.
    """
    lines, not_granted = readable_lines(session.tokens.scope, server.config.scopes)
    known = list(session.home_ids)  # the homes homesdata named last time; none at first
    answers = session.get_all(server.netatmo, told, [("/api/" + name, ()) for name in lines] +
                              [("/api/homestatus", [("home_id", h)]) for h in known])  # (e)
    bodies, failed = sort_answers(lines, answers, not_granted)
    homes = home_ids(bodies["homesdata"])[:MAX_HOMES] if "homesdata" in bodies else known
    later = [h for h in homes if h not in known]
    statuses = dict(zip(known + later, answers[len(lines):] + session.get_all(
        server.netatmo, told, [("/api/homestatus", [("home_id", h)]) for h in later])))  # (e)
    session.home_ids = homes
    statuses = home_statuses(statuses, homes if "homesdata" in bodies else [])
    return DeviceList(devices_of(bodies, statuses),  # (e) one row per device
                      not_granted, status_problems(bodies.get("homesdata"), statuses),
                      failed, time.time())


def bearer_get(client, path, params, access_token, told):
    """Return the body of GET path?params, the access token in the Authorization header:
    (e)'s message. Never in the URL, where logs and browser histories would keep it."""
    return client.get_json(path, params, {"Authorization": "Bearer " + access_token},  # (e)
                           told)


# ==== Part 2, what makes it hold ===================================================


# ---- What it touches --------------------------------------------------------------
# Every contact of this program with the world, and the one place where it happens.
#
# Network out  NetatmoClient.call(): the only sender (on KeptAliveConnections). Host:
#     --api-url or NETATMO_API_URL, default https://api.netatmo.com; through
#     https_proxy, http_proxy, no_proxy when set (urllib's ProxyHandler). Plain http
#     only to this host (loopback()). Redirects are never followed. The token POST
#     carries client_id, client_secret and the code with its PKCE verifier, or the
#     refresh token; each GET carries Authorization: Bearer. TLS: ssl's default
#     context (the system's CA store, host names checked), KeptAliveConnections.
# Network in   listen() -> Server: --host or NETATMO_HOST (127.0.0.1), --port or
#     NETATMO_PORT (8000): whoever reaches that address and port. Routes:
#     Handler.routes. TLS with --certfile and --keyfile: tls_context(), TLS 1.2+.
#     --paste, and a terminal run on a good saved login, bind nothing.
# Files        read: --client-secret-file (read_client_secret: private, 64 KB), the
#     certificate and key (tls_context, by OpenSSL), --token-file (TokenFile.load:
#     the user's, private, 1 MB). Written: --token-file through a new 0600 sibling
#     .netatmo-tokens-*.tmp renamed over it, then its folder fsynced (TokenFile.save,
#     sync_folder); PATH.lock beside it, 0600, never removed (FileLock). With --open:
#     HOME/netatmo-login-*/login.html, 0700 folder, 0600 page (redirect_page), both
#     removed when the run ends (browser_login). Nothing else: no log file, no cache.
# Secrets      the client secret: Config, then the token POST only; out of os.environ
#     once read. Access and refresh tokens: Session.tokens in memory, and --token-file;
#     the access token goes only in the Bearer header (or to stdout, --print-token);
#     the refresh token only to the token POST. Session ids: SessionStore and the
#     browser's cookie. The cookie key: Logins.key, memory only, new at each start.
#     The owner's key: Server.login_key, printed once (or in --open's private page).
#     --trace and the log show none of them (hidden(), log_message()).
# Children     the browser, with --open only (webbrowser; os.startfile on Windows).
#     No subprocess of its own, no eval, exec or pickle. Late imports, each for the
#     runs that need it: urllib.request, ssl and concurrent.futures (the first call
#     to Netatmo), hashlib and hmac (a login), tempfile (writing --token-file, --open),
#     unicodedata (--once's table), webbrowser and pathlib (--open), queue (--paste).
# From the browser  Handler: a head capped by CappedHead, a body by read_body(), one
#     value per parameter (param()) and per cookie (cookie()), Origin on every POST
#     (check_origin()), the login cookie's signature and age (Logins.check()).
# From Netatmo  NetatmoClient.call(): JSON only, 8 MB, one deadline, lone surrogates
#     cleaned (parsed()); each field read for its type where it is used (tokens_of,
#     listed(), finite(), the status readers): another shape lists nothing, or fails
#     one product line (sort_answers), never the page.
# Signing      Logins: HMAC-SHA256 under a key made at start signs the login cookie,
#     and derives the state and the PKCE verifier. Cookies: Handler.set_cookie():
#     HttpOnly, SameSite=Lax; over https Secure and __Host-.
# Limits       below, in LIMITS: each written once, with what happens past it.


# ---- Limits -----------------------------------------------------------------------
# (name, value, what happens past it). A class's limit is its attribute, bound from
# here (tests set it there); the others are read as LIMIT[name].
LIMITS = (
    ("Handler.max_head", 16 * 1024, "bytes of a request's header lines: 431"),
    ("Handler.max_header_lines", 50, "header lines of a request: 431"),
    ("Handler.max_body", 64 * 1024, "bytes of a request body: 413, unread"),
    ("Handler.max_requests", 100, "requests on one connection: the last says close"),
    ("Handler.keep_alive_seconds", 5.0, "seconds a kept connection waits idle: closed"),
    ("Server.request_queue_size", 128, "connections waiting to be accepted: the kernel's"),
    ("Server.max_connections", 256, "open connections in all: one more closed, unread"),
    ("Server.max_connections_per_client", 64, "open connections of one address: the same"),
    ("Exchanges.max_refused", 10, "codes Netatmo refused per address and window: 429"),
    ("Exchanges.window", 60.0, "seconds over which refused codes are counted"),
    ("Exchanges.max_addresses", 10000, "addresses counted: the oldest forgotten"),
    ("Logins.ttl", 600, "seconds a login may take: its callback or paste refused"),
    ("Logins.max_used", 10000, "used states remembered: the oldest forgotten"),
    ("SessionStore.session_ttl", 24 * 3600, "seconds a session may go unused: forgotten"),
    ("SessionStore.max_sessions", 10000, "sessions: the least recently used dropped"),
    ("Session.refresh_margin", 60, "seconds before expiry a token is renewed (or half life)"),
    ("NetatmoClient.max_workers", 16, "calls to Netatmo at once, for all pages: more wait"),
    ("KeptAliveConnections.max_answer", 8 * 1024 * 1024, "bytes of an answer: 502"),
    ("KeptAliveConnections.max_idle", 32, "idle connections kept per host: more closed"),
    ("KeptAliveConnections.max_idle_seconds", 30.0, "seconds idle: closed, not reused"),
    ("homes", 50, "homes whose status a page asks: the others named, status unknown"),
    ("lifetime", 366 * 24 * 3600, "seconds an expires_in may say: more is unknown"),
    ("TokenFile.lock_wait", 60.0, "seconds to wait for PATH.lock: 503, exit 6, no refresh"),
    ("TokenFile.max_read", 1024 * 1024, "bytes of --token-file read: more is corrupt"),
    ("Config.max_secret_file", 64 * 1024, "bytes of --client-secret-file: refused"),
    ("PastedLines.max_bytes", 8 * 1024, "bytes of a pasted line: said, asked again"),
    ("PastedLines.max_wrong", 3, "pastes that are not this login's answer: exit 1"),
    ("text", 200, "characters kept of what others write: Netatmo's messages, a 404's path"),
    ("error_name", 64, "characters of an error name shown, else 'an unreadable error'"),
    ("firmware", 40, "characters of a firmware version shown"),
    ("names", 10, "devices or homes named in one line: 'and N more'"),
    ("done_digits", 12, "digits of the done cookie's time (a day old at most): ignored"),
    ("--port", (0, 65535), "the setting's range: exit 2"),
    ("--timeout", (0.1, 600), "seconds for a whole call to Netatmo: 504, exit 4"),
    ("--client-timeout", (0.1, 3600), "seconds for a request's head to arrive: closed"),
    ("--cache-seconds", (0, 86400), "seconds a device list is shown again"),
    ("--wait", (0.1, 86400), "seconds a terminal run waits for a login: exit 3"),
)
LIMIT = dict((name, value) for name, value, _ in LIMITS)


# ---- Configuration ----------------------------------------------------------------
# Every setting read once (flag, else environment, else default) and checked: a wrong
# one stops the start with one line. And the exit statuses a script can test.

APPS_PAGE = "https://dev.netatmo.com/apps/"


class Exit(object):
    """How a terminal run (--once, --print-token) ends: the one table of exit statuses."""

    DONE, LOGIN_FAILED, BAD_SETTING, NO_LOGIN, NETATMO_FAILED, PARTIAL, NOT_KEPT = range(7)
    INTERRUPTED = 130
    meanings = (
        (DONE, "done"),
        (LOGIN_FAILED, "declined, cancelled, or the login failed"),
        (BAD_SETTING, "a bad setting"),
        (NO_LOGIN, "no login within --wait"),
        (NETATMO_FAILED, "Netatmo failed"),
        (PARTIAL, "a partial list: some product lines failed; the rest is printed"),
        (NOT_KEPT, "the login could not be kept in --token-file (locked past the wait, "
                   "or the rotated\n       pair could not be saved); what was fetched "
                   "is printed"),
        (INTERRUPTED, "Ctrl-C"),
    )


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Config(object):
    """Every setting, read once from flags, else the environment, else a default."""

    max_secret_file = LIMIT["Config.max_secret_file"]

    def __init__(self, client_id, client_secret, host="127.0.0.1", port=8000,
                 redirect_uri=None, scopes=DEFAULT_SCOPES, api_url=DEFAULT_API_URL,
                 timeout=10.0, cache_seconds=30.0, once=False, json_output=False,
                 wait=300.0, token_file=None, no_browser=False, open_browser=False,
                 certfile=None, keyfile=None, client_timeout=30.0, pkce=True,
                 print_token=False, trace=False, wide=False, paste=False):
        self.client_id = client_id
        self.client_secret = client_secret
        self.host = host
        self.port = port
        self.scopes = scopes
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.once = once                  # terminal mode: one login, print, exit
        self.json_output = json_output    # --once prints JSON instead of a table
        self.wait = wait                  # --once gives up after this many seconds
        self.token_file = TokenFile(token_file) if token_file else None
        self.no_browser = no_browser      # --once never falls back to a browser login
        self.open_browser = open_browser
        self.certfile = certfile          # serve https with this certificate and key
        self.keyfile = keyfile
        self.client_timeout = client_timeout  # a browser's request must arrive within this
        self.pkce = pkce                  # send a PKCE challenge and verifier (RFC 7636)
        self.print_token = print_token    # terminal mode: print an access token, exit
        self.trace = trace                # tell each step of the flow on stderr
        self.wide = wide                  # --once's table keeps every column
        self.paste = paste                # terminal mode: log in by pasting an address
        self.redirect_uri = redirect_uri or self.default_redirect_uri()

    def default_redirect_uri(self):
        """Return http(s)://HOST:PORT/authenticate, naming a wildcard host localhost."""
        return self.local_url("/authenticate")

    def local_url(self, path):
        """Return the URL of path on this server, naming a wildcard host localhost."""
        host = "localhost" if self.host in ("", "0.0.0.0", "::") else self.host
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d%s" % ("https" if self.certfile else "http", host, self.port, path)

    def redirect_uri_line(self):
        """Return what to say of the redirect URI at start: register it, or not (a demo)."""
        if self.api_url == DEFAULT_API_URL:
            return "the redirect URI to register at %s is %s" % (APPS_PAGE, self.redirect_uri)
        return "--api-url is not Netatmo's: no app registration applies to it (a test " \
               "cloud, a demo); the redirect URI is " + self.redirect_uri

    def in_clear_line(self):
        """Return the warning for a server that the network reaches over plain http, or None.

        Behind a TLS-terminating proxy the redirect URI is https: no warning then.
        """
        if loopback(self.host) or self.certfile or self.secure_cookies:
            return None
        return ("listening on %s over plain http: the cookies travel in clear on the "
                "network; serve https with --certfile and --keyfile, or put a TLS proxy in "
                "front and set --redirect-uri https://..." % (self.host or "every address"))

    @property
    def terminal(self):
        """Return True in the terminal modes: one login, print, exit."""
        return self.once or self.print_token

    @property
    def origin(self):
        """Return the scheme://host:port the browser must use: the redirect URI's."""
        return origin_of(self.redirect_uri)

    @property
    def secure_cookies(self):
        """Return True when the browser reaches us over https."""
        return self.redirect_uri.startswith("https://")

    @property
    def cookie_name(self):
        """Return the session cookie's name: with the __Host- prefix over https.

        A browser keeps a __Host- cookie only if it came over https, with Secure,
        Path=/ and no Domain: no page on another port or subdomain can set one.
        """
        return ("__Host-" if self.secure_cookies else "") + COOKIE_NAME

    @property
    def done_cookie_name(self):
        """Return the name of the cookie that tells the next page what a button did."""
        return ("__Host-" if self.secure_cookies else "") + "netatmo_done"

    @property
    def login_cookie_name(self):
        """Return the login cookie's name: with the __Host- prefix over https.

        __Secure- would let a sibling subdomain plant one with Domain= (login CSRF);
        __Host- forbids Domain and wants Path=/, so over https its Path is /.
        """
        return ("__Host-" if self.secure_cookies else "") + LOGIN_COOKIE_NAME

    @property
    def login_cookie_path(self):
        """Return the login cookie's Path: / over https (__Host- wants it), else
        /authenticate, the one page that reads it."""
        return "/" if self.secure_cookies else "/authenticate"


def origin_of(url):
    """Return the lower-case origin of a URL, without the scheme's default port."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.lower()
    default = {"http": ":80", "https": ":443"}.get(parts.scheme)
    if default and netloc.endswith(default):
        netloc = netloc[:-len(default)]
    return "%s://%s" % (parts.scheme, netloc)


def same_origin(url, host):
    """Return True if a Host header names the same host and port as url."""
    scheme = urllib.parse.urlsplit(url).scheme
    try:
        return origin_of("%s://%s" % (scheme, host)) == origin_of(url)
    except ValueError:  # a Host header that is no host at all
        return False


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr and exit status 2."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            # Name the unknown flags only, never a value: after a space or an "=", it
            # may be a secret.
            flags = [a.split("=", 1)[0] for a in message.split(":", 1)[1].split()
                     if a.startswith("-")]
            if "--client-secret" in flags:
                raise ConfigError("there is no --client-secret flag, so that the secret "
                                  "never shows in ps: set NETATMO_CLIENT_SECRET, or pass "
                                  "--client-secret-file PATH")
            message = "unknown flag %s" % " ".join(flags or ["(a stray value)"])
        raise ConfigError(message + " (see --help)")


def argument_parser():
    """Return the command line parser; each flag names its environment variable."""
    parser = ArgumentParser(
        prog="netatmo_stdlib.py", allow_abbrev=False,
        description="Log in to Netatmo with OAuth2 and list the devices of your account.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  web app:        NETATMO_CLIENT_ID=... NETATMO_CLIENT_SECRET=... python3 netatmo_stdlib.py
                  then open http://127.0.0.1:8000/
  try it here:    make demo-once, or python3 tests/demo.py --once: no account needed
  terminal:       python3 netatmo_stdlib.py --once --open
  for a script:   python3 netatmo_stdlib.py --once --json --token-file ~/.netatmo.json
                  (later runs use the saved login without a browser)
  a token:        curl -H "Authorization: Bearer $(python3 netatmo_stdlib.py
                  --print-token --token-file ~/.netatmo.json --no-browser)" ...
  over SSH:       ssh -L 8000:127.0.0.1:8000 host, run --once there, open the URL here
  no browser can reach the host: python3 netatmo_stdlib.py --once --paste --token-file
                  ~/.netatmo.json, then paste the address the browser ends at
  https on a LAN: python3 netatmo_stdlib.py --host 0.0.0.0 --certfile c.pem --keyfile k.pem
                  --redirect-uri https://box.lan:8000/authenticate
exit status of --once and --print-token:
""" + "".join("  %3d  %s\n" % row for row in Exit.meanings))
    add = parser.add_argument
    add("--client-id", help="your app's client id (env NETATMO_CLIENT_ID or NETATMO_APP_ID)")
    add("--client-secret-file", metavar="PATH",
        help="a file holding your app's client secret (env NETATMO_CLIENT_SECRET holds "
             "the secret itself; there is no flag for the value: argv shows in ps)")
    add("--host", help="address to listen on (env NETATMO_HOST, default 127.0.0.1)")
    add("--port", help="port to listen on (env NETATMO_PORT, default 8000)")
    add("--redirect-uri", help="the redirect URI registered for your app (env "
        "NETATMO_REDIRECT_URI, default http://HOST:PORT/authenticate)")
    add("--scopes", help="space-separated scopes (env NETATMO_SCOPES, default %r)"
        % DEFAULT_SCOPES)
    add("--api-url", help="Netatmo's base URL (env NETATMO_API_URL, default %s)"
        % DEFAULT_API_URL)
    add("--timeout", help="seconds to wait for each call to Netatmo (env "
        "NETATMO_TIMEOUT, default 10)")
    add("--cache-seconds", help="seconds a fetched device list is shown again without "
        "asking Netatmo; 0 turns the cache off (env NETATMO_CACHE_SECONDS, default 30)")
    add("--client-timeout", metavar="SECONDS", help="close a connection whose request "
        "does not arrive within this long, idle or slow (env NETATMO_CLIENT_TIMEOUT, "
        "default 30)")
    add("--certfile", metavar="PATH", help="serve https with this certificate (PEM); "
        "needs --keyfile")
    add("--keyfile", metavar="PATH", help="the private key of --certfile (PEM)")
    add("--no-pkce", action="store_true", help="leave PKCE's code_challenge out of the "
        "login, should Netatmo ever refuse it (env NETATMO_PKCE=0)")
    add("--trace", action="store_true", help="tell each step of the OAuth2 flow on stderr as "
        "it happens, every secret hidden (env NETATMO_TRACE=1)")
    add("--open", action="store_true", help="open the address in a web browser")
    terminal = parser.add_argument_group("terminal mode")
    terminal.add_argument("--once", action="store_true", help="wait for one login, print "
                          "the devices on stdout, exit")
    terminal.add_argument("--print-token", action="store_true", help="print a valid access "
                          "token on stdout and exit, calling no device endpoint: for "
                          "scripts, with --token-file")
    terminal.add_argument("--json", action="store_true", help="with --once: print JSON, "
                          "as /devices.json, instead of a table; with --print-token: "
                          "the token, its expires_at and scope")
    terminal.add_argument("--wide", action="store_true", help="with --once: every column of "
                          "the table, however wide the terminal")
    terminal.add_argument("--wait", metavar="SECONDS", help="with --once or --print-token: "
                          "give up after this long without a login (default 300)")
    terminal.add_argument("--token-file", metavar="PATH", help="save the tokens here (0600) "
                          "after each login and refresh; with --once or --print-token, log "
                          "in from it without a browser when it holds a refresh token")
    terminal.add_argument("--no-browser", action="store_true", help="with --once or "
                          "--print-token: never fall back to a browser login; exit 1 "
                          "instead")
    terminal.add_argument("--paste", action="store_true", help="with --once or --print-token, "
                          "on a host no browser can reach: print Netatmo's address, and read "
                          "back the address the browser ended at; nothing listens")
    add("--version", action="version", version="%(prog)s " + __version__)
    return parser


def read_config(argv, environ):
    """Return a validated Config from flags, else environment, else defaults."""
    args = argument_parser().parse_args(argv)

    def setting(flag_value, *names, **kw):
        if flag_value is not None:
            return flag_value
        for name in names:
            if environ.get(name):
                return environ[name]
        return kw.get("default")

    client_id = setting(args.client_id, "NETATMO_CLIENT_ID", "NETATMO_APP_ID")
    if not client_id or not client_id.strip():
        raise ConfigError("no client id: pass --client-id or set NETATMO_CLIENT_ID "
                          "(your app's id at %s)" % APPS_PAGE)
    client_secret = read_client_secret(args.client_secret_file, environ)
    environ.pop("NETATMO_CLIENT_SECRET", None)  # read once: the browser does not inherit it

    # NETATMO_HOST, not HOST: tcsh exports HOST as the machine's name, which would
    # put the server on the network without anyone asking.
    host = setting(args.host, "NETATMO_HOST", default="127.0.0.1")
    port = number(setting(args.port, "NETATMO_PORT", default="8000"), "--port", "NETATMO_PORT",
                  "a port number", *LIMIT["--port"], whole=True)

    timeout = number(setting(args.timeout, "NETATMO_TIMEOUT", default="10"), "--timeout",
                     "NETATMO_TIMEOUT", "a number of seconds", *LIMIT["--timeout"])

    cache_seconds = number(setting(args.cache_seconds, "NETATMO_CACHE_SECONDS", default="30"),
                           "--cache-seconds", "NETATMO_CACHE_SECONDS", "a number of seconds",
                           *LIMIT["--cache-seconds"])

    scopes = " ".join(setting(args.scopes, "NETATMO_SCOPES", default=DEFAULT_SCOPES).split())
    if not scopes or not all(s.replace("_", "").isalpha() and s.islower()
                             for s in scopes.split()):
        raise ConfigError("bad scopes %r: pass --scopes or set NETATMO_SCOPES to scope "
                          "names such as %r" % (scopes, DEFAULT_SCOPES))

    api_url = setting(args.api_url, "NETATMO_API_URL", default=DEFAULT_API_URL)
    check_url(api_url, "--api-url", "NETATMO_API_URL", "e.g. %s" % DEFAULT_API_URL)
    if api_url.lower().startswith("http:") and not loopback(urllib.parse.urlsplit(
            api_url).hostname):  # through a proxy too: the proxy would see them
        raise ConfigError("--api-url %s is plain http to another host: the client secret "
                          "and the tokens would travel in clear; use https (or a loopback "
                          "address for a test cloud)" % api_url)
    redirect_uri = setting(args.redirect_uri, "NETATMO_REDIRECT_URI")
    if redirect_uri is not None:
        check_url(redirect_uri, "--redirect-uri", "NETATMO_REDIRECT_URI",
                  "e.g. http://127.0.0.1:8000/authenticate")
        if not urllib.parse.urlsplit(redirect_uri).path.endswith("/authenticate"):
            raise ConfigError("bad redirect URI %r: it must end in /authenticate, the path "
                              "this program answers on; fix --redirect-uri or "
                              "NETATMO_REDIRECT_URI" % redirect_uri)
    client_timeout = number(setting(args.client_timeout, "NETATMO_CLIENT_TIMEOUT",
                                    default="30"),
                            "--client-timeout", "NETATMO_CLIENT_TIMEOUT", "a number of seconds",
                            *LIMIT["--client-timeout"])
    wait = number(setting(args.wait, default="300"), "--wait", None, "a number of seconds",
                  *LIMIT["--wait"])
    if bool(args.certfile) != bool(args.keyfile):
        raise ConfigError("--certfile and --keyfile go together: pass both to serve https")
    if args.once and args.print_token:
        raise ConfigError("--once and --print-token are two modes: pick one")
    for flag, value in (("--json", args.json), ("--wait", args.wait),
                        ("--no-browser", args.no_browser), ("--paste", args.paste)):
        if value and not (args.once or args.print_token):
            raise ConfigError("%s works with --once or --print-token only" % flag)
    if args.wide and not args.once:
        raise ConfigError("--wide works with --once only")
    if args.paste and (args.open or args.no_browser):
        raise ConfigError("--paste is a login by hand: it goes with neither %s"
                          % ("--open (print the address, and open it yourself)" if args.open
                             else "--no-browser (which forbids any login)"))
    if args.paste and port == 0 and redirect_uri is None:
        raise ConfigError("--paste with --port 0 has no redirect URI to give Netatmo: pass "
                          "the one registered for your app, as --redirect-uri")
    if args.no_browser and not args.token_file:
        raise ConfigError("--no-browser needs --token-file: without a saved login, the "
                          "only way in is a login in the browser")
    pkce = not args.no_pkce and environ.get("NETATMO_PKCE", "1").strip() != "0"
    trace = args.trace or environ.get("NETATMO_TRACE", "").strip() == "1"
    config = Config(client_id.strip(), client_secret, host, port, redirect_uri, scopes,
                    api_url, timeout, cache_seconds, args.once, args.json, wait,
                    args.token_file, args.no_browser, args.open, args.certfile, args.keyfile,
                    client_timeout, pkce, args.print_token, trace, args.wide, args.paste)
    if config.token_file:  # before anything can refresh, and rotate the saved pair
        config.token_file.check_writable()
    return config


def number(text, flag, variable, meaning, lowest, highest, whole=False):
    """Return a setting's text as a number from lowest to highest, or raise ConfigError."""
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = None
    if value is None or not lowest <= value <= highest:  # NaN fails the test too
        where = flag + (" or %s" % variable if variable else "")
        raise ConfigError("bad %s %r: set %s to %s from %g to %g"
                          % (flag, text, where, meaning, lowest, highest))
    return value


def read_client_secret(path, environ):
    """Return the client secret from the file at path, else NETATMO_CLIENT_SECRET."""
    if path is None:
        secret = environ.get("NETATMO_CLIENT_SECRET", "").strip()
        if not secret:
            raise ConfigError("no client secret: pass --client-secret-file PATH or set "
                              "NETATMO_CLIENT_SECRET (your app's secret at %s)" % APPS_PAGE)
        return secret
    try:  # without waiting: a FIFO planted there cannot hang the start
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            info = os.fstat(f.fileno())
            problem = "is not a regular file" if not stat.S_ISREG(info.st_mode) \
                else not_private(info)
            if problem:  # as ssh refuses a private key that others can read
                raise ConfigError("--client-secret-file %r %s; it holds your app's secret: "
                                  "chmod 600 it" % (path, problem))
            raw = f.read(Config.max_secret_file + 1)
        secret = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read --client-secret-file %r: %s" %
                          (path, getattr(e, "strerror", None) or e))
    if len(raw) > Config.max_secret_file:
        raise ConfigError("--client-secret-file %r is larger than %d KB: it should hold "
                          "the secret alone" % (path, Config.max_secret_file // 1024))
    if not secret:
        raise ConfigError("--client-secret-file %r is empty: put your app's client secret "
                          "in it" % path)
    return secret


def loopback(host):
    """Return True if host is this machine only: 127.0.0.0/8, ::1 or the name localhost."""
    if host.lower() == "localhost":
        return True
    for family, this_host in ((socket.AF_INET, None), (socket.AF_INET6, "::1")):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return packed[0] == 127 if this_host is None else packed == socket.inet_pton(
            family, this_host)
    return False


def check_url(url, flag, variable, example):
    """Raise ConfigError unless url is an absolute http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.fragment or any(c.isspace() for c in url)):
        raise ConfigError("bad URL %r: pass %s or set %s to an http(s) URL (%s)"
                          % (url, flag, variable, example))


# ---- Talking to Netatmo -----------------------------------------------------------
# The wire the steps send on: kept-alive connections, verified certificates, capped
# and checked answers, and Netatmo's errors as one exception that says what happened.

class NetatmoError(Exception):
    """Netatmo refused a call or could not be reached.

    `error` is the OAuth2 error name of the token endpoint (e.g. "invalid_grant"),
    `code` the number of an /api error envelope (e.g. 13), `status` the HTTP status
    Netatmo answered with (None if it did not answer), `timeout` whether we gave up
    waiting, `elsewhere` whether nothing answered at an --api-url that is not
    Netatmo's own. The message is safe to show: it never holds a token or a secret.
    """

    def __init__(self, message, status=None, error=None, code=None, timeout=False,
                 elsewhere=False):
        Exception.__init__(self, message)
        self.message = message
        self.status = status
        self.error = error
        self.code = code
        self.timeout = timeout
        self.elsewhere = elsewhere

    @property
    def rate_limited(self):
        """Return True when Netatmo said we called it too often."""
        return (self.status == 429 or self.code in (11, 26)
                or self.error == "too_many_connections")


# Tokens are replaced as a whole, never field by field: a thread that reads
# `session.tokens` sees either the old pair or the new one, not a mix.
Tokens = namedtuple("Tokens", "access_token refresh_token expires_at scope lifetime")


class NetatmoClient(object):
    """The only code that sends anything to Netatmo: a form POST, or a GET with headers."""

    max_workers = LIMIT["NetatmoClient.max_workers"]  # more threads only fight for the GIL

    def __init__(self, config, trace=None):
        self.config = config
        self.trace = trace  # --trace tells each call; a Trace without a stream is silent
        self.connections = KeptAliveConnections()
        self.opener = None   # built by the first call: start-up does not need urllib
        self.workers = None  # the threads that make calls at once, started by the first
        self.lock = threading.Lock()  # both are made once, whichever thread comes first

    def build_opener(self):
        """Return the urllib opener for calls to Netatmo, importing urllib.request now.

        Its handlers: proxies from https_proxy, http_proxy and no_proxy; requests
        prepared by urllib's HTTP and HTTPS handlers, then sent on our kept-alive
        connections, HTTPS with certificate verification; non-2xx answers raised as
        HTTPError. There is no redirect handler, on purpose: urllib would carry the
        Authorization header, and so the access token, to wherever a redirect points.
        """
        import urllib.request
        opener = urllib.request.OpenerDirector()
        for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                        urllib.request.HTTPSHandler(), self.connections,
                        urllib.request.HTTPDefaultErrorHandler(),
                        urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        return opener

    def close(self):
        """Close the connections kept open to Netatmo, and let the workers go."""
        self.connections.close()
        if self.workers is not None:
            self.workers.shutdown(wait=False)

    def in_parallel(self, function, calls):
        """Call function(*arguments) for each of calls at once; return [(result,
        exception)] in their order.

        The first runs in the calling thread, the others in worker threads that
        stay from call to call: starting three new threads for every page cost
        about a fifth of the app's CPU under load.
        """
        with self.lock:
            if self.workers is None:
                from concurrent.futures import ThreadPoolExecutor
                self.workers = ThreadPoolExecutor(self.max_workers)
        later = [self.workers.submit(outcome, function, *call) for call in calls[1:]]
        return [outcome(function, *call) for call in calls[:1]] + [f.result() for f in later]

    def post_form(self, path, form, told):
        """POST a form to Netatmo's token endpoint; return the Tokens it answers with."""
        started = time.time()
        try:
            tokens = tokens_of(self.call("POST", path, data=urllib.parse.urlencode(form)),
                               self.config.scopes)
        except NetatmoError as error:
            told.token_post(self.config.api_url + path, form, started, error=error)
            raise
        told.token_post(self.config.api_url + path, form, started, tokens=tokens)
        return tokens

    def get_json(self, path, params, headers, told):
        """GET path?params with headers; return the `body` of Netatmo's answer (an object).

        A body that is a list (seen nowhere, and documented nowhere) lists nothing.
        """
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        started = time.time()
        try:
            answer = self.call("GET", url, headers=headers)
            if not isinstance(answer, dict) or not isinstance(answer.get("body"),
                                                              (dict, list)):
                raise NetatmoError("Netatmo's %s answered without a body." % path, status=200)
        except NetatmoError as error:
            told.api_call(self.config.api_url + url, headers, started, error=error)
            raise
        told.api_call(self.config.api_url + url, headers, started, body=answer["body"])
        return answer["body"] if isinstance(answer["body"], dict) else {}

    def call(self, method, path, data=None, headers=None):
        """Send one request to Netatmo and return its JSON answer, or raise NetatmoError."""
        with self.lock:
            if self.opener is None:
                self.opener = self.build_opener()  # imports urllib.request and urllib.error
        request = urllib.request.Request(self.config.api_url + path, method=method,
                                         headers=dict(headers or {}))
        if data is not None:
            request.data = data.encode("utf-8")
            request.add_header("Content-Type",
                               "application/x-www-form-urlencoded;charset=UTF-8")
        started = time.time()
        status = None
        try:
            with self.opener.open(request, timeout=self.config.timeout) as response:
                status = response.code
                raw = response.read()
        except urllib.error.HTTPError as e:
            status = e.code
            try:
                raw = e.read()
            except (OSError, ValueError, http.client.HTTPException):
                raw = b""
            finally:
                e.close()
        except (OSError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            timed_out = isinstance(reason, socket.timeout) or "timed out" in str(reason)
            log.warning("netatmo %s %s failed: %s", method, path, reason)
            if timed_out:
                raise NetatmoError("Netatmo did not answer within %g seconds."
                                   % self.config.timeout, timeout=True)
            if self.config.api_url != DEFAULT_API_URL and isinstance(
                    reason, (ConnectionRefusedError, socket.gaierror)):  # nothing there
                raise NetatmoError("Netatmo could not be reached at --api-url %s (%s): it is "
                                   "not Netatmo's own address, and nothing answers there; "
                                   "check --api-url or NETATMO_API_URL."
                                   % (self.config.api_url, reason), elsewhere=True)
            raise NetatmoError("Netatmo could not be reached (%s)." % reason)
        finally:
            if status is not None and not self.trace.on:  # --trace tells it, once
                log.info("netatmo %s %s -> %d in %.0f ms", method, path, status,
                         (time.time() - started) * 1000)
        try:
            answer = parsed(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
            raise NetatmoError("Netatmo answered %s with something that is not JSON."
                               % status, status=status)
        if status == 200:
            return answer
        raise error_from_answer(status, answer)


SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parsed(text):
    """Return the JSON value of an answer of Netatmo's, every lone surrogate made U+FFFD.

    json.loads lets "\\ud800" through as a lone surrogate, which no page, log or JSON
    can encode: one in a device name failed every page. This one place, where all of
    Netatmo's strings come in, cleans them all, keys too: the value written again, in
    which every surrogate left is a lone one, replaced, and read again.
    """
    answer = json.loads(text)
    if SURROGATE_ESCAPE.search(text):  # none without an escape of one
        answer = json.loads(SURROGATE.sub("\ufffd", json.dumps(answer, ensure_ascii=False)))
    return answer


def tokens_of(answer, requested_scopes):
    """Return the Tokens of the token endpoint's answer, or raise NetatmoError."""
    if not isinstance(answer, dict) or not token_like(answer.get("access_token")) \
            or not token_like(answer.get("refresh_token")):
        raise NetatmoError("Netatmo's token endpoint answered without a token.", status=200)
    lifetime = lifetime_of(answer)
    scope = answer.get("scope")
    if isinstance(scope, str):
        scope = scope.replace(",", " ").split()
    if not isinstance(scope, list):
        scope = requested_scopes.split()
    return Tokens(answer["access_token"], answer["refresh_token"],
                  None if lifetime is None else time.time() + lifetime,
                  [s for s in scope if isinstance(s, str)], lifetime)


def token_like(value):
    """Return True for a string that can be a token: printable ASCII, no spaces.

    Anything else could not travel in an Authorization header, or would break it.
    """
    return isinstance(value, str) and bool(value) and all(33 <= ord(c) <= 126 for c in value)


def lifetime_of(answer):
    """Return the seconds a token answer says the access token lives, or None: unknown.

    Unknown too: a lifetime that is no number, NaN, infinite or over a year. We then
    refresh when Netatmo says the token expired (code 3), not on every page.
    """
    try:
        lifetime = float(answer.get("expires_in", answer.get("expire_in")))
    except (TypeError, ValueError, OverflowError):  # OverflowError: a 400-digit number
        return None
    year = LIMIT["lifetime"]
    return lifetime if -year <= lifetime <= year else None  # NaN fails the test too


def error_from_answer(status, answer):
    """Return the NetatmoError for a JSON error answer of either of Netatmo's shapes."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):  # the /api envelope: {"error": {"code": 13, "message": ...}}
        code = error.get("code")
        message = str(error.get("message") or "no message")[:LIMIT["text"]]
        return NetatmoError("Netatmo answered %s, code %s: %s" % (status, code, message),
                            status=status, code=code if isinstance(code, int) else None)
    if isinstance(error, str):  # the OAuth2 shape: {"error": "invalid_grant"}
        return NetatmoError("Netatmo answered %s: %s" % (status, error[:LIMIT["text"]]),
                            status=status, error=error[:LIMIT["text"]])
    return NetatmoError("Netatmo answered %s." % status, status=status)


class KeptAliveConnections(object):
    """The urllib handler that keeps connections to Netatmo open from call to call.

    urllib's own handlers open a new connection for every request: each call to
    Netatmo would first pay a TCP handshake and a TLS handshake, two more round trips
    to a far-away server. This handler opens instead of them (it comes first, and
    answers every http and https request); they still prepare each request: Host,
    Content-Length, and the proxy that https_proxy and no_proxy choose. A connection
    serves one call at a time, and goes back to the pool once its answer is read.
    """

    handler_order = 400      # before urllib's HTTPHandler and HTTPSHandler (500)
    max_idle = LIMIT["KeptAliveConnections.max_idle"]
    max_idle_seconds = LIMIT["KeptAliveConnections.max_idle_seconds"]
    max_answer = LIMIT["KeptAliveConnections.max_answer"]

    def __init__(self):
        self.idle = {}  # (connection class, host, tunnelled host) -> [(connection, since)]
        self.lock = threading.Lock()
        self.tls = None  # the TLS context, made by the first https call
        self.deadlines = Deadlines()

    def add_parent(self, opener):
        """Be told the opener we serve (urllib's handler protocol)."""
        self.parent = opener

    def __lt__(self, other):
        """Sort among urllib's handlers by handler_order, as they do."""
        return self.handler_order < getattr(other, "handler_order", 500)

    def http_open(self, request):
        """Send an http:// request; return its answer."""
        return self.open(http.client.HTTPConnection, request, {})

    def https_open(self, request):
        """Send an https:// request over TLS with the certificate verified."""
        if self.tls is None:
            import ssl
            self.tls = ssl.create_default_context()  # verifies certificate and host name
        return self.open(http.client.HTTPSConnection, request, {"context": self.tls})

    def open(self, connection_class, request, arguments):
        """Send request on an idle connection, else a new one; return the answer, read.

        A server may close a connection it has kept idle at any moment, even as our
        request leaves. A GET that fails that way is sent again, once, on a new
        connection. A POST cannot be sent twice (a refresh token works once), so it
        never rides on an idle connection.
        """
        tunnel = getattr(request, "_tunnel_host", None)  # https through a proxy
        key = (connection_class, request.host, tunnel)
        headers = dict(request.unredirected_hdrs)
        headers.update((k, v) for k, v in request.headers.items() if k not in headers)
        headers = dict((name.title(), value) for name, value in headers.items())
        tunnel_headers = {}
        if tunnel and "Proxy-Authorization" in headers:  # for the proxy, not for Netatmo
            tunnel_headers["Proxy-Authorization"] = headers.pop("Proxy-Authorization")
        deadline = time.time() + request.timeout  # --timeout, for the whole call
        connection = self.take(key) if request.get_method() == "GET" else None
        if connection is not None:
            try:
                return self.send(key, connection, request, headers, deadline)
            except ConnectionError as e:
                log.info("netatmo GET %s: the kept connection was lost (%s); sending again",
                         request.selector, e)
        connection = connection_class(request.host, timeout=left(deadline), **arguments)
        # http.client connects through this attribute (3.6 to 3.13): the socket then
        # has only what is left, and the ssl module times the handshake as a whole.
        connection._create_connection = connector(deadline)
        if tunnel:
            connection.set_tunnel(tunnel, headers=tunnel_headers)
        return self.send(key, connection, request, headers, deadline)

    def send(self, key, connection, request, headers, deadline):
        """Send request on connection; return the answer, read, as urllib's handlers want.

        Each read waits at most what is left of the deadline, and a watchdog shuts the
        connection at the deadline itself: an answer dribbled a byte at a time, each
        within a read's timeout, cannot stretch the call past --timeout.
        """
        import urllib.response
        try:
            if connection.sock is not None:
                connection.sock.settimeout(left(deadline))
            with self.deadlines.watch(connection, deadline):
                connection.request(request.get_method(), request.selector, request.data,
                                   headers)
                response = connection.getresponse()
                body = read_at_most(response, self.max_answer)
        except BaseException:
            connection.close()
            if time.time() >= deadline:  # cut off by the watchdog, or just late
                raise socket.timeout("timed out: no whole answer within --timeout")
            raise
        if body is None:
            connection.close()
            raise NetatmoError("Netatmo's answer to %s was larger than %d MB."
                               % (request.selector.split("?", 1)[0],
                                  self.max_answer // (1024 * 1024)), status=response.status)
        if response.will_close:  # Netatmo said Connection: close
            connection.close()
        else:  # the answer is read in full: the connection can serve the next call
            self.give_back(key, connection)
        answer = urllib.response.addinfourl(io.BytesIO(body), response.msg,
                                            request.get_full_url(), response.status)
        answer.msg = response.reason  # what urllib's error handlers read
        return answer

    def take(self, key):
        """Return an idle connection to this server that still looks open, or None."""
        while True:
            with self.lock:
                idle = self.idle.get(key)
                if not idle:
                    return None
                connection, since = idle.pop()
            # An idle connection with something to read was closed by the server.
            if time.time() - since < self.max_idle_seconds and not readable(connection.sock):
                return connection
            connection.close()

    def give_back(self, key, connection):
        """Keep a connection whose answer was read in full, for the next call."""
        with self.lock:
            idle = self.idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append((connection, time.time()))
                return
        connection.close()

    def close(self):
        """Close every idle connection, and stop the watchdog."""
        self.deadlines.stop()
        with self.lock:
            idle, self.idle = self.idle, {}
        for connections in idle.values():
            for connection, _ in connections:
                connection.close()


def left(deadline):
    """Return the seconds left until deadline, or raise socket.timeout if none are."""
    seconds = deadline - time.time()
    if seconds <= 0:
        raise socket.timeout("timed out: no whole answer within --timeout")
    return seconds


def connector(deadline):
    """Return a socket.create_connection whose socket has only what is left of deadline.

    The name lookup before it cannot be bounded in the standard library.
    """
    def create_connection(address, timeout=None, source_address=None):
        sock = socket.create_connection(address, left(deadline), source_address)
        sock.settimeout(left(deadline))  # what the TLS handshake has, as a whole
        return sock
    return create_connection


class Deadlines(object):
    """A watchdog: one thread that shuts each watched connection at its deadline."""

    def __init__(self):
        self.due = {}  # connection -> its deadline
        self.changed = threading.Condition()
        self.thread = None
        self.stopped = False
        self.wakes_at = float("inf")  # when the thread looks next

    @contextlib.contextmanager
    def watch(self, connection, deadline):
        """Shut connection at deadline, unless the block has ended by then."""
        with self.changed:
            if self.thread is None:  # started by the first call, not at start
                self.thread = threading.Thread(target=self.run, daemon=True)
                self.thread.start()
            self.due[connection] = deadline
            if deadline < self.wakes_at:  # else it looks in time: no wake-up on every call
                self.changed.notify()
        try:
            yield
        finally:
            with self.changed:
                self.due.pop(connection, None)

    def run(self):
        """Shut the connections whose deadline has come; sleep until the next one."""
        with self.changed:
            while not self.stopped:
                now = time.time()
                for connection, deadline in list(self.due.items()):
                    if deadline <= now:
                        del self.due[connection]
                        try:  # the blocked read ends; for TLS, the plain socket's shutdown
                            socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
                        except (OSError, TypeError):  # closed, or no socket yet
                            pass
                self.wakes_at = min(self.due.values()) if self.due else float("inf")
                self.changed.wait(self.wakes_at - now if self.due else None)

    def stop(self):
        """End the thread."""
        with self.changed:
            self.stopped = True
            self.changed.notify()


def read_at_most(response, limit):
    """Return the body of an http.client answer, or None if it is over limit bytes."""
    if response.length is not None:  # Content-Length says how much will come
        return None if response.length > limit else response.read()
    chunks, size = [], 0
    while size <= limit:
        chunk = response.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return None


def readable(sock):
    """Return True if the socket has bytes, or its end, to read right now."""
    if hasattr(select, "poll"):  # select() fails on descriptors above 1023
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


# ---- Sessions and their tokens ----------------------------------------------------
# A logged-in browser holds a random id; its tokens and cached device list stay here,
# refreshed before they run out, one refresh at a time: Netatmo rotates the pair, and
# a refresh token used twice logs the person out.

class LoginExpired(Exception):
    """Netatmo no longer honours this session's refresh token: log in again."""


class Session(object):
    """A logged-in browser: its tokens, its cached device list, and their locks."""
    __slots__ = ("tokens", "last_seen", "lock", "device_list", "fetch_lock", "token_file",
                 "not_kept", "home_ids", "busy")

    refresh_margin = LIMIT["Session.refresh_margin"]  # seconds before the token runs out

    def __init__(self, tokens, now):
        self.tokens = tokens
        self.last_seen = now
        self.lock = threading.Lock()        # one refresh at a time
        self.device_list = None             # the last DeviceList fetched
        self.fetch_lock = threading.Lock()  # one fetch at a time
        self.token_file = None   # --token-file, when this session's pair is the file's
        self.not_kept = None     # why the file lost this session's pair, if it did
        self.home_ids = []       # the homes with modules that homesdata named last
        self.busy = None         # (tokens, when, NotKept): the file's lock was not had

    def devices(self, fetch, max_age):
        """Return the cached DeviceList if younger than max_age seconds, else fetch().

        Netatmo allows 50 calls per 10 seconds per user: a page reloaded, or opened
        in several tabs, is served from the list fetched last, and concurrent
        requests wait for one fetch instead of making their own.
        """
        if max_age <= 0:
            return fetch()
        with self.fetch_lock:
            cached = self.device_list
            if cached is None or time.time() - cached.fetched_at >= max_age:
                cached = self.device_list = fetch()
            return cached

    def access_token(self, client):
        """Return an access token that is good for at least refresh_margin seconds.

        A token that lives less than twice the margin is refreshed at half its life,
        not on every call.
        """
        tokens = self.tokens
        margin = self.refresh_margin
        if tokens.lifetime is not None:
            margin = min(margin, tokens.lifetime / 2)
        if tokens.expires_at is None or tokens.expires_at - time.time() > margin:
            return tokens.access_token
        return self.refresh(client, tokens.access_token)

    def refresh(self, client, stale_access_token=None):
        """Refresh the tokens once, however many threads ask; return the access token.

        Netatmo rotates refresh tokens: the first refresh retires the old pair, and a
        second one with the same refresh token logs the person out. So one thread
        refreshes under the lock; the others wait for it and use its result. A thread
        that names the access token it found stale gets the new one if a refresh
        already happened since. One that waited while another could not have the
        token file's lock for these tokens gets the same answer at once: a page waits
        for the lock once, not once per call.
        """
        asked = time.time()
        with self.lock:
            tokens = self.tokens
            if stale_access_token is not None and tokens.access_token != stale_access_token:
                return tokens.access_token
            if self.busy is not None and self.busy[0] is tokens and self.busy[1] >= asked:
                raise self.busy[2]
            try:
                self.tokens = self.renew(client, tokens)
            except NotKept as e:
                self.busy = (tokens, time.time(), e)
                raise
            return self.tokens.access_token

    def renew(self, client, tokens):
        """Return the pair that follows tokens: through --token-file if this session has it.

        The file is shared with other programs (a cron job, a script): its lock makes
        one refresh at a time among all of them, and a pair one of them rotated is
        taken from the file instead of being refreshed again. Without the lock there
        is no refresh at all (NotKept goes up): refreshing anyway would retire the
        refresh token the file holds, and log out every program that shares it.
        A new pair the file cannot take is used all the same, said loudly, and this
        session no longer writes the file.
        """
        if self.token_file is None:
            return renewed(client, tokens)
        try:
            return self.token_file.refresh(client, tokens, self.refresh_margin)
        except NotKept as e:
            if e.tokens is None:
                raise
            log.error("%s", e)
            self.not_kept, self.token_file = str(e), None
            return e.tokens

    def get_all(self, client, told, calls):
        """GET each (path, params) at once with this session's token; [(body, error)]."""
        return client.in_parallel(self.authorized, [(client, told, path, params)
                                                    for path, params in calls])

    def authorized(self, client, told, path, params):
        """Return bearer_get()'s body; on code 2 or 3, refresh once and call again.

        Netatmo kills the old access token at each refresh, so under load a call can
        be refused because another request of this session rotated the tokens while
        it was on its way. Such a call is retried with the new token, without a
        refresh of its own. A call refused with the current token refreshes once; again
        only if that token has lived its whole life while the call waited (a token
        Netatmo sends already expired does not make us refresh in a loop).
        """
        access_token = self.access_token(client)
        refreshed = False
        for attempts_left in reversed(range(5)):
            try:
                return bearer_get(client, path, params, access_token, told)
            except NetatmoError as error:
                if error.code not in (2, 3) or attempts_left == 0:  # 2 invalid, 3 expired
                    raise
                tokens = self.tokens
                if tokens.access_token != access_token:
                    access_token = tokens.access_token  # rotated meanwhile: retry
                    told.add("refused with code %s: another request of this session rotated "
                             "the tokens meanwhile; sent again with the new access token, "
                             "without a refresh" % error.code)
                elif refreshed and not outlived(tokens):
                    raise
                else:
                    access_token = self.refresh(client, access_token)
                    refreshed = True


class SessionStore(object):
    """Logged-in sessions, keyed by random cookie values, under one lock.

    Bounded: at most max_sessions, the least recently used dropped first, and a
    session's cached device list (70 KB for alice's 73 devices) is dropped once it is
    older than --cache-seconds, when it could no longer be shown anyway.
    """

    session_ttl = LIMIT["SessionStore.session_ttl"]
    max_sessions = LIMIT["SessionStore.max_sessions"]

    def __init__(self, cache_seconds=30.0, clock=time.time):
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.lock = threading.Lock()
        self.sessions = OrderedDict()  # sid -> Session, the least recently used first
        self.next_sweep = 0

    def create(self, tokens):
        """Return (new cookie value, Session) for tokens just obtained."""
        now = self.clock()
        session = Session(tokens, now)
        sid = random_text(32)
        with self.lock:
            self.sessions[sid] = session
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            self.sweep(now)
        return sid, session

    def get(self, sid):
        """Return the live Session of this cookie value, or None."""
        now = self.clock()
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                return None
            if now - session.last_seen > self.session_ttl:
                del self.sessions[sid]
                return None
            session.last_seen = now
            self.sessions.move_to_end(sid)
            self.sweep(now)
            return session

    def delete(self, sid):
        """Forget the session of this cookie value."""
        with self.lock:
            self.sessions.pop(sid, None)

    def sweep(self, now):
        """Drop expired sessions and stale device lists, at most once a minute (or once
        per --cache-seconds, if shorter); the caller holds the lock."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + min(60, max(1, self.cache_seconds))
        for sid, session in list(self.sessions.items()):
            if now - session.last_seen > self.session_ttl:
                del self.sessions[sid]
            elif session.device_list and now - session.device_list.fetched_at >= \
                    self.cache_seconds:
                session.device_list = None


def renewed(client, tokens):
    """Return new Tokens from Netatmo for tokens' refresh token, which then dies."""
    form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens.refresh_token),
        ("client_id", client.config.client_id),
        ("client_secret", client.config.client_secret),
    ]
    try:
        with client.trace.block("d") as told:
            new = client.post_form("/oauth2/token", form, told)
    except NetatmoError as e:
        if e.error == "invalid_grant":
            raise LoginExpired()
        raise
    log.info("refreshed the tokens of a session")
    return new


def outlived(tokens):
    """Return True if a token with a real lifetime has reached its expiry by our clock."""
    return bool(tokens.lifetime and tokens.lifetime > 0 and time.time() >= tokens.expires_at)


# ---- The signed login state -------------------------------------------------------
# A login in progress, in a cookie signed here: who may start one, whether a callback
# is the person's own, and what a refusal from Netatmo ends.

class Logins(object):
    """Logins in progress, kept by the browsers, not here: a signed cookie each.

    GET /login makes a random nonce and hands the browser, in the netatmo_login
    cookie, the nonce, its issue time and their HMAC-SHA256 under a key made at
    start: never stored, never logged, new at every start. The login's `state` and
    its PKCE `code_verifier` are derived from the nonce under the same key, so
    neither is stored anywhere either. A flood of /login has nothing to fill and
    nothing to evict: a person's login in progress costs this server nothing.

    What the server does keep is bounded: the nonces of the logins that reached
    Netatmo's token endpoint, until they expire, so that a state works once.
    """

    ttl = LIMIT["Logins.ttl"]  # a login must come back from Netatmo within this
    max_used = LIMIT["Logins.max_used"]  # used nonces remembered

    def __init__(self, clock=time.time):
        self.clock = clock
        self.key = os.urandom(32)
        self.used = OrderedDict()  # nonce -> when its cookie expires, oldest first
        self.lock = threading.Lock()
        self.started = 0  # logins begun: a terminal run says if one went to Netatmo

    def start(self, owner=False):
        """Return (cookie value, nonce) for a new login: nonce.issued.signature.

        An owner's login (begun at the address printed in the terminal) is signed
        for another purpose than anyone else's: it alone may write --token-file.
        """
        nonce = random_text(16)  # 128 bits
        self.started += 1
        signed = "%s.%d" % (nonce, self.clock())
        return signed + "." + self.mac("owner" if owner else "cookie", signed), nonce

    def check(self, cookie):
        """Return (nonce, owner, None) for a login cookie signed here less than ttl ago,
        else (None, False, what is wrong with it)."""
        if not cookie:
            return None, False, "missing"
        parts = cookie.split(".")
        if len(parts) != 3 or not digits(parts[1]):
            return None, False, "not one of ours (malformed)"
        signed = parts[0] + "." + parts[1]
        import hmac
        owner = hmac.compare_digest(parts[2].encode(), self.mac("owner", signed).encode())
        if not owner and not hmac.compare_digest(parts[2].encode(),
                                                 self.mac("cookie", signed).encode()):
            return None, False, ("its signature does not match (tampered, or signed before "
                                 "a restart)")
        age = self.clock() - int(parts[1])
        if not 0 <= age <= self.ttl:
            return None, False, "older than 10 minutes"
        return parts[0], owner, None

    def state(self, nonce):
        """Return the login's `state`: 43 characters derived from the nonce."""
        return self.mac("state", nonce)

    def code_verifier(self, nonce):
        """Return the login's PKCE code_verifier (RFC 7636): 43 characters."""
        return self.mac("code_verifier", nonce)

    def mac(self, purpose, text):
        """Return HMAC-SHA256(key, purpose:text) in unpadded base64url."""
        import hashlib
        import hmac
        digest = hmac.new(self.key, ("%s:%s" % (purpose, text)).encode("utf-8"),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def use(self, nonce):
        """Mark a login's nonce used; return False if it was used already."""
        now = self.clock()
        with self.lock:
            while self.used and (next(iter(self.used.values())) < now
                                 or len(self.used) >= self.max_used):
                self.used.popitem(last=False)
            if nonce in self.used:
                return False
            self.used[nonce] = now + self.ttl
            return True


def random_text(size):
    """Return size random bytes of the system's (as secrets does) in unpadded base64url."""
    return base64.urlsafe_b64encode(os.urandom(size)).rstrip(b"=").decode("ascii")


def digits(text):
    """Return True if text is one or more ASCII digits (str.isdigit also takes "\u00b2")."""
    return bool(text) and not text.strip("0123456789")


def code_challenge(code_verifier):
    """Return the S256 PKCE challenge: BASE64URL(SHA256(code_verifier)), unpadded."""
    import hashlib
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def may_start_login(server, request):
    """Return True if this /login begins the owner's login, else False; or refuse it.

    The address printed in the terminal carries a key made for this run. In the
    terminal modes only a browser that has it may log in (not another user of this
    host first); with --token-file only a login begun there writes the file. The
    login cookie must come back on the redirect URI's origin, so a browser on another
    host name is sent there, but the key never goes into a redirect.
    """
    config, key = server.config, server.login_key
    given = request.param("k")
    import hmac
    owner = key is not None and given is not None and hmac.compare_digest(
        given.encode(), key.encode())
    if (config.terminal or given is not None) and not owner:
        raise PageError(403, "Open the address printed in the terminal",
                        "This program lets one login, or the login it saves for scripts, "
                        "start only at the address it printed in the terminal that "
                        "started it (/login?k=...). Copy that whole address into the "
                        "browser.")
    host = request.headers.get("Host")
    if host and not same_origin(config.redirect_uri, host):
        if owner:
            raise PageError(400, "Open the address printed in the terminal",
                            "It begins with %s, the origin of the redirect URI: the login "
                            "must start there." % config.origin)
        raise Redirect(302, config.origin + "/login")
    return owner


def refusal(server, request, nonce, owner, problem, state, matches):
    """Return the PageError for an error Netatmo sent back instead of a code.

    Three cases, one branch each:
    - another state, or no login cookie: not this person's answer; nothing ends;
    - no state (Netatmo may leave it out; so does a link from another site): the
      person decides, with "Cancel this login"; nothing ends until then;
    - this login's state: the login ends, and a terminal run with it.
    """
    error = request.param("error")
    status, title, explanation, exit_status = refusal_words(
        error, request.param("error_description"))
    again = None if owner else "/login"  # the owner's key is printed once, never in a page
    if owner and not server.config.terminal:  # a terminal run's pages say it themselves
        explanation += " To try again, open the address printed in the terminal."
    told, code = "Netatmo's error=%s " % error_name(error), request.param("code")
    if nonce is None or (state is not None and not matches):
        server.trace.callback(request, code, state, problem, matches, False, told + (
            "is not this login's answer (no login cookie, or another state): refused, "
            "nothing ends"))
        return stale_link()
    if state is None:
        server.trace.callback(request, code, state, problem, matches, False, told + (
            "came without a state: it may be Netatmo's, or a link from another site; the "
            "person decides, nothing ends"))
        return PageError(status, title, explanation + " This answer came without the "
                         "login's state, so this program cannot tell it from a link on "
                         "another site. If it was your answer, cancel this login; if not, "
                         "try again.", again, "Try again", error="unconfirmed_refusal",
                         form=("/authenticate", "Cancel this login"))
    server.trace.callback(request, code, state, problem, matches, False, told + (
        "came with this login's state: the login ends"))
    request.expire_cookie(server.config.login_cookie_name, server.config.login_cookie_path)
    return PageError(status, title, explanation, again, "Try again" if status == 403
                     else "Log in again", error="access_denied" if status == 403
                     else "authorize_error", exit_status=exit_status)


def refusal_words(error, said):
    """Return (status, title, explanation, exit status) of an error Netatmo sent back."""
    if error == "access_denied":
        return 403, "You declined", ("You did not allow this program to read your Netatmo "
                                     "devices, so it has nothing to show."), Exit.LOGIN_FAILED
    cause = AUTHORIZE_ERRORS.get(error, "Check this program's settings against your app at "
                                        "dev.netatmo.com.")
    # A redirect URI or client id that Netatmo refuses is a setting to fix.
    return 400, "Netatmo refused the login", "Netatmo answered %s.%s %s" % (
        error_name(error), ' It said: "%s".' % said[:LIMIT["text"]] if said else "", cause), (
        Exit.BAD_SETTING if error in ("redirect_uri_mismatch", "invalid_client")
        else Exit.LOGIN_FAILED)


# What usually causes each error Netatmo may send back to the redirect URI.
AUTHORIZE_ERRORS = {
    "redirect_uri_mismatch": "The redirect URI this program sent is not the one registered "
                             "for your app at dev.netatmo.com. Register it exactly (scheme, "
                             "host, port and path) or set --redirect-uri to the registered one.",
    "invalid_client": "Netatmo does not know this client id. Check --client-id; a new app "
                      "can take a few minutes to become active.",
    "invalid_scope": "Netatmo refused a scope this program asked for. Check --scopes.",
    "invalid_request": "Netatmo found the login request malformed. Check --client-id, "
                       "--redirect-uri and --scopes. If Netatmo's page named "
                       "code_challenge, start this program with --no-pkce.",
}


def not_this_login(server, request, code, state, problem, matches):
    """Tell a callback refused at (c), and return its PageError: nothing goes to Netatmo."""
    server.trace.callback(request, code, state, problem, matches, False)
    return stale_link()


def stale_link():
    """Return the PageError of a callback that is not, or no longer, a login's."""
    return login_again(400, "This login link is not valid",
                       "It was already used, it expired (a login must be finished within "
                       "10 minutes), or it was started in another browser or tab, or "
                       "before this program restarted. Start a new login.",
                       error="invalid_state", exit_status=None)


class Exchanges(object):
    """The code exchanges Netatmo refused, by client address, over the last minute.

    Anyone who reaches this server can make it POST to Netatmo's token endpoint with
    the client secret: /login, then /authenticate?code=x. Past max_refused refusals
    from one address within `window` seconds, that address gets 429, and no POST,
    until the oldest of them is that old.
    """

    max_refused = LIMIT["Exchanges.max_refused"]
    window = LIMIT["Exchanges.window"]
    max_addresses = LIMIT["Exchanges.max_addresses"]

    def __init__(self, clock=time.time):
        self.clock = clock
        self.refused = OrderedDict()  # address -> times of its refusals, oldest first
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def guard(self, request):
        """Refuse the block with 429 if this address is over the limit; count a refusal."""
        address = request.client_address[0]
        now = self.clock()
        with self.lock:
            times = [t for t in self.refused.pop(address, ()) if now - t < self.window]
            if times:
                self.refused[address] = times
        if len(times) >= self.max_refused:
            raise PageError(429, "Too many refused logins from your address",
                            "Netatmo refused %d login codes from your address within a "
                            "minute, so this program sends no more for now. Start a new "
                            "login in a minute. (A program on your machine or network may "
                            "be sending them.)" % len(times), error="rate_limited",
                            headers=(("Retry-After", "%d" % (times[0] + self.window - now + 1)),))
        try:
            yield
        except NetatmoError as e:
            if e.status is not None and 400 <= e.status < 500:  # refused, not failed
                with self.lock:
                    self.refused.setdefault(address, []).append(self.clock())
                    while len(self.refused) > self.max_addresses:
                        self.refused.popitem(last=False)
            raise


def cancel_login(server, request):
    """POST /authenticate: the person cancels the login that Netatmo's answer named."""
    logins = server.logins
    nonce, _, problem = logins.check(request.cookie(server.config.login_cookie_name))
    if nonce is None or not logins.use(nonce):
        raise login_again(400, "There is no login to cancel",
                          "This browser has no login in progress here (%s)." % (
                              problem or "it was used already"), exit_status=None)
    request.expire_cookie(server.config.login_cookie_name, server.config.login_cookie_path)
    raise PageError(200, "Login cancelled", "This login is over; nothing was sent to "
                    "Netatmo.", "/", "Back to the start", error="cancelled",
                    exit_status=Exit.LOGIN_FAILED)


def error_name(error):
    """Return the name of an error Netatmo sent back, if it reads as one (a-z, _)."""
    readable = error.replace("_", "").isalnum() and len(error) <= LIMIT["error_name"]
    return error if readable else "an unreadable error"


# ---- The routes beside the flow ---------------------------------------------------
# What a login leads to, and the routes that act on a session: the start page, Fetch
# again, Renew, Log out, /healthz.

def after_login(server, request, session, owner):
    """After (d): keep the owner's login in --token-file; then end a terminal run with
    it, or send the browser to its devices, the code out of its address bar at once."""
    not_kept = server.keep_tokens(session) if owner else None  # the owner's login only
    if server.outcome is not None:  # a terminal mode: the run gets this login
        return finish_terminal_login(server, request, session, not_kept)
    if not_kept is not None:  # this browser is logged in; the file kept its login
        raise not_kept_page(not_kept, logged_in=True)
    request.redirect(303, "/devices")


def logged_in(server, request):
    """Return (session id, Session) of this browser's login, or (None, None)."""
    sid = request.cookie(server.config.cookie_name)
    session = server.sessions.get(sid) if sid else None
    return (sid, session) if session is not None else (None, None)


def device_list(server, session, where):
    """Return the session's DeviceList: cached, or fetched from Netatmo now; told as (e)."""
    asked = time.time()
    with server.trace.block("e") as told:
        found = session.devices(lambda: fetch_device_list(server, session, told),
                                server.config.cache_seconds)
        told.device_list(found, asked, where)
    return found


def show_home(server, request):
    """GET /: the start page; in a terminal run, where its login begins."""
    if server.config.terminal:
        return request.send_html(200, page("Netatmo devices", (
            "<p>This program waits in a terminal for one login. Open the address it "
            "printed there, which ends in /login?k=...: only that address can log "
            "in.</p>")))
    request.send_html(200, home_page(logged_in(server, request)[1],
                                     done_before(server, request)))


def fetch_again(server, request):
    """POST /devices: forget the cached list, so the page asks Netatmo now."""
    _, session = logged_in(server, request)
    if session is not None:
        session.device_list = None
    request.set_cookie(server.config.done_cookie_name, "fetched", max_age=60)
    request.redirect(303, "/devices")


def force_refresh(server, request):
    """POST /refresh: renew the tokens now, then show the devices."""
    _, session = logged_in(server, request)
    if session is None:
        return request.redirect(303, "/login")
    session.refresh(server.netatmo)
    request.set_cookie(server.config.done_cookie_name, "renewed-%d" % time.time(), max_age=60)
    request.redirect(303, "/devices")


def logout(server, request):
    """POST /logout: forget the session here and in the browser (every one sent)."""
    for sid in request.cookie_values(server.config.cookie_name):
        server.sessions.delete(sid)
    request.expire_cookie(server.config.cookie_name)
    request.set_cookie(server.config.done_cookie_name, "logged-out", max_age=60)
    request.redirect(303, "/")


def done_before(server, request):
    """Return what the button pressed before this page did, in words, once; or None.

    The button's answer sets a cookie a minute long; the page that follows says it,
    and expires it: a reload does not say it again.
    """
    done = request.cookie(server.config.done_cookie_name)
    if done is None:
        return None
    request.expire_cookie(server.config.done_cookie_name)
    _, session = logged_in(server, request)
    renewed = done[len("renewed-"):] if done.startswith("renewed-") else ""
    # A time of the last day, as the button set it; any other cookie is ignored.
    if digits(renewed) and len(renewed) <= LIMIT["done_digits"] and abs(
            time.time() - int(renewed)) <= 86400 \
            and session is not None:
        expires = session.tokens.expires_at
        return "Renewed at %s; valid until %s." % (clock(int(renewed)), clock(expires)
                                                    if expires else "an unknown time")
    return {"fetched": "Fetched just now from Netatmo.",
            "logged-out": "Logged out of this browser. " + (
                "The saved login in --token-file stays: scripts and cron jobs go on with "
                "it." if server.config.token_file else "Its tokens are forgotten.")}.get(done)


def healthz(server, request):
    """GET /healthz: answer that the server runs."""
    request.send_body(200, b"ok\n", "text/plain; charset=utf-8")


# ---- The token file ---------------------------------------------------------------
# A login that later runs, cron jobs and a web server share, refreshed under a lock.

class NotKept(Exception):
    """--token-file could not keep the login; the message says why and what to do.

    Either its lock could not be had (`busy`: another program held it past the wait;
    else the lock file itself is wrong), and nothing was refreshed: the pair in the
    file is alive. Or a refresh worked but the file could not take the new pair
    (`tokens`): the file now holds a used refresh token, and the next run needs a login.
    """

    def __init__(self, message, tokens=None, busy=False):
        Exception.__init__(self, message)
        self.tokens = tokens
        self.busy = busy


class TokenFile(object):
    """The JSON file where --token-file keeps the tokens for later runs and scripts.

    Netatmo rotates refresh tokens, so the file is rewritten after every refresh:
    a file that kept an old refresh token would hold a dead login.
    """

    fields = ("access_token", "refresh_token", "expires_at", "scope")
    lock_wait = LIMIT["TokenFile.lock_wait"]  # for another program's refresh, then give up
    max_read = LIMIT["TokenFile.max_read"]

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def load(self):
        """Return the Tokens saved in the file, None if there is no file.

        Raise ConfigError for a file that is unreadable, corrupt, not a regular file,
        another user's or readable by other users, or not a token file at all (we
        will not overwrite someone else's file).
        """
        try:
            fd = open_own_file(self.path, os.O_RDONLY, "--token-file")
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            problem = not_private(os.fstat(f.fileno()))
            if problem:
                raise ConfigError("--token-file %r %s; it holds your Netatmo login: chmod "
                                  "600 it, or delete it and log in again" % (self.path, problem))
            raw = f.read(self.max_read)
        try:
            saved = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            saved = None
        if not self.well_formed(saved):
            raise ConfigError("--token-file %r is not a token file of this program (or it "
                              "is corrupt); it was left as it is: delete it or name "
                              "another file" % self.path)
        if not saved["refresh_token"]:
            return None
        return Tokens(saved["access_token"], saved["refresh_token"], saved["expires_at"],
                      list(saved["scope"]), None)

    def well_formed(self, saved):
        """Return True if saved holds our four fields, each of the type we write."""
        if not isinstance(saved, dict) or not set(self.fields) <= set(saved):
            return False
        expires_at = saved["expires_at"]
        # Tokens as Netatmo's answers must be: one with a newline or an ESC in it would
        # reach a header, the log and a terminal.
        return (isinstance(saved["access_token"], str)
                and isinstance(saved["refresh_token"], str) and (not saved["refresh_token"] or (
                    token_like(saved["access_token"]) and token_like(saved["refresh_token"])))
                and (expires_at is None or type(expires_at) in (int, float)
                     and abs(expires_at) < 1e12)  # NaN and infinities fail too
                and isinstance(saved["scope"], list)
                and all(isinstance(s, str) for s in saved["scope"]))

    def save(self, tokens):
        """Write tokens to the file atomically, readable by its owner only.

        The new content goes to a temporary file of a random name in the same
        folder, created exclusively (never through a symlink, never a name another
        user could have taken first), then renamed over PATH: a reader sees the old
        file or the new one, never half of one. Then the folder itself is synced,
        so that the rename survives a power cut.
        """
        content = json.dumps({field: getattr(tokens, field) for field in self.fields},
                             indent=2).encode("utf-8")
        fd, temporary = self.temporary_file()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        sync_folder(os.path.dirname(self.path))

    def refresh(self, client, tokens, margin):
        """Return the pair that follows tokens, taken or made under the file's lock.

        Read, refresh, write: while one program does it, the others wait. Once the
        lock is held, the file is read again: if another program rotated the pair
        meanwhile, the file holds the live one, and it is used as it is (or, if it
        too is about to expire, refreshed in turn). Our own refresh token would only
        get invalid_grant. The lock is held for the refresh and its write only.
        """
        with self.locked():
            try:
                saved = self.load()
            except ConfigError as e:  # changed meanwhile: not ours to overwrite
                raise NotKept(str(e))
            if saved is not None and saved.refresh_token != tokens.refresh_token:
                if saved.expires_at is None or saved.expires_at - time.time() > margin:
                    log.info("took the pair another program refreshed, from --token-file")
                    client.trace.step("d", [
                        "%s holds a newer pair than this program's: another program "
                        "refreshed it; used as it is, no call" % self.path],
                        "a refresh token works once: refreshing ours again would be "
                        "refused, and log every program sharing the file out")
                    return saved
                tokens = saved
            new = renewed(client, tokens)
            try:
                self.save(new)
            except OSError as e:
                raise NotKept("the login was refreshed, but %s could not take the new pair "
                              "(%s): the file now holds a used refresh token, and the next "
                              "run that reads it needs a login in the browser"
                              % (self.path, e.strerror or e), tokens=new)
            return new

    def locked(self):
        """Return a context manager that holds the file's lock: PATH.lock, exclusive.

        The lock is the operating system's (flock, or msvcrt.locking on Windows): a
        program that dies holding it releases it with its last breath.
        """
        return FileLock(self.path + ".lock", self.lock_wait)

    def temporary_file(self):
        """Return (descriptor, path) of a new file, 0600, of a random name beside PATH."""
        import tempfile  # late, as unicodedata: for the runs that write the file
        return tempfile.mkstemp(prefix=".netatmo-tokens-", suffix=".tmp",
                                dir=os.path.dirname(self.path))

    def check_writable(self):
        """Raise ConfigError unless a file can be created in the file's folder now, no
        one else may remove files there, and PATH.lock, if it is there, is a file of the
        running user."""
        try:
            fd, probe = self.temporary_file()
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError("cannot write --token-file %r: its folder %r is missing or "
                              "not writable (%s)" % (self.path, os.path.dirname(self.path),
                                                     e.strerror or e))
        others = shared_folder(os.path.dirname(self.path))
        if others:
            raise ConfigError("--token-file %r: %s may write in its folder %r, and so remove "
                              "or replace the file and its lock; keep it in a folder of your "
                              "own" % (self.path, others, os.path.dirname(self.path)))
        try:
            os.close(open_own_file(self.path + ".lock", os.O_RDONLY, "the lock file"))
        except FileNotFoundError:
            pass


# File permissions and locks differ by platform; what follows holds the difference.

try:
    import fcntl  # POSIX: Linux, macOS, the BSDs
    msvcrt = None
except ImportError:  # Windows
    import msvcrt
    fcntl = None


class FileLock(object):
    """An exclusive lock on a file, for a `with` block, given up after `wait` seconds.

    The lock file is checked as the token file is: a symlink, or a file that is not
    the running user's, is refused. In a shared folder another user could create
    PATH.lock first, and hold every run of this person's for ever.
    """

    def __init__(self, path, wait):
        self.path = path
        self.wait = wait
        self.fd = None

    def __enter__(self):
        try:
            self.fd = open_own_file(self.path, os.O_RDWR | os.O_CREAT, "the lock file")
        except (OSError, ConfigError) as e:
            raise NotKept(str(e) if isinstance(e, ConfigError) else "cannot open the lock "
                          "file %r: %s" % (self.path, e.strerror or e))
        deadline = time.time() + self.wait
        if not self.try_lock():  # said once, when the wait starts
            log.warning("waiting up to %g s for another program that holds %s", self.wait,
                        self.path)
        while not self.try_lock():
            if time.time() > deadline:
                os.close(self.fd)
                raise NotKept("another program is renewing this login: it has held %s for "
                              "%g s; try again in a minute (if no other program should, "
                              "check what holds it)" % (self.path, self.wait), busy=True)
            time.sleep(0.05)  # flock cannot wait with a deadline; polling can
        return self

    def try_lock(self):
        """Take the lock if it is free; return False if another program holds it."""
        try:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
        except (BlockingIOError, PermissionError):  # PermissionError: Windows says so
            return False
        return True

    def __exit__(self, *exc_info):
        if fcntl is None:
            msvcrt.locking(self.fd, msvcrt.LK_UNLCK, 1)
        os.close(self.fd)  # which releases flock's lock
        return False


def open_own_file(path, flags, what):
    """Return a descriptor of path: a regular file of the running user, never a link.

    It is opened without following a symlink, and without waiting: a FIFO planted
    there cannot hang us. Raise FileNotFoundError if there is none, ConfigError
    naming the file and what to do for anything else that is wrong.
    """
    if os.path.islink(path):  # O_NOFOLLOW's error would only say "too many levels"
        raise ConfigError("%s %r is a symbolic link, refused on purpose: it could point at "
                          "another user's file; name the file itself" % (what, path))
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0), 0o600)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError("cannot open %s %r: %s" % (what, path, e.strerror or e))
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "%s %r is not a regular file; name a file of your own" % (what, path)
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        problem = ("%s %r belongs to another user; name a --token-file in a folder of your "
                   "own, not a shared one such as /tmp" % (what, path))
    if problem:
        os.close(fd)
        raise ConfigError(problem)
    return fd


def not_private(info):
    """Return what is wrong if a file's mode is not private (POSIX: no group or other bits).

    On POSIX systems the file must not be readable by others (open_own_file saw
    that it is the running user's: root must not adopt another user's login): a
    login readable by all is no longer private. Windows has no such mode bits; a
    file in the user's profile is protected by its folder's access control list.
    """
    if not hasattr(os, "geteuid"):
        return None
    if info.st_mode & 0o077:
        return "can be read by other users"
    return None


def shared_folder(folder):
    """Return who else may remove or replace files in folder, or None (POSIX only).

    A sticky folder (as /tmp) lets no one but a file's owner remove or rename it. A
    folder its group may write is the running user's own when that group is the
    user's primary group (user-private groups, as Debian's umask 002 makes).
    """
    if not hasattr(os, "geteuid"):
        return None
    info = os.stat(folder)
    if info.st_mode & stat.S_ISVTX:
        return None
    if info.st_mode & stat.S_IWOTH:
        return "other users"
    if info.st_mode & stat.S_IWGRP and info.st_gid != os.getgid():
        return "its group (%d)" % info.st_gid
    return None


def sync_folder(folder):
    """Flush a folder's entries (a rename) to disk; Windows cannot open a folder so."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- Devices and their status -----------------------------------------------------
# One row per device, from answers that list it in several shapes, with real quirks.

# Netatmo's type codes: who makes each product, and the name people know it by
# (pyatmo's device table, MIT). An unknown code is shown as itself, maker unknown.
PRODUCTS = {
    "NAMain": ("Netatmo", "Weather Station"), "NAModule1": ("Netatmo", "Outdoor Module"),
    "NAModule2": ("Netatmo", "Anemometer"), "NAModule3": ("Netatmo", "Rain Gauge"),
    "NAModule4": ("Netatmo", "Indoor Module"), "NHC": ("Netatmo", "Home Coach"),
    "NAPlug": ("Netatmo", "Relay"), "NATherm1": ("Netatmo", "Thermostat"),
    "NRV": ("Netatmo", "Valve"), "NAC": ("Netatmo", "AC Control"),
    "OTH": ("Netatmo", "OpenTherm Gateway"), "OTM": ("Netatmo", "OpenTherm Thermostat"),
    "NOC": ("Netatmo", "Outdoor Camera"), "NPC": ("Netatmo", "Indoor Camera Advance"),
    "NACamera": ("Netatmo", "Indoor Camera"), "NSD": ("Netatmo", "Smoke Alarm"),
    "NIS": ("Netatmo", "Siren"), "NACamDoorTag": ("Netatmo", "Door/Window Sensor"),
    "NDB": ("Netatmo", "Doorbell"), "NCO": ("Netatmo", "CO Alarm"),
    "NDL": ("Netatmo", "Door Lock"), "BNS": ("Smarther", "Smarther"),
    "Z3L": ("third party", "Zigbee 3 light"), "Z3V": ("third party", "Zigbee 3 roller shutter"),
    "EBU": ("third party", "EBU gas meter"), "NLPD": ("Drivia", "Dry contact"),
    "TPSRS": ("Somfy", "io Shutter"), "NBG": ("Bubendorff", "Gateway"),
    "NBR": ("Bubendorff", "Roller Shutter"), "NBO": ("Bubendorff", "Orientable Shutter"),
    "NBS": ("Bubendorff", "Swing Shutter"), "NLG": ("Legrand", "Gateway"),
    "NLGS": ("Legrand", "Gateway standalone"), "NLP": ("Legrand", "Plug"),
    "NLPM": ("Legrand", "Mobile plug"), "NLPBS": ("Legrand", "British standard plugs"),
    "NLF": ("Legrand", "Switch/Dimmer"),
    "NLFE": ("Legrand", "2-wire light switch/dimmer evolution"),
    "NLIS": ("Legrand", "Double switch"), "NLFN": ("Legrand", "Light switch/dimmer with neutral"),
    "NLM": ("Legrand", "Light micro module"),
    "NLL": ("Legrand", "Italian light switch with neutral"),
    "NLLF": ("Legrand", "Centralized ventilation device"), "NLV": ("Legrand/BTicino", "Shutter"),
    "NLLV": ("Legrand/BTicino", "Shutters"), "NLLM": ("Legrand/BTicino", "Shutters"),
    "NLPO": ("Legrand", "Connected contactor"), "NLPT": ("Legrand", "Connected latching relay"),
    "NLPC": ("Legrand", "Energy Meter"), "NLE": ("Legrand", "Connected ecometer"),
    "NLPS": ("Legrand", "Smart load shedder"), "NLC": ("Legrand", "Cable outlet"),
    "NLT": ("Legrand", "Global remote control"),
    "NLAS": ("Legrand", "Wireless batteryless scene switch"), "NLD": ("Legrand", "Remote control"),
    "NLDD": ("Legrand", "Dimmer"), "NLUP": ("Legrand", "Power outlet"),
    "NLUO": ("Legrand", "Plug-in dimmer switch"), "NLUI": ("Legrand", "In-wall switch"),
    "NLTS": ("Legrand", "Motion sensor"), "NLUF": ("Legrand", "In-wall dimmer"),
    "NLJ": ("Legrand", "Garage door opener"), "BNCX": ("BTicino", "Internal Panel"),
    "BNEU": ("BTicino", "External Unit"), "BNSL": ("BTicino", "Staircase Light"),
    "BNDL": ("BTicino", "Door Lock"), "BNMS": ("BTicino", "Motorized Shade"),
    "BNAS": ("BTicino", "Automatic Shutter"), "BNAB": ("BTicino", "Automatic Blind"),
    "BNMH": ("BTicino", "MyHome server 1"), "BNTH": ("BTicino", "Thermostat"),
    "BNFC": ("BTicino", "Fan coil"), "BNTR": ("BTicino", "Module towel rail"),
    "BNIL": ("BTicino", "Intelligent light"), "BNLD": ("BTicino", "Dimmer"),
    "BNCS": ("BTicino", "Controlled socket"),
}

# What each device reads, by Netatmo's name in a station's dashboard_data and ours.
# The units are Netatmo's; no value is converted.
DASHBOARD_READINGS = (
    ("Temperature", "temperature"), ("Humidity", "humidity"), ("CO2", "co2"),
    ("Noise", "noise"), ("Pressure", "pressure"), ("Rain", "rain"),
    ("sum_rain_24", "rain_24h"), ("WindStrength", "wind_strength"),
    ("GustStrength", "gust_strength"), ("WindAngle", "wind_angle"),
    ("GustAngle", "gust_angle"), ("health_idx", "health_index"),
)
# The same in /api/homestatus, whose keys are lower case already.
HOME_READINGS = ("temperature", "humidity", "co2", "noise", "pressure", "power")
# Types that show their room's measured temperature and setpoint as their own,
# and a room's readings in /api/homestatus: (Netatmo's name, ours).
THERMOSTATS = ("NATherm1", "NRV", "OTM", "BNS")
ROOM_READINGS = (("therm_measured_temperature", "temperature"),
                 ("therm_setpoint_temperature", "setpoint"), ("humidity", "humidity"))
BATTERY_WORDS = ("full", "high", "medium", "low", "very_low")
# Signal numbers are "lower is stronger"; Netatmo's SDK names these thresholds.
RADIO_SIGNAL = ((90, "low"), (80, "medium"), (70, "high"))     # below 70: full
WIFI_SIGNAL = ((86, "low"), (71, "medium"), (56, "high"))      # below 56: full
# battery_percent (weather modules only) into battery_state's words: our thresholds.
BATTERY_PERCENT = ((80, "full"), (50, "high"), (25, "medium"), (10, "low"))  # else very_low


def device(device_id, name, type_code, home, room=None, in_homesdata=False):
    """Return one row of the device list, in the shape of /devices.json, status unknown."""
    type_code = str(type_code) if type_code else ""
    maker, product = PRODUCTS.get(type_code, (None, type_code or "unknown"))
    return {
        "id": "".join(str(device_id).split()),  # real ids carry stray spaces
        "name": str(name) if name else None,
        "type": type_code,
        "product": product,
        "maker": maker,
        "in_homesdata": in_homesdata,
        "home": str(home) if home else None,
        "room": str(room) if room else None,
        "reachable": None,
        "last_seen": None,
        "battery": None,
        "battery_percent": None,
        "signal": None,
        "firmware": None,
        "readings": {},
    }


def listed(value):
    """Return value if it is a list of objects, else an empty list (a quirk guard)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def finite(value):
    """Return value if it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if -1e15 < value < 1e15 else None  # NaN fails the test too


def moment(*values):
    """Return the first value that is a unix time (0 means never), as an int, or None."""
    for value in values:
        value = finite(value)
        if value is not None and value > 0:
            return int(value)
    return None


def level(value, thresholds, best):
    """Return the word for a "lower is stronger" number, or None if there is none."""
    value = finite(value)
    if value is None or value <= 0:  # 0: not measured
        return None
    return next((word for limit, word in thresholds if value >= limit), best)


def battery_of_percent(percent):
    """Return battery_state's word for a battery_percent, or None."""
    if percent is None:
        return None
    return next((word for limit, word in BATTERY_PERCENT if percent >= limit), "very_low")


def readings_of(values, names):
    """Return {our name: value} for each (Netatmo's name, ours) that values holds."""
    values = values if isinstance(values, dict) else {}
    return {ours: values[theirs] for theirs, ours in names
            if finite(values.get(theirs)) is not None}


def status_of_station(station):
    """Return the status fields of a weather station or home coach (mains powered)."""
    dashboard = station.get("dashboard_data")
    return {
        "reachable": station.get("reachable") if isinstance(station.get("reachable"), bool)
        else None,
        "last_seen": moment(station.get("last_status_store"),
                            (dashboard or {}).get("time_utc") if isinstance(dashboard, dict)
                            else None),
        "signal": level(station.get("wifi_status"), WIFI_SIGNAL, "full"),
        "firmware": firmware_of(station.get("firmware")),
        "readings": readings_of(dashboard, DASHBOARD_READINGS),
    }


def status_of_weather_module(module):
    """Return the status fields of a station's module: it has a battery and a radio."""
    percent = finite(module.get("battery_percent"))
    percent = int(percent) if percent is not None and 0 <= percent <= 100 else None
    status = status_of_station(module)
    status.update(last_seen=moment(module.get("last_seen"), module.get("last_message")),
                  battery_percent=percent, battery=battery_of_percent(percent),
                  signal=level(module.get("rf_status"), RADIO_SIGNAL, "full"))
    return status


def status_of_home_module(module):
    """Return the status fields of a module in /api/homestatus, but `reachable`, which
    is reachability()'s.

    A device with both a Wi-Fi and a radio link reports its Wi-Fi link.
    """
    readings = {name: module[name] for name in HOME_READINGS
                if finite(module.get(name)) is not None}
    battery = module.get("battery_state")
    return {
        "last_seen": moment(module.get("last_seen"), module.get("last_message")),
        "battery": battery if battery in BATTERY_WORDS else None,
        "signal": level(module.get("wifi_strength"), WIFI_SIGNAL, "full")
        or level(module.get("rf_strength"), RADIO_SIGNAL, "full"),
        "firmware": firmware_of(module.get("firmware_revision")),
        "readings": readings,
    }


def firmware_of(value):
    """Return a firmware version as text, or None."""
    if isinstance(value, str) and value:
        return value[:LIMIT["firmware"]]
    value = finite(value)
    return None if value is None else str(int(value))


def not_answering(status):
    """Return the ids Netatmo names as not answering (code 6) in a homestatus body."""
    errors = status.get("errors") if isinstance(status, dict) else None
    return {str(e.get("id")) for e in listed(errors) if e.get("code") == 6}


def devices_of_homes(body, statuses):
    """Return the devices of a /api/homesdata body, with their status where known.

    statuses holds the /api/homestatus body of each home that answered. A module
    that only homestatus lists is a device too (an unreachable valve, say): it gets
    a row with what homestatus says, and "in_homesdata": false. Whether each answers
    is reachability()'s to say; one that Netatmo names as silent has no other status.
    """
    rows = []
    for home in listed(body.get("homes")):
        modules = [m for m in listed(home.get("modules")) if m.get("id")]
        rooms = {str(r.get("id")): r for r in listed(home.get("rooms"))}
        room_of = room_ids(home)
        status = statuses.get(str(home.get("id")))
        live = {str(m["id"]): m for m in status_of_modules(status)}
        live_rooms = {str(r.get("id")): r for r in listed(home_of_status(status).get("rooms"))}
        listed_ids = {str(m["id"]) for m in modules}
        only_live = [m for module_id, m in live.items() if module_id not in listed_ids]
        silent = bridged_by(modules + only_live, not_answering(status))
        reachable = reachability(modules + only_live, live, silent)
        for module in modules + only_live:
            module_id = str(module["id"])
            room_id = room_of.get(module_id)
            row = device(module["id"], module.get("name"), module.get("type"),
                         home.get("name"), rooms.get(room_id, {}).get("name"),
                         in_homesdata=module_id in listed_ids)
            rows.append(row)
            if module_id not in silent and module_id in live:
                row.update(status_of_home_module(live[module_id]))
            if module_id not in silent and row["type"] in THERMOSTATS:  # its room's readings
                row["readings"].update(readings_of(live_rooms.get(room_id), ROOM_READINGS))
            row["reachable"] = reachable[module_id]
    return rows


def reachability(modules, live, silent):
    """Return {module id: True, False or None} for a home's modules: does each answer?

    The rules, in order; the first that applies decides:
    1. Netatmo names it in homestatus's errors (code 6), or it hangs off a module so
       named (silent, by bridged_by()): offline. The cloud cannot reach it.
    2. homestatus gives it `reachable`: that.
    3. homesdata gives it `reachable` (some modules say it): that.
    4. A gateway that homestatus lists without `reachable` answers when a module it
       bridges does, by rule 2 or 3: the cloud reaches that module through it.
    5. Else unknown (None).
    A station, its modules and a home coach say `reachable` in their own answers
    (status_of_station); a device that several answers list takes its status from
    the one that heard from it last (merge_devices).
    """
    said = {}
    for module in modules:
        module_id = str(module["id"])
        answers = (live.get(module_id, {}).get("reachable"), module.get("reachable"))
        said[module_id] = False if module_id in silent else next(
            (answer for answer in answers if isinstance(answer, bool)), None)
    answering = {"".join(module_id.split()) for module_id, yes in said.items() if yes}
    for module in modules:
        module_id, bridged = str(module["id"]), module.get("modules_bridged")
        if said[module_id] is None and module_id in live and isinstance(bridged, list) \
                and answering & {"".join(str(m).split()) for m in bridged}:
            said[module_id] = True
    return said


def room_ids(home):
    """Return {module id: room id} of a homesdata home, read both ways.

    A module names its room in its own room_id, or a room lists it in module_ids:
    real accounts fill one, the other, or both. Where both are there and differ,
    room_id wins: it is the module's one answer, while module_ids lists are seen
    stale in real answers (two modules that name Hall are missing from its list).
    """
    found = {}
    for room in listed(home.get("rooms")):
        if isinstance(room.get("module_ids"), list):
            for module_id in room["module_ids"]:
                found.setdefault(str(module_id), str(room.get("id")))
    for module in listed(home.get("modules")):
        if module.get("id") and module.get("room_id") is not None:
            found[str(module["id"])] = str(module["room_id"])
    return found


def bridged_by(modules, gateways):
    """Return the ids of gateways and of every module that any of them bridges."""
    ids = set(gateways)
    for module in modules:
        if str(module.get("bridge")) in gateways:
            ids.add(str(module["id"]))
        if str(module.get("id")) in gateways and isinstance(module.get("modules_bridged"),
                                                            list):
            ids.update(str(m) for m in module["modules_bridged"])
    return ids


def devices_of_stations(body, home_names):
    """Return the devices of a getstationsdata or gethomecoachsdata body, modules too."""
    rows = []
    for station in listed(body.get("devices")):
        home = station.get("home_name") or home_names.get(str(station.get("home_id")))
        if station.get("_id"):
            row = device(station["_id"],
                         station.get("station_name") or station.get("module_name"),
                         station.get("type"), home)
            row.update(status_of_station(station))
            rows.append(row)
        for module in listed(station.get("modules")):
            if module.get("_id"):
                row = device(module["_id"], module.get("module_name"), module.get("type"),
                             home)
                row.update(status_of_weather_module(module))
                rows.append(row)
    return rows


STATUS_FIELDS = ("reachable", "last_seen", "battery", "battery_percent", "signal",
                 "firmware", "readings")


def merge_devices(rows):
    """Return one row per device id: the first seen, its gaps filled by later ones.

    The status fields go together: they come whole from the source that heard from
    the device last (by last_seen; one that does not say when comes after one that
    does), so that a row never mixes two moments: a battery "full" now and 27 % a
    year ago, or "offline" beside fresh readings.
    """
    merged = OrderedDict()
    for row in rows:
        seen = merged.get(row["id"])
        if seen is None:
            merged[row["id"]] = row
            continue
        for key, value in row.items():
            if key not in STATUS_FIELDS and (seen[key] is None or seen[key] == ""):
                seen[key] = value
        if fresher(row, seen):
            seen.update((key, row[key]) for key in STATUS_FIELDS)
    return list(merged.values())


def fresher(row, than):
    """Return True if row's status is to be shown rather than that of `than`."""
    if not any(than[key] not in (None, {}) for key in STATUS_FIELDS):
        return True
    return row["last_seen"] is not None and (than["last_seen"] is None
                                             or row["last_seen"] > than["last_seen"])


def devices_of(bodies, statuses=None):
    """Return the merged device list of the device endpoints' bodies and home statuses.

    A device in several lists is one row: homesdata first (its status from
    /api/homestatus), then the stations and coaches, each filling what the first
    did not know.
    """
    homes = bodies.get("homesdata") or {}
    home_names = {str(h.get("id")): h.get("name") for h in listed(homes.get("homes"))}
    rows = devices_of_homes(homes, statuses or {})
    for name in ("getstationsdata", "gethomecoachsdata"):
        rows += devices_of_stations(bodies.get(name) or {}, home_names)
    return merge_devices(rows)


# A page asks the status of at most this many homes, one call each; the others are
# named in a problem line.
MAX_HOMES = LIMIT["homes"]


def home_ids(homes_body):
    """Return the ids of the homes of a homesdata body that have modules."""
    return [str(h["id"]) for h in listed((homes_body or {}).get("homes"))
            if h.get("id") and listed(h.get("modules"))]


def status_problems(homes_body, statuses):
    """Return what keeps the status of some homes' devices unknown, home by home.

    Each is {"home_id", "home", "reason", "message"}, reason one of:
    "not_answering": the home's gateway does not answer, and the answer holds no
    module's status: its devices are offline. "some_not_answering": Netatmo names
    modules that do not answer, and gives the status of the others: only the named
    ones, and what they bridge, are offline; the home has its status, so /devices.json
    does not list it in homes_without_status. "failed": the homestatus call failed:
    the home's devices are listed, their status unknown. "no_status": the answer
    holds no module's status, and no error: an empty answer is not "all fine".
    "not_asked": a home past the first MAX_HOMES, whose status was not asked.
    """
    problems = []
    names = {str(h.get("id")): h for h in listed((homes_body or {}).get("homes"))}
    for home_id in home_ids(homes_body)[MAX_HOMES:]:
        name = str(names[home_id].get("name") or home_id)
        problems.append({"home_id": home_id, "home": name, "reason": "not_asked",
                         "message": "The status of home %s was not asked: a page asks the "
                                    "status of %d homes at most." % (name, MAX_HOMES)})
    for home_id, status in statuses.items():
        home = names.get(home_id, {})
        name = str(home.get("name") or home_id)
        if isinstance(status, NetatmoError):
            problems.append({"home_id": home_id, "home": name, "reason": "failed",
                             "message": "The status of home %s is unknown: %s"
                                        % (name, status.message)})
            continue
        live = status_of_modules(status)
        silent = not_answering(status)
        if silent:
            modules = [m for m in listed(home.get("modules")) if m.get("id")] + live
            rows = [device(m["id"], m.get("name"), m.get("type"), None) for m in modules]
            named = told_apart(rows)
            labels = ", ".join(sorted(set(named[id(row)] for row in rows if row["id"] in silent))
                               or sorted(silent))
            offline = len(bridged_by(modules, silent))
            problems.append({"home_id": home_id, "home": name, "reason": "some_not_answering"
                             if live else "not_answering", "message": (
                                 "In home %s, Netatmo says %s does not answer: offline, and "
                                 "so is every device it bridges (%d in all); the others "
                                 "answer." if live else "Home %s does not answer: its "
                                 "gateway %s is offline, and so is every device it bridges "
                                 "(%d in all).") % (name, labels, offline)})
        elif not live:
            problems.append({"home_id": home_id, "home": name, "reason": "no_status",
                             "message": "The status of home %s is unknown: Netatmo's "
                                        "answer holds the status of none of its devices."
                                        % name})
    return problems


def problem_lines(problems):
    """Return the lines that say a DeviceList's status problems: one per home, and the
    homes whose status was not asked in one line."""
    lines = [p["message"] for p in problems if p["reason"] != "not_asked"]
    skipped = [p["home"] for p in problems if p["reason"] == "not_asked"]
    if skipped:
        lines.append("The status of %d more homes was not asked: a page asks the status of "
                     "%d homes at most. They are %s." % (len(skipped), MAX_HOMES,
                                                         first_few(skipped)))
    return lines


def home_of_status(status):
    """Return the `home` of a homestatus body ({} if there is none): modules and rooms."""
    home = status.get("home") if isinstance(status, dict) else None
    return home if isinstance(home, dict) else {}


def status_of_modules(status):
    """Return the modules of a homestatus body that have an id (each with its status)."""
    return [m for m in listed(home_of_status(status).get("modules")) if m.get("id")]


DeviceList = namedtuple("DeviceList", "devices not_granted status_problems failed fetched_at")


def readable_lines(granted, requested_scopes):
    """Return (the device endpoints the granted scopes allow, [(scope, line)] not granted)."""
    lines = [name for name, scope, _ in DEVICE_ENDPOINTS if scope in granted]
    not_granted = [(scope, line) for _, scope, line in DEVICE_ENDPOINTS
                   if scope in requested_scopes.split() and scope not in granted]
    return lines, not_granted


def sort_answers(lines, answers, not_granted):
    """Return ({endpoint: body}, [failed product lines]) of the device endpoints' answers.

    An endpoint that answers 403 code 13 is a product line not granted (added to
    not_granted), not a failure. Netatmo's backends fail one endpoint at a time: a
    line that fails is named, and the others are listed. Only when every line the
    token may read fails does the fetch fail, with the reason of one of them.
    """
    for _, error in answers:
        if isinstance(error, LoginExpired):
            raise error
    bodies, failed, errors = {}, [], []
    for name, (body, error) in zip(lines, answers):
        scope, line = {e: (s, l) for e, s, l in DEVICE_ENDPOINTS}[name]
        if isinstance(error, NetatmoError) and error.code == 13:
            not_granted.append((scope, line))
        elif isinstance(error, NetatmoError):
            failed.append({"endpoint": name, "product_line": line, "message": error.message})
            errors.append(error)
        elif error is not None:
            raise error  # a bug of ours, or the token file's lock: not Netatmo's
        else:
            bodies[name] = body
    if errors and not bodies:  # every line that may be read failed: say why, as one
        raise next((e for e in errors if e.rate_limited), errors[0])
    return bodies, failed


def home_statuses(answers, homes):
    """Return {home id: homestatus body, or the NetatmoError of its call} of the homes.

    Status adds to the list and never takes it away: a homestatus call that fails
    leaves that home's devices listed, their status unknown, and says why.
    """
    statuses = {home_id: body if error is None else error
                for home_id, (body, error) in answers.items() if home_id in homes}
    for status in statuses.values():
        if isinstance(status, Exception) and not isinstance(status, NetatmoError):
            raise status  # the login ended, a bug of ours, or the token file's lock
    return statuses


def outcome(function, *arguments):
    """Call function; return (its result, None), or (None, the exception it raised)."""
    try:
        return function(*arguments), None
    except Exception as error:  # handed back to the caller, who decides
        return None, error


# ---- Pages ------------------------------------------------------------------------
# Whole pages, every value escaped, nothing loaded from elsewhere.

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:80rem;
margin:1rem auto;padding:0 1rem;line-height:1.5;color:#222}
table{border-collapse:collapse;width:100%;font-size:.95rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}
td.id{font-family:monospace;white-space:nowrap}
td:first-child{overflow-wrap:anywhere}
.scroll{overflow-x:auto}
.button,button{display:inline-block;padding:.4rem .9rem;border:1px solid #06c;
border-radius:.3rem;background:#06c;color:#fff;text-decoration:none;font-size:1rem;cursor:pointer}
form{display:inline-block;margin:.5rem .5rem .5rem 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4rem .8rem}
.offline,.warn{color:#a00;font-weight:bold}.unknown{color:#777}
small{color:#555}
@media (max-width:40rem){.wide{display:none}}
"""

# The page's only style is the block above; the policy names its hash, so the
# browser applies it and nothing else: no outside fonts, scripts, images or frames.
CONTENT_SECURITY_POLICY = (  # the hash is STYLE's SHA-256, which tests/test_http.py checks
    "default-src 'none'; style-src 'sha256-pAxPna+3z5EcXEXcA2BgXdaqJD8hElEGM+7X+mKFj8U='; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

escape = html.escape


def page(title, body):
    """Return a whole HTML page; `body` is HTML whose values were escaped already."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>%s</title><style>%s</style></head>\n<body>\n<h1>%s</h1>\n%s\n"
            "</body></html>\n" % (escape(title), STYLE, escape(title), body))


def button(action, label):
    """Return a one-button form that POSTs to action."""
    return ('<form method="post" action="%s"><button type="submit">%s</button></form>'
            % (escape(action), escape(label)))


def when(timestamp):
    """Return a timestamp as UTC text for people."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def clock(timestamp):
    """Return the time of day of a timestamp, in UTC: "14:05 UTC"."""
    return time.strftime("%H:%M UTC", time.gmtime(timestamp))


def home_page(session, done=None):
    """Return the start page: a login link, or what this session holds; and what the
    button pressed before it did."""
    done = '<p class="note">%s</p>\n' % escape(done) if done else ""
    if session is None:
        return page("Netatmo devices", done + (
            "<p>This program logs you in to your Netatmo account and lists your devices. "
            "You type your password at Netatmo only; this program keeps the token Netatmo "
            "gives it in memory and never shows it.</p>\n"
            '<p><a class="button" href="/login">Log in with Netatmo</a></p>'))
    tokens = session.tokens
    expiry = when(tokens.expires_at) if tokens.expires_at else "unknown"
    return page("Netatmo devices", done + (
        '<p>You are logged in. <a class="button" href="/devices">Show my devices</a></p>\n'
        "<p>Access token valid until: %s<br>Granted scopes: %s</p>\n%s %s" % (
            escape(expiry), escape(" ".join(tokens.scope) or "none"),
            button("/refresh", "Renew the token now"), button("/logout", "Log out"))))


def devices_page(found, done=None):
    """Return a DeviceList as an HTML page (step e): a summary, then a table.

    Above them, what the button pressed before did. Offline devices and low
    batteries are said with a word, not by colour alone. On a phone, the name,
    status and readings stay; the other columns are hidden.
    """
    devices = found.devices
    now = time.time()
    notes = '<p class="note">%s</p>\n' % escape(done) if done else ""
    notes += "".join('<p class="note">Not granted: %s. Log in again and allow them at '
                    'Netatmo, or add the scope to --scopes.</p>\n' % escape(line)
                    for _, line in found.not_granted)
    notes += "".join('<p class="note">%s</p>\n' % escape(line)
                     for line in problem_lines(found.status_problems))
    notes += "".join('<p class="note warn">%s</p>\n' % escape(failure_line(failure))
                     for failure in found.failed)
    notes += summary(devices)
    rows = "".join(device_row(d, now) for d in devices)
    count = "%d device%s" % (len(devices), "" if len(devices) == 1 else "s")
    table = ("<div class=\"scroll\"><table><thead><tr><th>Name</th><th>Status</th>"
             "<th>Readings</th><th class=\"wide\">Product</th><th class=\"wide\">Last seen</th>"
             "<th class=\"wide\">Battery</th><th class=\"wide\">Signal</th>"
             "<th class=\"wide\">Room</th><th class=\"wide\">Home</th>"
             "<th class=\"wide\">Type</th><th class=\"wide\">Id</th></tr></thead>\n"
             "<tbody>\n%s</tbody></table></div>"
             % rows) if devices else "<p>Netatmo lists no devices for this account.</p>"
    buttons = "%s %s <a href=\"/\">Home</a>" % (button("/refresh", "Renew the token now"),
                                                button("/logout", "Log out"))
    return page("Your Netatmo devices", (  # the buttons above the table too: 73 rows long
        "%s<p>%s, fetched from Netatmo at %s.</p>\n<div>%s %s</div>\n%s\n<div>%s</div>"
        % (notes, count, escape(when(found.fetched_at)), button("/devices", "Fetch again now"),
           buttons, table, buttons)))


def device_row(d, now):
    """Return one device as a row of the table; every value escaped."""
    seen = ""
    if d["last_seen"] is not None:
        seen = "%s<br><small>%s</small>" % (escape(ago(d["last_seen"], now)),
                                             escape(when(d["last_seen"])))
    return ("<tr><td>%s</td><td class=\"%s\">%s</td><td>%s</td><td class=\"wide\">%s</td>"
            "<td class=\"wide\">%s</td><td class=\"wide%s\">%s</td><td class=\"wide\">%s</td>"
            "<td class=\"wide\">%s</td><td class=\"wide\">%s</td><td class=\"wide\">%s</td>"
            "<td class=\"id wide\">%s</td></tr>\n" % (
                escape(d["name"] or "(unnamed)"), status_word(d), status_word(d),
                escape(readings_text(d["readings"], "\u00a0")), escape(d["product"]), seen,
                " warn" if d["battery"] in ("low", "very_low") else "",
                escape(battery_text(d, "%s (%d\u00a0%%)")), escape(d["signal"] or ""),
                escape(d["room"] or ""),
                escape(d["home"] or ""), escape(d["type"]), escape(d["id"])))


def summary(devices):
    """Return the notes above the table: which devices are offline, which batteries low."""
    offline = [d for d in devices if d["reachable"] is False]
    weak = [d for d in devices if d["battery"] in ("low", "very_low")]
    labels = told_apart(devices)
    notes = ""
    if offline:
        notes += '<p class="note"><strong>%d offline</strong>: %s.</p>\n' % (
            len(offline), escape(names_of(offline, labels, lambda d: "")))
    if weak:
        notes += ('<p class="note"><strong>%d batter%s low or very low</strong>: %s.</p>\n'
                  % (len(weak), "y" if len(weak) == 1 else "ies", escape(names_of(
                      weak, labels, lambda d: " (%s)" % battery_text(d, "%s, %d %%")))))
    return notes


def names_of(devices, labels, detail):
    """Return the devices' labels, each with its detail, the first few of them."""
    return first_few(["%s%s" % (labels[id(d)], detail(d)) for d in devices])


def first_few(names, most=LIMIT["names"]):
    """Return the first `most` names, and how many more: "A, B and 3 more"."""
    more = len(names) - most
    return ", ".join(names[:most]) + (" and %d more" % more if more > 0 else "")


def told_apart(devices):
    """Return {id(device): its name, with what tells it from others of that name}.

    A name two devices share gets the product ("Bedroom (Home Coach)"), else the
    room, else the id; an unnamed device is named by its id.
    """
    shared = Counter(d["name"] for d in devices if d["name"])
    # How many devices of one name have this product, or this room.
    alike = Counter((key, d["name"], d[key]) for d in devices for key in ("product", "room"))
    labels = {}
    for d in devices:
        name = d["name"] or "unnamed %s" % d["id"]
        if shared[d["name"]] > 1:
            key = next((k for k in ("product", "room") if alike[k, d["name"], d[k]] == 1),
                       "id")
            name += " (%s)" % (d[key] or "no %s" % key)
        labels[id(d)] = name
    return labels


def status_word(device_row):
    """Return online, offline or unknown: a device's reachability in a word."""
    return {True: "online", False: "offline", None: "unknown"}[device_row["reachable"]]


# How readings show on the page and in the terminal, in this order: (name, format).
READING_FORMATS = (
    ("temperature", "%s \u00b0C"), ("setpoint", "set to %s \u00b0C"), ("humidity", "%s %%"),
    ("co2", "%s ppm"), ("noise", "%s dB"), ("pressure", "%s mbar"), ("rain", "rain %s mm"),
    ("rain_24h", "%s mm in 24 h"), ("wind_strength", "wind %s km/h"),
    ("wind_angle", "from %s\u00b0"), ("gust_strength", "gusts %s km/h"),
    ("gust_angle", "from %s\u00b0"), ("health_index", "air quality %s of 4"),
    ("power", "%s W"),
)


def readings_text(readings, space=" "):
    """Return readings for people: "21.4 \u00b0C \u00b7 48 % \u00b7 612 ppm".

    The page binds each value to its unit with a no-break space (space="\u00a0").
    """
    return " \u00b7 ".join((text % ("%g" % readings[name] if isinstance(readings[name], float)
                                    else readings[name])).replace(" ", space)
                           for name, text in READING_FORMATS if name in readings)


def ago(timestamp, now):
    """Return how long ago a unix time was, for people: "4 min ago", "3 days ago"."""
    seconds = max(0, now - timestamp)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return "%d min ago" % (seconds // 60)
    if seconds < 48 * 3600:
        return "%d h ago" % (seconds // 3600)
    return "%d days ago" % (seconds // 86400)


def battery_text(device_row, form="%s (%d %%)"):
    """Return a battery's state in words, with its percentage when Netatmo gives one."""
    word = (device_row["battery"] or "").replace("_", " ")
    percent = device_row["battery_percent"]
    return word if percent is None else form % (word, percent)


def device_list_json(found):
    """Return a DeviceList as the document /devices.json and --json answer with.

    A home where only some modules do not answer has its status: it is not among
    homes_without_status (its silent modules are reachable: false). What Netatmo
    said of a product line that failed is escaped as on stderr: a script that
    prints it cannot drive a terminal either.
    """
    return {"devices": found.devices,
            "not_granted": [scope for scope, _ in found.not_granted],
            "homes_without_status": [p for p in found.status_problems
                                     if p["reason"] != "some_not_answering"],
            "failed": [dict(f, message=escaped(f["message"])) for f in found.failed],
            "fetched_at": int(found.fetched_at)}


def failure_line(failure):
    """Return the problem line of a product line that failed: which, and what Netatmo said."""
    return "%s could not be listed now (/api/%s): %s The rest is listed; try again in a " \
           "minute." % (failure["product_line"][:1].upper() + failure["product_line"][1:],
                        failure["endpoint"], failure["message"])


def error_page(error):
    """Return the page of a PageError: what happened, and a way on (a button, a link)."""
    link = '<a class="button" href="%s">%s</a>' % (escape(error.link), escape(
        error.link_text)) if error.link else ""
    return page(error.title, "<p>%s</p>\n<div>%s%s</div>" % (
        escape(error.explanation), button(*error.form) + " " if error.form else "", link))


# ---- The HTTP handler -------------------------------------------------------------
# Routing, reading within caps, writing with the headers that keep a page to itself,
# and every error turned into a page in one place.

class PageError(Exception):
    """Stop handling a request and answer with this status and explanation."""

    def __init__(self, status, title, explanation, link="/", link_text="Back to the start",
                 error="error", headers=(), exit_status=None, form=None):
        Exception.__init__(self, title)
        self.status = status
        self.title = title
        self.explanation = explanation
        self.link = link
        self.link_text = link_text
        self.error = error      # the short name /devices.json answers with
        self.headers = headers
        self.exit_status = exit_status  # with --once: how the run ends (None: it goes on)
        self.form = form        # (action, label) of a button that POSTs, before the link

    def in_terminal_run(self):
        """Return this error as a page of a terminal run: it never links to /login, which
        needs the key printed in the terminal, nor, once the run has ended, to it at all."""
        ended = self.exit_status is not None
        if ended:
            way_on = "This run has ended: run the command again in the terminal."
        elif self.link in ("/login", None):
            way_on = "To try again, open the address printed in the terminal."
        else:
            return self
        return PageError(self.status, self.title, "%s %s" % (self.explanation, way_on), None,
                         error=self.error, headers=self.headers, exit_status=self.exit_status,
                         form=None if ended else self.form)


class Redirect(Exception):
    """Stop handling a request and send the browser elsewhere."""

    def __init__(self, status, location):
        Exception.__init__(self, location)
        self.status = status
        self.location = location


def not_kept_page(error, logged_in=False):
    """Return the PageError for a login --token-file could not keep: 503, never lost."""
    return PageError(503, "Another program is renewing this login" if error.busy else
                     "The login in --token-file could not be kept",
                     "%s%s.%s" % (str(error)[:1].upper(), str(error)[1:], " This browser is "
                                  "logged in all the same." if logged_in else ""),
                     *(("/devices", "Show my devices") if logged_in else ()),
                     error="not_kept", headers=(("Retry-After", "60"),) if error.busy else (),
                     exit_status=Exit.NOT_KEPT)


def login_again(status, title, explanation, error="login_failed",
                exit_status=Exit.LOGIN_FAILED):
    """Return a PageError whose way on is a fresh login."""
    return PageError(status, title, explanation, "/login", "Log in again", error,
                     exit_status=exit_status)


def page_error_for(error):
    """Return the PageError that tells a person what a NetatmoError means for them."""
    if error.error == "invalid_grant":  # a refresh's becomes LoginExpired: the code's
        return login_again(400, "This login link was already used or expired",
                           "Netatmo did not accept the code in it. Start a new login.")
    if error.rate_limited:
        return PageError(429, "Netatmo's limit was reached",
                         "Netatmo allows each user about 50 calls per 10 seconds and 500 "
                         "per hour, and says that limit was reached. Try again later; after "
                         "a heavy burst it can take an hour.", error="rate_limited",
                         headers=(("Retry-After", "600"),), exit_status=Exit.NETATMO_FAILED)
    if error.error == "invalid_client":
        return PageError(502, "Netatmo refused this app's credentials",
                         "The client id or client secret is wrong. Check them against "
                         "dev.netatmo.com. A new app can take a few minutes to be accepted.",
                         error="invalid_client", exit_status=Exit.BAD_SETTING)
    if error.elsewhere:
        return PageError(502, "Nothing answers at --api-url", error.message,
                         error="netatmo_failed", exit_status=Exit.NETATMO_FAILED)
    if error.timeout:
        return PageError(504, "Netatmo did not answer in time",
                         "%s Netatmo may be slow or down; try again in a minute." % error.message,
                         error="netatmo_timeout", exit_status=Exit.NETATMO_FAILED)
    return PageError(502, "Netatmo failed",
                     "The failing side is Netatmo's: %s Try again in a minute." % error.message,
                     error="netatmo_failed", exit_status=Exit.NETATMO_FAILED)


class CappedHead(object):
    """A request's stream as http.server reads the header lines: capped as a whole.

    Past max_bytes, or max_lines lines, it raises the error http.server answers
    with 431 Request Header Fields Too Large.
    """

    def __init__(self, rfile, max_bytes, max_lines):
        self.rfile = rfile
        self.bytes_left = max_bytes
        self.lines_left = max_lines + 1  # and the empty line that ends the head

    def readline(self, limit=-1):
        """Return the next header line, or raise http.client.HTTPException."""
        if self.lines_left <= 0:
            raise http.client.HTTPException("more header lines than allowed")
        self.lines_left -= 1
        most = self.bytes_left + 1 if limit < 0 else min(limit, self.bytes_left + 1)
        line = self.rfile.readline(most)
        self.bytes_left -= len(line)
        if self.bytes_left < 0:
            raise http.client.HTTPException("a request head larger than allowed")
        return line


class Handler(BaseHTTPRequestHandler):
    """Routes each request to its step or route, and turns every error into a page."""

    protocol_version = "HTTP/1.1"   # keep-alive: every answer says its Content-Length
    default_request_version = "HTTP/1.0"  # even an unreadable request gets a status line
    server_version = "netatmo_stdlib/" + __version__
    max_body = LIMIT["Handler.max_body"]
    max_head = LIMIT["Handler.max_head"]
    max_header_lines = LIMIT["Handler.max_header_lines"]
    max_requests = LIMIT["Handler.max_requests"]
    keep_alive_seconds = LIMIT["Handler.keep_alive_seconds"]
    cookies = ()                  # the Set-Cookie headers of the answer being made
    # http.server writes the headers and the body in two small packets; with Nagle's
    # algorithm the second waits for the client's delayed ACK: 40 ms on every answer.
    disable_nagle_algorithm = True

    # path: {method: the step of Part 1, or the route of Part 2, that answers it}
    routes = {
        "/": {"GET": show_home},
        "/login": {"GET": login},
        "/authenticate": {"GET": authenticate, "POST": cancel_login},
        "/devices": {"GET": show_devices, "POST": fetch_again},
        "/devices.json": {"GET": devices_json},
        "/refresh": {"POST": force_refresh},
        "/logout": {"POST": logout},
        "/healthz": {"GET": healthz},
    }

    def setup(self):
        """Give every read and write on this connection --client-timeout seconds."""
        self.timeout = self.server.config.client_timeout
        self.requests = 0
        BaseHTTPRequestHandler.setup(self)

    def handle_one_request(self):
        """Read and answer one request, whose head must arrive within --client-timeout.

        The socket timeout alone would let a client that sends one byte a second hold
        the connection (and its thread) for ever: the server's deadline does not. A
        kept-alive connection waits for its next request keep_alive_seconds at most.
        """
        seconds = self.server.config.client_timeout
        if self.requests:
            seconds = min(seconds, self.keep_alive_seconds)
        self.server.watch(self.connection, seconds)
        # An answer carries the cookies of its own request only, even when http.server
        # refuses the request itself (400, 414, 431, 505) and dispatch() never runs: on
        # a kept-alive connection (a reverse proxy's), the previous request's session
        # cookie would go to whoever sent this one.
        self.cookies = []
        BaseHTTPRequestHandler.handle_one_request(self)

    def parse_request(self):
        """Parse the request line and the header lines, which are capped as a whole.

        http.server alone takes 100 header lines of 64 KB each: 6 MB per connection.
        """
        rfile = self.rfile
        self.rfile = CappedHead(rfile, self.max_head, self.max_header_lines)
        try:
            return BaseHTTPRequestHandler.parse_request(self)
        finally:
            self.rfile = rfile

    def finish(self):
        """Stop watching the connection's deadline, and close it."""
        self.server.unwatch(self.connection)
        BaseHTTPRequestHandler.finish(self)

    def dispatch(self):
        """Answer a request of any method through the route table."""
        path = self.path.split("?", 1)[0]
        self.query = self.path[len(path) + 1:]
        methods = self.routes.get(path)
        self.requests += 1
        if self.requests >= self.max_requests:  # a busy client does not keep it for ever
            self.close_connection = True
        try:
            self.read_body()
            self.server.unwatch(self.connection)  # the request is in: no deadline now
            if methods is None:
                raise PageError(404, "Page not found", "There is nothing at %s here."
                                % urllib.parse.unquote(path)[:LIMIT["text"]].translate(
                                    CONTROL_CHARACTERS))
            route = methods.get("GET" if self.command == "HEAD" else self.command)
            if route is None:
                allow = ", ".join(sorted(set(methods) | ({"HEAD"} if "GET" in methods else set())))
                raise PageError(405, "Method not allowed", "This address answers %s only."
                                % allow, headers=(("Allow", allow),))
            if self.command == "POST":
                self.check_origin()
            route(self.server, self)
        except Redirect as redirect:
            self.redirect(redirect.status, redirect.location)
        except LoginExpired:
            self.dispatch_error(self.login_expired())
        except NetatmoError as error:
            self.dispatch_error(page_error_for(error))
        except NotKept as error:
            self.dispatch_error(not_kept_page(error))
        except PageError as error:
            self.dispatch_error(error)
        except OSError:  # the browser hung up while we answered
            self.close_connection = True
        except Exception:  # a bug of ours: say so, and leave its traceback in the log
            log.exception("internal error on %s %s", self.command, path)
            self.close_connection = True
            self.dispatch_error(PageError(500, "Internal error", "Something went wrong in "
                                          "this program; its log says what.",
                                          exit_status=Exit.LOGIN_FAILED))

    do_GET = do_HEAD = do_POST = dispatch

    def __getattr__(self, name):
        """Answer every other method (PUT, TRACE, BREW...) through dispatch too.

        http.server answers a method without a do_ method with 501; ours answers 405
        with the Allow header of the path, or 404, which tells the client more.
        """
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def dispatch_error(self, error):
        """Answer with the error's page; with --once, an error that ends the run ends it,
        even if its page could not be sent."""
        if self.server.outcome is not None:
            error = error.in_terminal_run()
        try:
            self.send_error_page(error)
        finally:
            if self.server.outcome is not None and error.exit_status is not None:
                self.server.outcome.finish(error.exit_status, "%s. %s" % (
                    error.title, error.explanation))

    def login_expired(self):
        """Forget the session whose refresh token Netatmo refused; return its PageError."""
        sid = self.cookie(self.server.config.cookie_name)
        if sid:
            self.server.sessions.delete(sid)
        error = login_again(401, "Your Netatmo login has ended",
                            "Netatmo no longer accepts this session's refresh token (it "
                            "expired, or was used by another program). Log in again.",
                            error="not_authenticated")
        self.expire_cookie(self.server.config.cookie_name)
        return error

    def param(self, name):
        """Return the single value of a query parameter, or None if absent or repeated."""
        values = urllib.parse.parse_qs(self.query, keep_blank_values=True).get(name, [])
        return values[0] if len(set(values)) == 1 else None

    def cookie(self, name):
        """Return the value of the one cookie of this name the browser sent, or None.

        Cookies do not keep ports apart: a program on another port of this host can
        plant a second cookie of the same name with a longer Path, which the browser
        sends first, and the person would see that program's account. So two mean
        none, and the answer expires both: at Path=/ and at this path, where a
        planted one with a longer Path would live. (Over https the cookies' __Host-
        prefix makes such a cookie impossible in the first place.)
        """
        values = self.cookie_values(name)
        if len(values) > 1:
            for path in sorted({"/", self.path.split("?", 1)[0]}):
                self.expire_cookie(name, path)
            return None
        return values[0] if values else None

    def cookie_values(self, name):
        """Return the values of every cookie of this name the browser sent."""
        values = []
        for header in self.headers.get_all("Cookie") or ():
            for pair in header.split(";"):
                key, _, value = pair.strip().partition("=")
                if key == name and value:
                    values.append(value)
        return values

    def check_origin(self):
        """Refuse a POST sent by a page of another site (cross-site request forgery).

        A browser sends Origin with every POST: it must be this program's own. It
        sends "null" when it will not say where the form was (a sandboxed frame, a
        page under no-referrer), and Sec-Fetch-Site says "cross-site" or "same-site"
        when the form was on another site, or on another port of this host: all
        refused. A POST without Origin comes from a program such as curl, not from a
        browser, and carries only the cookies its user gave it: it is let through.
        """
        origins = self.headers.get_all("Origin") or ()
        site = self.headers.get("Sec-Fetch-Site")
        if any(o.lower() != self.server.config.origin for o in origins) or \
                site in ("cross-site", "same-site"):
            raise PageError(403, "Request from another site refused",
                            "This form was sent from a page that is not this program's.")

    def read_body(self):
        """Read and discard a request body, so the next request on the connection parses."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise PageError(411, "Length required", "Send a Content-Length, not chunks.")
        lengths = self.headers.get_all("Content-Length") or ()
        if not lengths:
            return
        length = lengths[0].strip()
        if len(lengths) > 1 or not digits(length):
            self.close_connection = True
            raise PageError(400, "Bad request", "Send one Content-Length, a number.")
        if int(length) > self.max_body:
            self.close_connection = True
            raise PageError(413, "Request too large", "This program takes no large bodies.")
        self.rfile.read(int(length))

    # -- answers --

    def send_body(self, status, body, content_type, headers=()):
        """Send a whole answer with its length, so the connection can be kept alive."""
        self.send_response(status)
        for name, value in tuple(self.cookies) + tuple(headers):
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        # same-origin: a form POSTed to this program carries its Origin (under
        # no-referrer browsers send "Origin: null", which check_origin must refuse),
        # and no address of ours, with its query, leaks to another site.
        self.send_header("Referrer-Policy", "same-origin")
        if self.server.config.secure_cookies:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_html(self, status, text, headers=()):
        """Send an HTML page with the headers that keep it self-contained."""
        self.send_body(status, text.encode("utf-8"), "text/html; charset=utf-8",
                       tuple(headers) + (("Content-Security-Policy", CONTENT_SECURITY_POLICY),))

    def send_json(self, status, value, headers=()):
        """Send a JSON document: readable text, but TERMINAL_CONTROLS as \\uXXXX."""
        self.send_body(status, JSON_ESCAPES.sub(lambda c: "\\u%04x" % ord(c.group()), json.dumps(
            value, ensure_ascii=False)).encode("utf-8"), "application/json; charset=utf-8",
            headers)

    def send_error_page(self, error):
        """Send a PageError as a page, or as JSON to a program that asked for JSON."""
        if self.path.split("?", 1)[0].endswith(".json"):
            self.send_json(error.status, {"error": error.error, "message": error.explanation},
                           error.headers)
        else:
            self.send_html(error.status, error_page(error), error.headers)

    def redirect(self, status, location):
        """Send the browser to location."""
        self.send_body(status, b"", "text/plain; charset=utf-8", (("Location", location),))

    def set_cookie(self, name, value, path="/", max_age=None):
        """Have the answer set a cookie: HttpOnly, SameSite=Lax, and Secure over https."""
        # SameSite=Lax, not Strict: the return from Netatmo to /authenticate is a
        # cross-site navigation, and a Strict cookie would not be sent with it, so
        # the state could never be matched. Lax still keeps it off cross-site POSTs.
        parts = ["%s=%s" % (name, value), "HttpOnly", "SameSite=Lax", "Path=" + path]
        if self.server.config.secure_cookies:
            parts.append("Secure")
        if max_age is not None:
            parts.append("Max-Age=%d" % max_age)
        if not value:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        self.cookies.append(("Set-Cookie", "; ".join(parts)))

    def expire_cookie(self, name, path="/"):
        """Have the answer delete a cookie from the browser."""
        self.set_cookie(name, "", path, max_age=0)

    def send_error(self, code, message=None, explain=None):
        """Answer a request http.server could not parse with our own kind of page."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True  # what follows the bad bytes cannot be trusted
        reason = self.responses.get(code, ("Error",))[0]
        # The message may quote the raw request: it goes to the log, not the page.
        self.send_html(code, error_page(PageError(
            code, reason, "This program could not read the request (%s)." % reason)))

    def version_string(self):
        """Return the Server header: our name, not the Python version."""
        return self.server_version

    def log_request(self, code="-", size="-"):
        """Log one line per request, without the query string (it holds codes)."""
        path = (self.path or "").split("?", 1)[0] if self.command else "-"
        self.log_message('"%s %s" %s', self.command or "-", path, code)

    def log_message(self, format, *args):
        """Log through `logging`, dropping anything after a "?" that could be a query.

        The log's formatter writes control characters as \\xNN, as http.server does
        since 3.12: a request line with terminal escapes cannot recolour or rewrite it.
        """
        message = format % args
        if "?" in message:
            message = message.split("?", 1)[0] + "?[query dropped]"
        log.info("%s %s", self.address_string(), message)


class App(object):
    """What the steps use, whether this program listens or not: the settings, the
    trace, the client that talks to Netatmo, and the logins in progress.

    A terminal run with a good saved login, or with --paste, is an App alone: it
    binds no socket. The web app, and a run that needs a browser, is a Server.
    """

    def __init__(self, config):
        self.config = config
        self.trace = Trace(sys.stderr if config.trace else None)
        self.netatmo = NetatmoClient(config, self.trace)
        self.logins = Logins()
        self.token_lock = threading.Lock()
        self.token_owner = None  # the session whose tokens --token-file holds

    def keep_tokens(self, session):
        """--token-file: save the owner's new login now, and after each of its refreshes.

        The owner's last login owns the file: an older session's refreshes no longer
        write it. If the file cannot take the new pair (its lock is held past the
        wait, a full disk), it keeps the pair it held, which stays alive: return the
        NotKept that says so, else None.
        """
        token_file = self.config.token_file
        if token_file is None:
            return None
        try:
            with token_file.locked():  # not in the middle of another program's refresh
                token_file.save(session.tokens)
                with self.token_lock:
                    if self.token_owner is not None:
                        self.token_owner.token_file = None
                    self.token_owner = session
                    session.token_file = token_file
        except NotKept as e:
            return e
        except OSError as e:
            return NotKept("this login could not be saved in %s (%s); the file keeps the "
                           "login it held" % (token_file.path, e.strerror or e))
        return None


class Server(App, socketserver.ThreadingMixIn, HTTPServer):
    """An HTTP server with one thread per connection (ThreadingHTTPServer, also on 3.6).

    Connections are capped, in all and per client address, so that no client can
    hold every thread: one over a cap is closed at once, unread.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LIMIT["Server.request_queue_size"]  # socketserver's 5 drops bursts
    max_connections = LIMIT["Server.max_connections"]
    max_connections_per_client = LIMIT["Server.max_connections_per_client"]  # a quarter

    def __init__(self, config):
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.address_family = family
        App.__init__(self, config)  # before binding: server_close() closes its client
        HTTPServer.__init__(self, (config.host, config.port), Handler)
        if config.port == 0:  # a free port was picked: the default redirect URI names it
            default = config.redirect_uri == config.default_redirect_uri()
            config.port = self.server_address[1]
            if default:
                config.redirect_uri = config.default_redirect_uri()
        self.sessions = SessionStore(config.cache_seconds)
        self.exchanges = Exchanges()
        self.outcome = Outcome() if config.terminal else None
        self.tls = tls_context(config) if config.certfile else None
        self.deadlines = {}      # connection -> when its request must have arrived
        self.deadlines_lock = threading.Lock()
        self.next_reaping = 0
        self.connections = {}    # client address -> its open connections
        self.connections_lock = threading.Lock()
        self.next_refusal_log = 0
        # The login URL printed in the terminal carries this secret. In the terminal
        # modes only a browser that has it may log in (not another user of this host
        # first); with --token-file only a login begun there writes the file.
        self.login_key = random_text(24) if config.terminal or config.token_file \
            else None

    def login_path(self, owner=True):
        """Return the path of /login, with the owner's key for the owner's login."""
        return "/login" + ("?k=" + self.login_key if owner and self.login_key else "")

    def process_request(self, request, client_address):
        """Serve a new connection in a thread of its own, unless a cap is reached."""
        address = client_address[0]
        with self.connections_lock:
            mine = self.connections.get(address, 0)
            allowed = (mine < self.max_connections_per_client
                       and sum(self.connections.values()) < self.max_connections)
            if allowed:
                self.connections[address] = mine + 1
        if allowed:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
            return
        request.close()
        if time.time() >= self.next_refusal_log:  # a flood logs one line a minute
            self.next_refusal_log = time.time() + 60
            log.warning("%s: connection refused, too many open (%d in all, %d per "
                        "address at most)", address, self.max_connections,
                        self.max_connections_per_client)

    def process_request_thread(self, request, client_address):
        """Serve one connection, then count it closed."""
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            with self.connections_lock:
                left = self.connections.pop(client_address[0]) - 1
                if left:
                    self.connections[client_address[0]] = left

    def watch(self, connection, seconds):
        """Start the clock: the next request on this connection must come within seconds."""
        with self.deadlines_lock:
            self.deadlines[connection] = time.time() + seconds

    def unwatch(self, connection):
        """Stop the clock of this connection."""
        with self.deadlines_lock:
            self.deadlines.pop(connection, None)

    def service_actions(self):
        """Between two polls of serve_forever: cut off connections past their deadline."""
        now = time.time()
        if now < self.next_reaping:
            return
        self.next_reaping = now + 0.25
        with self.deadlines_lock:
            overdue = [c for c, deadline in self.deadlines.items() if deadline < now]
            for connection in overdue:
                del self.deadlines[connection]
        for connection in overdue:
            try:  # its thread reads the end, and ends; for TLS, the plain socket's shutdown
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        """Log a connection that failed: one line if the client vanished, else the bug."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("%s connection ended: %s", client_address[0], error)
        else:
            log.exception("internal error serving %s", client_address[0])

    def finish_request(self, request, client_address):
        """Serve one connection; with --certfile, first the TLS handshake, in its thread."""
        if self.tls is None:
            HTTPServer.finish_request(self, request, client_address)
            return
        # The ssl module applies this timeout to the whole handshake, not to each read:
        # a client dribbling its ClientHello is cut off too.
        request.settimeout(self.config.client_timeout)
        try:
            first = request.recv(1, socket.MSG_PEEK)
            if first.isalpha():  # a plain HTTP request ("GET ..."): say where to go
                request.sendall(plain_http_answer(self.config.origin + "/"))
                return
            request = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # not TLS, or no handshake in time: just close
            return
        try:
            HTTPServer.finish_request(self, request, client_address)
        finally:
            self.shutdown_request(request)

    def shutdown_request(self, request):
        """Close a connection gracefully, so a reset cannot destroy our last answer.

        Closing a socket that still holds unread bytes (the rest of a huge request we
        refused) sends a TCP reset, and the client may lose the answer we just sent.
        So: stop writing, discard what the client still sends for up to a second,
        then close.
        """
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.time() + 1
            request.settimeout(1)
            while time.time() < deadline and request.recv(65536):
                pass
        except OSError:
            pass
        self.close_request(request)

    def server_close(self):
        """Stop listening, and close the connections kept open to Netatmo."""
        HTTPServer.server_close(self)
        self.netatmo.close()

    def server_bind(self):
        """Bind without HTTPServer's reverse DNS lookup, which can hang offline."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]


def plain_http_answer(url):
    """Return the plain-text 400 for a browser that spoke HTTP to the https port."""
    text = ("This server speaks HTTPS only: open %s instead.\n" % url).encode("utf-8")
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(text)) + text


def tls_context(config):
    """Return the TLS context for --certfile and --keyfile: TLS 1.2 at least."""
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:  # Python 3.6
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    try:
        context.load_cert_chain(config.certfile, config.keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("cannot use --certfile %r with --keyfile %r: %s"
                          % (config.certfile, config.keyfile, getattr(e, "strerror", None)
                             or e))
    return context


# ---- The trace and the terminal ---------------------------------------------------
# --trace, every secret hidden; and escaped(), the one way to stderr, so that no name
# or message from others can drive the terminal (move, retitle, OSC 52, CR).

# The characters that never reach a terminal raw: the C0 controls, DEL and the C1
# controls, which drive it (move, retitle, OSC 52, CR), and the bidi controls and the
# line and paragraph separators, which reorder or break the line it shows.
TERMINAL_CONTROLS = (list(range(0x20)) + list(range(0x7f, 0xa0)) + [0x200e, 0x200f]
                     + list(range(0x202a, 0x202f)) + list(range(0x2066, 0x206a))
                     + [0x2028, 0x2029])
# On stderr as \\xNN up to 0xFF and \\uXXXX above, and the backslash doubled, as
# http.server's log writes them.
CONTROL_CHARACTERS = dict((c, ("\\x%02x" if c <= 0xff else "\\u%04x") % c)
                          for c in TERMINAL_CONTROLS)
CONTROL_CHARACTERS[ord("\\")] = "\\\\"
# What /devices.json writes as \\uXXXX: json.dumps escapes the C0 controls already; a
# script that prints a name from it must not drive a terminal with the others either.
# (A regular expression: str.translate took 2 ms of every page of alice's 73 devices.)
JSON_ESCAPES = re.compile("[%s]" % "".join(re.escape(chr(c)) for c in TERMINAL_CONTROLS
                                           if c >= 0x20))


def escaped(text):
    """Return text with every character of TERMINAL_CONTROLS escaped, newlines too."""
    return str(text).translate(CONTROL_CHARACTERS)


def say(message):
    """Write one message to stderr, escaped, under the program's name."""
    sys.stderr.write("netatmo_stdlib: %s\n" % escaped(message))
    sys.stderr.flush()


class LogFormatter(logging.Formatter):
    """Log lines whose message is escaped, and a traceback escaped line by line."""

    def formatMessage(self, record):
        record.message = escaped(record.message)
        return logging.Formatter.formatMessage(self, record)

    def formatException(self, exc_info):
        text = logging.Formatter.formatException(self, exc_info)
        return "\n".join(escaped(line) for line in text.split("\n"))


STEPS = {"a": "receive the authorization request", "b": "redirect to Netatmo",
         "c": "receive the code", "d": "exchange it for a token",
         "e": "retrieve and output the devices"}


class Trace(object):
    """--trace: each step of the flow told on stderr as it happens, with no secret.

    A block names the step, the HTTP messages that carry it and what came back,
    then says why the step, or its check, is there: one block per step, and per
    page. State, code, verifier and challenge, tokens, the client secret and cookie
    values show only as their length, and whether they matched: a trace can be
    pasted anywhere. Without --trace the stream is None, and nothing is told.
    """

    def __init__(self, stream=None):
        self.stream = stream
        self.lock = threading.Lock()
        self.local = threading.local()  # the block this thread is telling, if any

    @property
    def on(self):
        """Return True when --trace is on."""
        return self.stream is not None

    def step(self, letter, lines, why):
        """Write one block at once: the step, its lines (escaped), and why."""
        if self.stream is None:
            return
        text = "(%s) %s\n%s    why: %s\n" % (letter, STEPS[letter],
                                              "".join("    %s\n" % escaped(line)
                                                      for line in lines), why)
        with self.lock:
            self.stream.write(text)
            self.stream.flush()

    def block(self, letter):
        """Return a Block that gathers a step's lines, written when its `with` ends.

        A block of the same step already open in this thread takes the lines
        instead: a refresh made while a saved login is told is told with it.
        """
        current = getattr(self.local, "block", None)
        return Block(self, letter, current if current and current.letter == letter else None)

    def login(self, request, cookie, state, challenge):
        """Tell steps (a) and (b), as GET /login answers them."""
        if self.stream is None:
            return
        config = request.server.config
        self.step("a", [
            "GET /login from %s" % request.client_address[0],
            "-> Set-Cookie: %s=<a random nonce and its time, signed with HMAC-SHA256: %s>; "
            "Path=%s; Max-Age=600" % (config.login_cookie_name, hidden(cookie),
                                      config.login_cookie_path)],
            "the login's state and PKCE verifier are derived from the nonce under a key "
            "only this run knows: the server keeps nothing for a login in progress")
        self.consent(config, "302 Location", state, challenge)

    def consent(self, config, how, state, challenge):
        """Tell step (b): the address of Netatmo's consent page, and how it was given."""
        if self.stream is None:
            return
        self.step("b", [
            "-> %s: %s/oauth2/authorize" % (how, config.api_url),
            "  client_id=%s redirect_uri=%s scope=%s response_type=code"
            % (config.client_id, config.redirect_uri, config.scopes),
            "  state: %s%s" % (hidden(state), "" if challenge is None else
                               "; code_challenge: %s (code_challenge_method=S256)"
                               % hidden(challenge))],
            "the person logs in and approves at Netatmo, never here; the state comes back "
            "with the answer and proves it is this browser's")

    def pasted(self, answer, wrong):
        """Tell step (c) for --paste: the pasted address, and its state's check."""
        if self.stream is None:
            return
        if answer is None:
            lines = ["pasted: not this login's answer (%s)" % wrong, "-> asked again; nothing "
                     "sent to Netatmo"]
        elif answer.get("error"):
            lines = ["pasted: error=%s, state %s" % (error_name(answer["error"]), "absent" if
                                                    answer.get("state") is None else
                                                    "matches this run's login"),
                     "-> the person pasted it: this login's refusal; the run ends"]
        else:
            lines = ["pasted: code %s, state %s" % (hidden(answer["code"]),
                                                    hidden(answer["state"])),
                     "state: matches this run's login, checked as /authenticate checks it",
                     "-> accepted: on to step (d)"]
        self.step("c", lines, "the state must be this login's: an address from another "
                  "login, or a forged one, never reaches the token endpoint")

    def accepted(self, request, code, state):
        """Tell step (c) of a callback accepted; return the Block of step (d), next."""
        self.callback(request, code, state, None, True, True)
        return self.block("d")

    def callback(self, request, code, state, problem, matches, first_use, outcome=None):
        """Tell step (c): the callback, each of its checks, and what came of it."""
        if self.stream is None:
            return
        self.step("c", [
            "GET /authenticate from %s: code %s, state %s"
            % (request.client_address[0], "absent" if code is None else hidden(code),
               "absent" if state is None else hidden(state)),
            "login cookie: %s" % ("signed by this run, younger than 10 minutes"
                                  if problem is None else problem),
            "state: %s" % ("absent" if state is None else "matches the login cookie"
                           + (", but was used already" if code and not first_use else "")
                           if matches else "does not match the login cookie"),
            "-> " + (outcome or ("accepted: on to step (d)" if first_use
                                 else "refused: 400, and nothing sent to Netatmo"))],
            "the state must match the signed login cookie, once: this is what stops a "
            "forged or replayed callback")


class Block(object):
    """The lines of one step's block, told at once when its `with` ends (see Trace)."""

    def __init__(self, trace, letter, outer=None):
        self.trace, self.letter, self.outer = trace, letter, outer
        self.lines = outer.lines if outer else []  # extend() is atomic: calls add at once
        self.why = []

    def __enter__(self):
        if self.outer is None:
            self.previous = getattr(self.trace.local, "block", None)
            self.trace.local.block = self
        return self

    def __exit__(self, *exc_info):
        if self.outer is None:
            self.trace.local.block = self.previous
            if self.lines:
                self.trace.step(self.letter, self.lines, "; ".join(self.why))
        return False

    def add(self, *lines):
        """Add lines to the block (under --trace)."""
        if self.trace.on:
            self.lines.extend(lines)

    def because(self, why):
        """Say why, once per block however many calls give the same reason."""
        block = self.outer or self
        if self.trace.on and why not in block.why:
            block.why.append(why)

    def token_post(self, url, form, started, tokens=None, error=None):
        """Add a POST to the token endpoint, and what came back."""
        if not self.trace.on:
            return
        public = ("grant_type", "client_id", "redirect_uri", "scope")
        sent = ", ".join("%s=%s" % (k, v) if k in public else "%s: %s" % (k, hidden(v))
                         for k, v in form)
        took = (time.time() - started) * 1000
        self.add("POST %s" % url, "  " + sent, "-> %s in %.0f ms: %s" % (
            error.status or "no answer", took, error.message) if error is not None else
            "-> 200 in %.0f ms: access token (%s) valid %s, scope %s; refresh token (%s)" % (
                took, hidden(tokens.access_token), "for an unknown time"
                if tokens.lifetime is None else duration(tokens.lifetime),
                " ".join(tokens.scope) or "none", hidden(tokens.refresh_token)))
        self.because(
            "Netatmo rotates the pair at each refresh: the old refresh token dies with "
            "this answer, so refreshes go one at a time and the new pair is kept at once"
            if dict(form).get("grant_type") == "refresh_token" else "the code is worth "
            "nothing alone: only with the client secret, and the PKCE verifier, does "
            "Netatmo trade it for tokens, server to server, out of the browser's sight")

    def session_started(self, config, sid):
        """Add the session cookie that ends step (d)."""
        self.add("-> Set-Cookie: %s=<a new random session id: %s>; HttpOnly; SameSite=Lax"
                 % (config.cookie_name, hidden(sid)),
                 "-> Set-Cookie: %s=; Max-Age=0 (this login is over)"
                 % config.login_cookie_name)
        self.because("the tokens stay in this server's memory: the browser holds only an "
                     "id that means nothing to anyone else, and a new one at each login")

    def api_call(self, url, headers, started, body=None, error=None):
        """Add one GET of a device endpoint, and what came back."""
        if not self.trace.on:
            return
        took = (time.time() - started) * 1000
        self.add("GET %s" % url, "  Authorization: Bearer <access token, %s>"
                 % hidden(headers.get("Authorization", "")[len("Bearer "):]),
                 "-> %s in %.0f ms: %s" % (error.status or "no answer", took, error.message)
                 if error is not None else "-> 200 in %.0f ms: %s"
                 % (took, summary_of(url, body)))
        self.because("the access token travels in the Authorization header, never in a "
                     "URL, where logs and browser histories would keep it")

    def device_list(self, found, asked, where):
        """Add what became of a page's calls: one row per device, or the cache."""
        cached = found.fetched_at < asked
        self.add(("from this session's cache, fetched %s ago: no call to Netatmo"
                  % duration(asked - found.fetched_at)) if cached
                 else "merged into one row per device",
                 "-> %d devices (%d offline)%s, %s" % (
                     len(found.devices), sum(d["reachable"] is False for d in found.devices),
                     "".join("; %s failed" % f["endpoint"] for f in found.failed), where))
        self.because("Netatmo allows 50 calls per 10 seconds per user: a list is shown "
                     "again for --cache-seconds without asking" if cached else "a device "
                     "that several answers list is one row, its status from the answer "
                     "that heard from it last")

    def saved_login(self, path, saved, refreshed):
        """Add what a terminal run did with the login saved in --token-file."""
        left = None if saved.expires_at is None else saved.expires_at - time.time()
        self.add("%s holds a saved login: access token (%s) %s" % (
            path, hidden(saved.access_token), "valid for an unknown time" if left is None
            else "valid for %s more" % duration(left) if left > 0 else "expired"),
            "-> %s" % ("refreshed, under the file's lock (above)" if refreshed
                       else "used as it is: no call"))
        self.because("the file's lock makes one refresh at a time among the programs "
                     "that share it, and they take the new pair from the file" if refreshed
                     else "a token good for longer than a minute is used as it is: no "
                     "refresh, so the file, and the programs that share it, are left alone")


def hidden(value):
    """Return what a trace shows of a secret: its length, never its value."""
    return "%d characters" % len(value or "")


def duration(seconds):
    """Return a length of time for people: "3 h", "10 min", "30 s"."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return "%g %s" % (round(seconds / size, 1), unit)
    return "%g s" % round(seconds, 1)


def summary_of(url, body):
    """Return what a device endpoint's answer holds, counted: "2 homes, 51 modules"."""
    path = url.split("?", 1)[0].rsplit("/", 1)[-1]
    body = body if isinstance(body, dict) else {}
    if path.startswith("homesdata"):
        homes = listed(body.get("homes"))
        return "%d homes, %d modules" % (len(homes), sum(len(listed(h.get("modules")))
                                                         for h in homes))
    if path.startswith("homestatus"):
        home = home_of_status(body)
        silent = sorted(not_answering(body))
        return ("the status of %d modules and %d rooms" % (
            len(listed(home.get("modules"))), len(listed(home.get("rooms"))))
            + ("; code 6: %s does not answer" % ", ".join(silent) if silent else ""))
    stations = listed(body.get("devices"))
    return "%d %s, %d modules" % (len(stations), "home coaches" if "homecoach" in path
                                  else "stations",
                                  sum(len(listed(s.get("modules"))) for s in stations))


# ---- The terminal modes ----------------------------------------------------------
# The same flow for a terminal: one login, or the saved one; the result on stdout.

class Outcome(object):
    """How a --once or --print-token run ends: a device list or tokens, or an exit
    status and why."""

    def __init__(self):
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.status = None
        self.message = None
        self.device_list = None
        self.tokens = None

    def finish(self, status, message=None, device_list=None, tokens=None):
        """Record the end of the run, once; later calls change nothing.

        tokens (and with --once, device_list) come with a login that worked: they
        are printed, whatever the status.
        """
        with self.lock:
            if self.done.is_set():
                return
            self.status, self.message = status, message
            self.device_list, self.tokens = device_list, tokens
            self.done.set()


def finish_terminal_login(server, request, session, not_kept):
    """--once or --print-token: end the run with this login; the tab says where to look."""
    found = None if server.config.print_token else device_list(server, session,
                                                                "to the terminal")
    request.send_html(200, page("Done", "<p>The terminal has %s. You may close this tab.</p>"
                                % ("your access token" if found is None else
                                   "the list of your %d devices" % len(found.devices))))
    not_kept = not_kept or session.not_kept
    server.outcome.finish(Exit.NOT_KEPT if not_kept else Exit.DONE,
                          not_kept and str(not_kept), found, session.tokens)


def run_terminal(config, saved):
    """--once or --print-token: log in (from the saved tokens, else in a browser), print.

    A good saved login, or one that refreshes, binds no port: any number of runs go
    on beside the web app and beside each other. Only a login in the browser listens;
    --paste never does.
    Ctrl-C in any wait ends the run with one line. Return the exit status (Exit's).
    """
    app = App(config)
    try:
        if saved is not None:
            status = from_saved_login(config, app, saved)
            if status is not None:
                return status
        elif config.no_browser:
            return fail(Exit.LOGIN_FAILED, "no saved login in %s: run once without "
                        "--no-browser to log in" % config.token_file.path)
        if config.paste:
            return paste_login(config, app)
        try:
            server = listen(config)
        except ConfigError as e:
            return fail(Exit.BAD_SETTING, "error: %s" % e)
        return browser_login(config, server)
    except KeyboardInterrupt:
        return fail(Exit.INTERRUPTED, "interrupted")
    finally:
        app.netatmo.close()


def browser_login(config, server):
    """Serve one login in the browser, at the address with the owner's key; print what
    it got. Return the exit status."""
    login_url = config.origin + server.login_path()
    redirect = None
    # Poll for shutdown every 0.1 s (not 0.5): the run ends soon after the login.
    thread = threading.Thread(target=server.serve_forever, args=(0.1,))
    thread.start()
    try:
        say("open %s in a browser to log in (waiting up to %g s; if Netatmo shows an error "
            "page instead of its login, the client id or the redirect URI is the likely "
            "cause)" % (login_url, config.wait))
        say(config.redirect_uri_line())
        if config.in_clear_line():
            say(config.in_clear_line())
        if config.open_browser:
            redirect = open_browser(login_url, secret=True)
        if not server.outcome.done.wait(config.wait):
            return fail(Exit.NO_LOGIN, "no login was completed within %g s (--wait)%s"
                        % (config.wait, "; the browser went to Netatmo but never came "
                           "back: if Netatmo showed an error page, check the client id and "
                           "the redirect URI registered for the app" if server.logins.started
                           else ""))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        if redirect is not None:  # the private page of --open, and its folder
            shutil.rmtree(os.path.dirname(redirect), ignore_errors=True)
    outcome = server.outcome
    if outcome.tokens is None:  # no login: nothing to print
        return fail(outcome.status, outcome.message)
    return print_outcome(config, outcome.tokens, outcome.device_list, outcome.message)


def paste_login(config, app):
    """--paste: print Netatmo's consent address; read back the address the browser ended
    at, on stdin; then (d) and (e) as --once. Nothing listens: the browser may be on
    another machine, and its last page need not load. Return the exit status.
    """
    logins = app.logins
    _, nonce = logins.start(owner=True)  # this run keeps the nonce: no cookie to sign
    deadline = time.time() + min(config.wait, logins.ttl)
    verifier = logins.code_verifier(nonce) if config.pkce else None
    challenge = code_challenge(verifier) if verifier else None
    app.trace.consent(config, "printed for the person to open", logins.state(nonce), challenge)
    say("open this address in a browser, on any machine, and log in at Netatmo:")
    sys.stderr.write(escaped(authorize_url(config, logins.state(nonce), challenge)) + "\n")
    say("the browser then ends on a page that does not load (nothing listens at %s): "
        "that is expected. Copy the whole address from its address bar, paste it here, and "
        "press Enter (waiting up to %g s). Should a program answer there on your machine, "
        "it gets a code worth nothing without this run's verifier."
        % (config.redirect_uri, min(config.wait, logins.ttl)))
    lines = PastedLines(sys.stdin.fileno())
    for attempt in range(PastedLines.max_wrong):
        line = lines.next(deadline)
        if line is None:
            return fail(Exit.LOGIN_FAILED, "no address was pasted (the input ended)")
        if line is PastedLines.TIMEOUT:
            return fail(Exit.NO_LOGIN, "no login was completed within %g s (--wait, and a "
                        "login's %d minutes at most)" % (min(config.wait, logins.ttl),
                                                        logins.ttl // 60))
        answer, wrong = pasted_answer(line)
        # A refusal pasted by the person is theirs, state or not; a code needs the state.
        if answer is not None and not (answer.get("error") and answer.get("state") is None
                                       or state_matches(logins, nonce, answer.get("state"))):
            answer, wrong = None, ("that address is not from this login (its state is not "
                                   "this one's): open the address above, and paste where the "
                                   "browser ends")
        app.trace.pasted(answer, wrong)
        if answer is not None:
            break
        say(wrong + (": try again" if attempt + 1 < PastedLines.max_wrong else ""))
    else:
        return fail(Exit.LOGIN_FAILED, "%d pastes were not this login's answer; run the "
                    "command again to start a new login" % PastedLines.max_wrong)
    if answer.get("error"):
        _, title, explanation, status = refusal_words(answer["error"],
                                                      answer.get("error_description"))
        return fail(status, "%s. %s" % (title, explanation))
    logins.use(nonce)
    try:
        with app.trace.block("d") as told:
            session = Session(exchange_code(app, answer["code"], verifier, told), time.time())
        not_kept = app.keep_tokens(session)
        found = None if config.print_token else device_list(app, session, "to the terminal")
    except NotKept as e:
        return fail(Exit.NOT_KEPT, str(e))
    except NetatmoError as e:  # a code used, or expired: the login must start again
        error = page_error_for(e)
        return fail(error.exit_status, "%s. %s" % (error.title, error.explanation))
    return print_outcome(config, session.tokens, found, not_kept or session.not_kept)


class PastedLines(object):
    """The lines pasted on stdin, read in a thread of their own: waiting for one can end
    at a deadline on Windows too, where select() does not work on stdin."""

    max_bytes = LIMIT["PastedLines.max_bytes"]
    max_wrong = LIMIT["PastedLines.max_wrong"]
    TIMEOUT, TOO_LONG = object(), object()

    def __init__(self, fd):
        import queue  # late: only --paste waits on it
        self.lines, self.empty = queue.Queue(), queue.Empty
        threading.Thread(target=self.read, args=(fd,), daemon=True).start()

    def read(self, fd):
        """Queue each line, as text; a line over max_bytes as TOO_LONG; None at the end.

        os.read, not sys.stdin: a thread left waiting in sys.stdin's buffer when the run
        ends would stop the interpreter's exit with an abort.
        """
        pending, skipping = b"", False
        while True:
            chunk = os.read(fd, 65536)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self.lines.put(self.TOO_LONG if skipping or len(line) > self.max_bytes
                               else line.decode("utf-8", "replace").strip())
                skipping = False
            if len(pending) > self.max_bytes:  # a line too long: its rest is skipped
                pending, skipping = b"", True
            if not chunk:
                self.lines.put(None)
                return

    def next(self, deadline):
        """Return the next line, None at the end of the input, or TIMEOUT at deadline."""
        try:
            return self.lines.get(timeout=max(0, deadline - time.time()))
        except self.empty:
            return self.TIMEOUT


def pasted_answer(line):
    """Return ({"code" or "error", "state", ...}, None) of a pasted address, or (None,
    what to paste instead)."""
    if line is PastedLines.TOO_LONG:
        return None, "that line is longer than %d KB: paste the address alone" % (
            PastedLines.max_bytes // 1024)
    parts = urllib.parse.urlsplit(line)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in line:
        return None, ("that is not an address: copy the whole address from the browser's "
                      "address bar, starting with http")
    # A parameter given twice counts as absent, as /authenticate reads it.
    params = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query, keep_blank_values=True)
              .items() if len(v) == 1}
    if not params.get("code") and not params.get("error"):
        return None, ("that address holds no code and no error: paste the address the "
                      "browser ended at after Netatmo's page, which holds code= and state=")
    return params, None


def from_saved_login(config, server, saved):
    """Use the login saved in --token-file: print the devices, or the access token.

    The saved access token is used as it is while it is good for longer than the
    refresh margin: a run then makes only the device calls, or none at all with
    --print-token. Otherwise it is refreshed under the file's lock, and the new pair
    is saved before anything else can fail. Return the exit status, or None to fall
    back to a login in the browser.
    """
    session = Session(saved, time.time())
    session.token_file = config.token_file
    try:
        with server.trace.block("d") as told:
            session.access_token(server.netatmo)  # refreshes now only if it must
            told.saved_login(config.token_file.path, saved, session.tokens is not saved)
        found = None if config.print_token else device_list(server, session,
                                                             "to the terminal")
    except NotKept as e:  # the lock: nothing was refreshed, the saved pair lives
        return fail(Exit.NOT_KEPT, str(e))
    except LoginExpired:
        message = ("the saved login in %s expired or was used elsewhere (Netatmo allows "
                   "each refresh token once)" % config.token_file.path)
        if config.no_browser:
            return fail(Exit.LOGIN_FAILED, message + "; run once without --no-browser to "
                        "log in again")
        say("%s; log in again" % message)
        return None
    except NetatmoError as e:
        error = page_error_for(e)
        return fail(error.exit_status, "%s. %s" % (error.title, error.explanation))
    return print_outcome(config, session.tokens, found, session.not_kept)


def print_outcome(config, tokens, found, not_kept=None):
    """Print the access token or the devices; return the exit status.

    What was fetched is printed even when --token-file could not keep the login
    (the run then says so, and exits 6), or when some product lines failed (each
    gets its line on stderr, and the run exits 5).
    """
    if config.print_token:
        print_token(tokens, config.json_output)
    else:
        print_devices(found, config.json_output, table_width(config))
        for failure in found.failed:
            say(failure_line(failure))
        if not config.json_output:
            say(needs_a_person(found.devices))
    if not_kept:
        return fail(Exit.NOT_KEPT, not_kept)
    return Exit.PARTIAL if found is not None and found.failed else Exit.DONE


def fail(status, message):
    """Say on stderr why the run ends; return its exit status."""
    say(message)
    return status


# The --once table's columns, and what a narrow terminal does to them, in this order:
# drop ID, HOME, TYPE and PRODUCT; shorten READINGS to 24 columns; drop LAST SEEN and
# BATTERY; shorten READINGS, then NAME, to 12. STATUS always stays whole.
COLUMNS = ("NAME", "STATUS", "BATTERY", "LAST SEEN", "READINGS", "PRODUCT", "TYPE", "ID",
           "HOME")
NARROWER = (("ID", 0), ("HOME", 0), ("TYPE", 0), ("PRODUCT", 0), ("READINGS", 24),
            ("LAST SEEN", 0), ("BATTERY", 0), ("READINGS", 12), ("NAME", 12))
# A low battery shows in STATUS too, which every width keeps.
BATTERY_IN_STATUS = {"low": ", battery low", "very_low": ", battery very low"}


def print_devices(found, as_json, width=None):
    """Print a DeviceList on stdout: JSON as /devices.json, or a table width columns wide.

    width None keeps every column, whatever their width: for a file, a pipe, a mail.
    """
    if as_json:
        text = json.dumps(device_list_json(found), indent=2)
    else:
        now = time.time()
        labels = told_apart(found.devices)  # no two rows show the same NAME
        rows = [COLUMNS] + [
            tuple(printable(v) for v in (
                labels[id(d)], status_word(d) + BATTERY_IN_STATUS.get(d["battery"], ""),
                battery_text(d), "" if d["last_seen"] is None else ago(d["last_seen"], now),
                readings_text(d["readings"]), d["product"], d["type"], d["id"],
                d["home"] or ""))
            for d in found.devices]
        text = "\n".join(fitted(rows, width))
        text += "".join("\nnot granted: %s" % line for _, line in found.not_granted)
        text += "".join("\n%s" % printable(line)
                        for line in problem_lines(found.status_problems))
    write_out(text)


def needs_a_person(devices):
    """Return the one line that counts what needs a person: offline devices, low
    batteries, status unknown."""
    counts = [(sum(d["reachable"] is False for d in devices), "offline"),
              (sum(d["battery"] in BATTERY_IN_STATUS for d in devices), "battery low or "
               "very low"), (sum(d["reachable"] is None for d in devices), "status unknown")]
    return "%d device%s: %s" % (len(devices), "" if len(devices) == 1 else "s", ", ".join(
        "%d %s" % count for count in counts if count[0]) or "all online, no battery low")


def fitted(rows, width):
    """Return the table's lines, aligned by screen columns, at most width wide (or None).

    Each step of NARROWER that is needed drops a column (0) or shortens it.
    """
    keep = list(range(len(COLUMNS)))
    for name, most in NARROWER:
        sizes = {i: max(columns_of(row[i]) for row in rows) for i in keep}
        excess = sum(sizes.values()) + 2 * (len(keep) - 1) - (width or 0)
        if width is None or excess <= 0:
            break
        column = COLUMNS.index(name)
        if not most:
            keep.remove(column)
        else:
            most = max(most, sizes[column] - excess)
            cut = shortened_names if name == "NAME" else lambda texts, most: [
                shortened(text, most) for text in texts]
            rows = [row[:column] + (text,) + row[column + 1:]
                    for row, text in zip(rows, cut([row[column] for row in rows], most))]
    sizes = {i: max(columns_of(row[i]) for row in rows) for i in keep}
    return ["  ".join(row[i] + " " * (sizes[i] - columns_of(row[i])) for i in keep).rstrip()
            for row in rows]


def shortened_names(labels, most):
    """Return the NAME column cut to about most screen columns, no two cells alike.

    What tells a name from others of that name stays: "(Home Coach)" is kept whole
    where it fits and the name before it cut; labels still alike keep their end (an
    id's end tells it apart); the column widens past most if they are alike even so.
    """
    def cut(label, most):
        name, sep, detail = label.rpartition(" (")
        if sep and label.endswith(")") and columns_of(label) > most >= columns_of(
                sep + detail) + 2:
            return shortened(name, most - columns_of(sep + detail)) + sep + detail
        return shortened(label, most)

    def end_of(label, most):
        while columns_of(label) > most - 1:
            label = label[1:]
        return "~" + label

    while True:
        cells = [cut(label, most) for label in labels]
        alike = Counter(cells)
        cells = [end_of(label, most) if alike[cell] > 1 and columns_of(label) > most else
                 cell for label, cell in zip(labels, cells)]
        if len(set(cells)) == len(set(labels)):
            return cells
        most += 1


def columns_of(text):
    """Return the screen columns text takes: a wide character two, a combining mark none."""
    import unicodedata
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def shortened(text, most):
    """Return text cut to at most `most` screen columns, ending in "~" if it was cut."""
    if columns_of(text) <= most:
        return text
    while columns_of(text) > most - 1:
        text = text[:-1]
    return text + "~"


def table_width(config):
    """Return how wide --once's table may be: COLUMNS, else the terminal's; or None.

    Piped into a file or a mail, with no COLUMNS, the table stays whole, so that
    scripts and cron mail keep every column. --wide keeps it whole everywhere.
    """
    if config.wide:
        return None
    if digits(os.environ.get("COLUMNS", "")):
        return int(os.environ["COLUMNS"])
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() \
            else None
    except (OSError, ValueError):  # no terminal after all, or no file descriptor
        return None


def print_token(tokens, as_json):
    """Print the access token on stdout: alone on its line, or as JSON with its expiry
    and scope. Never the refresh token: a script that needs a token needs only this."""
    if as_json:
        write_out(json.dumps({"access_token": tokens.access_token,
                              "expires_at": None if tokens.expires_at is None
                              else int(tokens.expires_at), "scope": tokens.scope}, indent=2))
    else:
        write_out(tokens.access_token)


def write_out(text):
    """Write text and a newline on stdout, in whatever encoding the terminal has."""
    encoding = sys.stdout.encoding or "ascii"
    sys.stdout.write(text.encode(encoding, "replace").decode(encoding) + "\n")
    sys.stdout.flush()


def printable(value):
    """Return value with "?" for each character of TERMINAL_CONTROLS, so a device name
    cannot drive the terminal, and for any other that is not printable (it has no
    width the table could align)."""
    return "".join(c if c.isprintable() else "?" for c in value)


def open_browser(url, secret=False):
    """Open url in the person's browser; return the private page made for it, or None.

    A url that carries a secret (the owner's key) never goes on the browser's command
    line, which every user of this host can read in ps: the browser is given a private
    page that sends it on (Jupyter's way), which the caller removes when the run ends.
    """
    import webbrowser
    redirect = None
    if secret:
        try:
            redirect = redirect_page(url)
        except OSError as e:
            say("cannot write a private page for the browser in %s (%s); open the address "
                "yourself" % (os.path.expanduser("~"), e.strerror or e))
            return None
        import pathlib
        url = pathlib.Path(redirect).as_uri()
    try:
        opened = webbrowser.open(url)
    except Exception:  # webbrowser can fail in many ways on a headless host
        opened = False
    if not opened:
        say("no browser to open here; open the address yourself")
    return redirect


def redirect_page(url):
    """Write a page that sends the browser on to url; return its path, readable by us only.

    Its folder is new, 0700, in the home folder: not in /tmp, and not hidden, for a snap
    browser (Ubuntu's default) can read neither. The page is 0600 and written through
    no symlink: other users of this host cannot read the key in it.
    """
    import tempfile
    folder = tempfile.mkdtemp(prefix="netatmo-login-", dir=os.path.expanduser("~"))
    path = os.path.join(folder, "login.html")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page("Netatmo login", '<p><a href="%s">Continue to the login</a></p>'
                     % escape(url)).replace("<head>", '<head><meta http-equiv="refresh" '
                                            'content="0;url=%s">' % escape(url), 1))
    return path


# ---- The command line -------------------------------------------------------------
# main(): the settings, the server, then the web app or a terminal mode.

def listen(config):
    """Return a Server listening where config says, or raise ConfigError in one line."""
    try:
        return Server(config)
    except (OSError, OverflowError) as e:
        raise ConfigError("cannot listen on %s port %d: %s; pass another --port or --host"
                          % (config.host, config.port, getattr(e, "strerror", None) or e))


def main(argv=None, environ=None):
    """Serve until Ctrl-C, or run --once; return the exit status (2: a bad setting)."""
    argv = sys.argv[1:] if argv is None else argv
    terminal = "--once" in argv or "--print-token" in argv
    handler = logging.StreamHandler(sys.stderr)
    # A terminal run speaks in one voice on stderr, as say() does; the web app's log
    # lines are dated.
    handler.setFormatter(LogFormatter("netatmo_stdlib: %(message)s" if terminal
                                      else "%(asctime)s %(message)s"))
    logging.basicConfig(level=logging.WARNING if terminal else logging.INFO,
                        handlers=[handler])
    try:
        config = read_config(argv, os.environ if environ is None else environ)
        saved = config.token_file.load() if config.token_file else None
        server = None if config.terminal else listen(config)
    except ConfigError as e:
        say("error: %s" % e)
        return Exit.BAD_SETTING
    if config.terminal:
        return run_terminal(config, saved)
    url = config.local_url("/")
    print("netatmo_stdlib: open %s in a browser" % url)
    print("netatmo_stdlib: " + config.redirect_uri_line(), flush=True)
    if config.token_file:
        print("netatmo_stdlib: to save your login in %s for scripts, log in from %s"
              % (config.token_file.path, config.origin + server.login_path()), flush=True)
    if config.in_clear_line():
        print("netatmo_stdlib: " + config.in_clear_line(), flush=True)
    if config.open_browser:
        open_browser(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("netatmo_stdlib: stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the server started
        sys.exit(130 if "--once" in sys.argv or "--print-token" in sys.argv else 0)
