"""A fake Netatmo cloud on 127.0.0.1, for the tests and for `make demo`.

It speaks the protocol netatmo_stdlib talks to, as strictly as the real cloud does
(see tests/fixtures/README.md for where its answers come from):

- GET /oauth2/authorize shows a plain consent page; POST /oauth2/authorize is that
  page's form. A test approves or denies without the page by sending the header
  `X-Fake-Approve: <user>` or `X-Fake-Approve: deny`, or by setting `auto_approve`.
  An unregistered redirect_uri comes back as ?error=redirect_uri_mismatch.
- POST /oauth2/token: codes are single use, expire, and are bound to the
  redirect_uri and the PKCE challenge of their authorize request; refresh tokens
  rotate, and a used one answers invalid_grant (and is counted in `refresh_reuse`).
- GET or POST /api/homesdata, /api/getstationsdata, /api/gethomecoachsdata and
  /api/homestatus?home_id=... answer in Netatmo's envelopes, with 403 code 2 (unknown
  token), 3 (expired), 13 (scope not granted) and 429 code 26 (rate limit: 50 calls
  per 10 s and 500 per hour per user). homestatus serves the recorded status of
  alice's first home (homestatus.json), a gateway that does not answer for bob
  (code 6, as homestatus_disconnected.json), and generated statuses elsewhere.
- Faults on demand: latency, 500 with HTML, non-JSON, connection reset, no answer.
- Connections are kept alive, as a web server's are, within limits a client must
  cope with: one left idle for `idle_timeout` seconds is closed, and the
  `requests_per_connection`-th answer on one says `Connection: close`.
- It serves HTTPS with the test certificate (tests/tls) on demand, and CONNECT makes it
  an https_proxy that tunnels to another fake.
- Everything it receives is recorded in `requests`.

Run it alone for the demo: python3 tests/fake_netatmo.py --port 8001 ...
"""

import argparse
import base64
import hashlib
import html
import json
import os
import secrets
import select
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
# A throwaway self-signed certificate for 127.0.0.1 and localhost, valid until 2126.
TLS_CERT = os.path.join(HERE, "tls", "cert.pem")
TLS_KEY = os.path.join(HERE, "tls", "key.pem")

KNOWN_SCOPES = set("""read_station read_thermostat write_thermostat read_camera write_camera
access_camera read_presence write_presence access_presence read_doorbell access_doorbell
read_homecoach read_smokedetector read_carbonmonoxidedetector read_magellan write_magellan
read_bubendorff write_bubendorff read_smarther write_smarther read_mx write_mx read_bfi
write_bfi read_mhs1 write_mhs1""".split())

ENDPOINT_SCOPES = {
    "/api/homesdata": "read_thermostat",
    "/api/getstationsdata": "read_station",
    "/api/gethomecoachsdata": "read_homecoach",
    "/api/homestatus": "read_thermostat",
}


def fixture(name):
    """Return the `body` of a recorded real response in tests/fixtures."""
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)["body"]


def hostile_account():
    """Return bob's account: hostile and odd names, in each endpoint's real shape.

    His home's gateway does not answer: homestatus names it in `errors` (code 6),
    as homestatus_disconnected.json does, and lists no module.
    """
    return {
        "/api/homesdata": {"homes": [{
            "id": "bbbbbbbbbbbbbbbbbbbbbbbb", "name": "<b>Bob's \"home\"</b> & co",
            "rooms": [{"id": "1", "name": "<i>Living</i> & \"dining\"", "type": "livingroom"},
                      {"id": "2", "name": "<script>alert('room')</script>", "type": "kitchen"}],
            "modules": [
                {"id": "70:ee:50:00:00:01", "type": "NAPlug",
                 "name": "<script>alert('pwned')</script>",
                 "modules_bridged": ["04:00:00:00:00:02", "04:00:00:00:00:03"]},
                {"id": "04:00:00:00:00:02", "type": "NATherm1", "name": "Küche ☃ 温度",
                 "room_id": "2", "bridge": "70:ee:50:00:00:01"},
                {"id": "04:00:00:00:00:03", "type": "NRV", "room_id": "1",
                 "bridge": "70:ee:50:00:00:01"},
                {"id": " 70:ee:50:00:00:04 ", "type": "XYZ9", "name": "Mystery\r\nbox"},
                {"id": "70:ee:50:00:00:05", "type": "NAMain", "name": "Bob's station",
                 "room_id": "1"},
            ]}], "user": {"email": "bob@example.com"}},
        "/api/getstationsdata": {"devices": [{
            "_id": "70 :ee: 50:00:00:05", "type": "NAMain", "module_name": "Indoor",
            "home_id": "bbbbbbbbbbbbbbbbbbbbbbbb", "reachable": True,
            "modules": [{"_id": "02:00:00:00:00:06", "type": "NAModule1",
                         "module_name": "<img src=x onerror=alert(1)>", "reachable": False}]}],
            "user": {"mail": "bob@example.com"}},
        "/api/gethomecoachsdata": {"devices": [], "user": {"mail": "bob@example.com"}},
        "/api/homestatus": {"bbbbbbbbbbbbbbbbbbbbbbbb": {
            "errors": [{"code": 6, "id": "70:ee:50:00:00:01"}],
            "home": {"id": "bbbbbbbbbbbbbbbbbbbbbbbb"}}},
    }


# What a hostile account puts into its strings to drive a terminal: ESC sequences that
# retitle the window (OSC 0), fill the clipboard (OSC 52) and clear the screen, a BEL,
# a carriage return that rewrites the line, and a C1 control (CSI, 0x9B).
TERMINAL_ATTACK = "\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07\r\x9b31m\x1b[2J"


def with_terminal_attack(value):
    """Return value with TERMINAL_ATTACK added to every string in it (keys aside)."""
    if isinstance(value, str):
        return value + TERMINAL_ATTACK
    if isinstance(value, list):
        return [with_terminal_attack(v) for v in value]
    if isinstance(value, dict):
        return {k: with_terminal_attack(v) for k, v in value.items()}
    return value


def terminal_attack_account():
    """Return mallory's account: alice's, with TERMINAL_ATTACK in every string.

    Ids too: homestatus is keyed by the home ids as they are served, and names a
    gateway (code 6) by an id that carries the attack.
    """
    alice = default_users()["alice"]
    account = {path: with_terminal_attack(body) for path, body in alice.items()
               if path != "/api/homestatus"}
    account["/api/homestatus"] = {with_terminal_attack(home_id): dict(
        with_terminal_attack(body), errors=[{"code": 6, "id": "gateway" + TERMINAL_ATTACK}])
        for home_id, body in alice["/api/homestatus"].items()}
    return account


def generated_account(count):
    """Return an account of `count` devices in homes of 1,000, with their status."""
    types = ["NAPlug", "NATherm1", "NRV", "NLP", "NLF", "NLV", "NACamera", "NSD"]
    homes = []
    for h in range(0, count, 1000):
        homes.append({"id": "%024x" % h, "name": "Home %d" % (h // 1000), "modules": [
            {"id": "70:ee:50:%02x:%02x:%02x" % (i >> 16, (i >> 8) & 255, i & 255),
             "type": types[i % len(types)], "name": "Device %d" % i, "setup_date": 1494963356,
             "room_id": "%d" % (i // 5)}
            for i in range(h, min(h + 1000, count))]})
    body = {"homes": homes, "user": {"email": "big@example.com"}}
    return {"/api/homesdata": body, "/api/getstationsdata": {"devices": []},
            "/api/gethomecoachsdata": {"devices": []},
            "/api/homestatus": generated_statuses(body)}


def generated_statuses(homes_body):
    """Return {home id: homestatus body} for homes that have no recorded status.

    Each module gets fields in the shapes homestatus.json shows: a radio or Wi-Fi
    strength, a battery where the type has one, a firmware revision, and some
    readings; every seventh module does not answer.
    """
    statuses = {}
    for home in homes_body["homes"]:
        modules, rooms = [], {}
        for i, module in enumerate(home.get("modules", [])):
            live = {"id": module["id"], "type": module.get("type"), "reachable": i % 7 != 0,
                    "firmware_revision": 50 + i % 150, "last_seen": 1700000000 + i}
            if module.get("type") in ("NAPlug", "NACamera", "NLG", "NBG", "OTH"):
                live["wifi_strength"] = 40 + i % 50
            else:
                live["rf_strength"] = 55 + i % 40
            if module.get("type") in ("NATherm1", "NRV", "NACamDoorTag", "NIS", "NSD"):
                live["battery_state"] = ("full", "high", "medium", "low", "very_low")[i % 5]
            if module.get("type") in ("NLP", "NLPC"):
                live["power"] = i % 500
            modules.append(live)
            if module.get("room_id"):
                rooms[module["room_id"]] = {"id": module["room_id"], "reachable": True,
                                            "therm_measured_temperature": 18 + i % 50 / 10.0,
                                            "therm_setpoint_temperature": 19}
        statuses[home["id"]] = {"home": {"id": home["id"], "modules": modules,
                                         "rooms": list(rooms.values())}}
    return statuses


# The keys whose values are unix times in Netatmo's answers; the first ones say when
# Netatmo last heard from a device: its readings.
READING_TIMES = ("last_seen", "last_message", "last_status_store", "time_utc", "ts")
TIMES = READING_TIMES + (
    "setup_date", "last_setup", "date_setup", "last_upgrade", "date_max_temp",
    "date_min_temp", "date_max_wind_str", "date_max_gust", "therm_setpoint_start_time",
    "therm_setpoint_end_time", "last_therm_seen", "last_plug_seen", "last_activity", "time")


def times_of(value, keys):
    """Return every unix time (a number above 10^9) under keys, anywhere in value."""
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            if key in keys and isinstance(child, (int, float)) and child > 1e9:
                found.append(child)
            found += times_of(child, keys)
    elif isinstance(value, list):
        for child in value:
            found += times_of(child, keys)
    return found


def shifted(value, offset):
    """Return value with every unix time in it moved by offset seconds (0 stays never)."""
    if isinstance(value, dict):
        return {key: child + offset if key in TIMES and isinstance(child, int)
                and not isinstance(child, bool) and child > 1e9 else shifted(child, offset)
                for key, child in value.items()}
    if isinstance(value, list):
        return [shifted(child, offset) for child in value]
    return value


def as_of_now(account, now, age=180):
    """Return an account whose newest reading was taken `age` seconds before now.

    One offset for the whole account: the gaps between devices, and between
    answers, are kept, so the merge still picks the answer that heard from a
    device last. The recorded answers are years old; a demo should not look dead.
    """
    newest = max(times_of(account, READING_TIMES) or [now - age])
    return shifted(account, int(now - age - newest))


def default_users():
    """Return the accounts the fake knows, by user name."""
    multi = fixture("homesdata_multi.json")
    return {
        # alice: a real account with 51 home modules, 7 stations and 5 home coaches,
        # and the recorded status of her first home (her second has no modules).
        "alice": {"/api/homesdata": fixture("homesdata.json"),
                  "/api/getstationsdata": fixture("getstationsdata.json"),
                  "/api/gethomecoachsdata": fixture("gethomecoachsdata.json"),
                  "/api/homestatus": {"91763b24c43d3e344f424e8b":
                                      fixture("homestatus.json")}},
        "bob": hostile_account(),
        # carol: no homes, unreachable stations without dashboard_data, no coaches.
        "carol": {"/api/homesdata": fixture("homesdata_empty.json"),
                  "/api/getstationsdata": fixture("weatherstation_data_unreachable_station.json"),
                  "/api/gethomecoachsdata": {"devices": []}},
        # dave: a large account, 2 homes and 139 modules, their status generated.
        "dave": {"/api/homesdata": multi,
                 "/api/getstationsdata": {"devices": []},
                 "/api/gethomecoachsdata": {"devices": []},
                 "/api/homestatus": generated_statuses(multi)},
        # big500, big5000: generated accounts for the benchmark.
        "big500": generated_account(500),
        "big5000": generated_account(5000),
    }


Recorded = namedtuple("Recorded", "method path query form headers via_proxy connection")
Grant = namedtuple("Grant", "user client_id scope expires_at")
CodeGrant = namedtuple("CodeGrant", "user client_id scope redirect_uri challenge "
                                    "challenge_method expires_at")


def hexes(n):
    """Return n random hex digits."""
    return secrets.token_hex(n // 2)


class FakeNetatmo(object):
    """The state of the fake cloud, and the knobs tests turn."""

    def __init__(self, client_id="test-client", client_secret="test-secret", users=None,
                 recorded_times=False):
        self.clients = {client_id: client_secret}
        self.redirect_uris = set()
        self.users = users or default_users()
        if not recorded_times:  # the tests that check readings ask for the recorded times
            now = time.time()
            self.users = {name: as_of_now(account, now) for name, account in self.users.items()}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        # knobs
        self.auto_approve = None       # a user name, or "deny": approve without a person
        self.approve_from_page = False  # send the browser back from a page of ours, as
        # Netatmo's consent page does (a cross-site navigation), not with a bare 302
        self.expires_in = 10800        # lifetime of access tokens, seconds
        self.code_ttl = 60             # lifetime of authorization codes, seconds
        self.latency = 0.0             # seconds added to every /api call
        self.token_latency = 0.0       # seconds added to every call to /oauth2/token
        self.slow_seconds = 2.0        # how long a "slow" fault delays its answer
        self.drip_seconds = 0.2        # between two bytes of a "drip" fault's answer
        self.rate_limits = ((50, 10), (500, 3600))  # (calls, seconds) per user
        self.withheld_scopes = set()   # scopes the person unticks at the consent page
        self.refuse_pkce = False       # answer invalid_request to a code_challenge
        self.refuse_without_state = False  # a refusal leaves the state out (undocumented)
        self.refusal_description = None    # the error_description of refusals, if any
        self.refresh_gate = None       # an Event: refreshes wait for it (refresh_waiting)
        self.refresh_waiting = threading.Event()
        self.odd_scopes = []           # names added to the scope of token answers
        self.scope_format = "list"     # how /oauth2/token writes scope: list, string, none
        self.lifetime_fields = ("expires_in", "expire_in")  # Netatmo sends both
        self.faults = []               # [path, kind, remaining count]
        # Netatmo does not document its keep-alive limits; these are common web servers'.
        self.idle_timeout = 60.0       # seconds a kept-alive connection may sit idle
        self.requests_per_connection = 100  # answers on one connection, then it closes
        # state
        self.codes = {}
        self.access_tokens = {}
        self.refresh_tokens = {}
        self.access_of_refresh = {}    # refresh token -> the access token issued with it
        self.issued = []               # every (access token, refresh token) it issued
        self.state_path = None         # where the tokens are kept between runs (the demo)
        self.retired_refresh_tokens = set()
        self.api_calls = {}            # user -> [times], for the rate limits
        self.api_call_count = 0
        self.encoded = {}              # (user, path) -> the body as JSON, made once
        # records
        self.requests = []
        self.refresh_reuse = 0
        self.connections_opened = 0    # also numbers them: Recorded.connection
        self.connections_closed = 0
        self.connection_closed = threading.Condition(self.lock)
        self.server = None
        self.scheme = "http"

    # -- life --

    def start(self, tls=False, host="127.0.0.1"):
        """Serve on a free port of host (a loopback address) in a thread; return the URL."""
        self.server = FakeServer((host, 0), FakeHandler)
        self.server.fake = self
        self.scheme = "https" if tls else "http"
        if tls:
            self.server.tls = tls_context()
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        return self.url

    @property
    def url(self):
        """Return the base URL, as netatmo_stdlib's --api-url."""
        return "%s://%s:%d" % (self.scheme, self.server.server_address[0],
                               self.server.server_address[1])

    def stop(self):
        """Release hanging requests, stop serving and close the socket (once)."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # -- knobs for tests --

    def register_redirect_uri(self, uri):
        """Register a redirect URI for the client, as at dev.netatmo.com."""
        self.redirect_uris.add(uri)

    def fail(self, path, kind, times=1):
        """Make the next `times` requests to path fail with this kind of fault.

        Kinds: "500_html", "non_json", "reset", "hang", "slow", "drip" (the whole answer,
        status line first, a byte every drip_seconds), "no_body", "no_token",
        "bad_status_line" (no HTTP status line, terminal escapes instead),
        "rate_limit" (429 code 26), "rate_limit_403" (the older 403 code 26),
        "too_many_connections", "invalid_grant", "invalid_client", "scope" (403 code 13),
        "redirect" (302 to /elsewhere), "huge" (9 MB, with its length), "endless" (9 MB
        without a length, until the connection closes), "deep" (JSON nested 100,000
        deep), ("body", value): a 200 envelope holding value, ("json", value): a 200
        whose whole answer is value, or ("status", status, value): that status with
        value as JSON.
        """
        with self.lock:
            self.faults.append([path, kind, times])

    def serve_fixture(self, path, name, status=200, times=1):
        """Answer the next `times` requests to path with a real answer, whole, as it is.

        name is a file of tests/fixtures (its envelope too: an error, or no body).
        """
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
            self.fail(path, ("status", status, json.load(f)), times)

    def keep_tokens_in(self, path):
        """Keep the tokens issued in a file, from one run of the fake to the next.

        The demo starts a new fake at each command; a login saved by one command
        (--token-file) must still be known to the fake of the next one.
        """
        self.state_path = path
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return
        with self.lock:
            self.access_tokens = {t: Grant(*g) for t, g in state["access_tokens"].items()}
            self.refresh_tokens = {t: Grant(*g) for t, g in state["refresh_tokens"].items()}
            self.access_of_refresh = dict(state["access_of_refresh"])
            self.retired_refresh_tokens = set(state["retired_refresh_tokens"])

    def save_tokens(self):
        """Write the tokens to the file of keep_tokens_in, if any (the caller holds the lock)."""
        if self.state_path is None:
            return
        temporary = self.state_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"access_tokens": self.access_tokens, "refresh_tokens": self.refresh_tokens,
                       "access_of_refresh": self.access_of_refresh,
                       "retired_refresh_tokens": sorted(self.retired_refresh_tokens)}, f)
        os.replace(temporary, self.state_path)

    def clear_faults(self):
        """Forget the faults not injected yet."""
        with self.lock:
            self.faults = []

    def expire_access_tokens(self):
        """Make every access token expired, as after three hours."""
        with self.lock:
            for token, grant in self.access_tokens.items():
                self.access_tokens[token] = grant._replace(expires_at=0)

    def revoke_scope(self, scope):
        """Take a scope away from every token, as a person can in Netatmo's settings."""
        with self.lock:
            for table in (self.access_tokens, self.refresh_tokens):
                for token, grant in table.items():
                    table[token] = grant._replace(
                        scope=[s for s in grant.scope if s != scope])

    # -- what tests read --

    def requests_to(self, path):
        """Return the recorded requests to one path."""
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for_closed_connections(self, count, timeout=10):
        """Wait until `count` connections have ended; return True if they have."""
        with self.lock:
            return self.connection_closed.wait_for(
                lambda: self.connections_closed >= count, timeout)

    def token_requests(self, grant_type=None):
        """Return the recorded requests to the token endpoint, of one grant type."""
        return [r for r in self.requests_to("/oauth2/token")
                if grant_type is None or r.form.get("grant_type") == grant_type]

    def every_secret(self):
        """Return every code, state and token the fake handed out or received."""
        with self.lock:
            found = set(self.codes) | set(self.access_tokens) | set(self.refresh_tokens)
            found |= self.retired_refresh_tokens
            for r in self.requests:
                for key in ("state", "code", "code_verifier", "client_secret",
                            "refresh_token"):
                    found.update(v for v in (r.query.get(key), r.form.get(key)) if v)
            found.update(self.clients.values())
        return found

    def take_fault(self, path, home_id=None):
        """Return the kind of fault to inject on this request to path, or None.

        A fault set on "/api/homestatus?home_id=X" hits that home only.
        """
        targets = (path, "%s?home_id=%s" % (path, home_id)) if home_id else (path,)
        with self.lock:
            for fault in self.faults:
                if fault[0] in targets and fault[2] > 0:
                    fault[2] -= 1
                    return fault[1]
        return None

    # -- the protocol --

    def authorize(self, params, decision):
        """Return (status, headers, body) for an authorize request and a decision."""
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        state = params.get("state")
        if client_id not in self.clients:
            return 400, {}, page("Unknown application", "No app has this client_id.")
        if redirect_uri not in self.redirect_uris:
            return self.back(redirect_uri, error="redirect_uri_mismatch", state=state)
        if self.refuse_pkce and "code_challenge" in params:
            return self.back(redirect_uri, error="invalid_request", state=state,
                             error_description="code_challenge is not supported")
        if decision is None:
            return 200, {}, consent_page(params, sorted(self.users))
        if decision == "deny":  # RFC 6749 sends the state back; Netatmo may not
            return self.back(redirect_uri, error="access_denied",
                             state=None if self.refuse_without_state else state)
        if decision not in self.users:
            return 400, {}, page("Unknown user", "No such user at the fake Netatmo.")
        requested = params.get("scope", "read_station").split(" ")
        scope = [s for s in requested if s in KNOWN_SCOPES and s not in self.withheld_scopes]
        code = hexes(32)
        with self.lock:
            self.codes[code] = CodeGrant(decision, client_id, scope, redirect_uri,
                                         params.get("code_challenge"),
                                         params.get("code_challenge_method", "plain"),
                                         time.time() + self.code_ttl)
        return self.back(redirect_uri, state=state, code=code)

    def back(self, redirect_uri, **params):
        """Return the way back to the redirect URI with these parameters."""
        if "error" in params and self.refusal_description is not None:
            params["error_description"] = self.refusal_description
        query = urllib.parse.urlencode([(k, v) for k, v in params.items() if v is not None])
        sep = "&" if "?" in redirect_uri else "?"
        if self.approve_from_page:  # navigates while it is parsed, before it has loaded
            return 200, {}, ('<!DOCTYPE html><html><head><script>location.replace(%s)'
                             '</script></head><body>Back to the app...</body></html>'
                             % json.dumps(redirect_uri + sep + query).replace("<", "\\u003c")
                             ).encode()
        return 302, {"Location": redirect_uri + sep + query}, b""

    def token(self, form):
        """Return (status, JSON answer) of the token endpoint."""
        if self.clients.get(form.get("client_id")) != form.get("client_secret") \
                or not form.get("client_secret"):
            return 400, {"error": "invalid_client"}
        grant_type = form.get("grant_type")
        with self.lock:
            if grant_type == "authorization_code":
                grant = self.codes.pop(form.get("code", ""), None)
                if (grant is None or grant.expires_at < time.time()
                        or grant.client_id != form["client_id"]
                        or grant.redirect_uri != form.get("redirect_uri")
                        or not pkce_ok(grant, form.get("code_verifier"))):
                    return 400, {"error": "invalid_grant"}
                return 200, self.issue(grant.user, grant.client_id, grant.scope)
            if grant_type == "refresh_token":
                if self.refresh_gate is not None:  # a test acts while the refresh waits
                    self.refresh_waiting.set()
                    self.lock.release()
                    try:
                        self.refresh_gate.wait(30)
                    finally:
                        self.lock.acquire()
                refresh_token = form.get("refresh_token", "")
                grant = self.refresh_tokens.pop(refresh_token, None)
                if grant is None:
                    if refresh_token in self.retired_refresh_tokens:
                        self.refresh_reuse += 1
                    return 400, {"error": "invalid_grant"}
                # Rotation: the old pair dies, a new pair is born.
                self.retired_refresh_tokens.add(refresh_token)
                self.access_tokens.pop(self.access_of_refresh.pop(refresh_token), None)
                return 200, self.issue(grant.user, grant.client_id, grant.scope)
        return 400, {"error": "invalid_request"}

    def issue(self, user, client_id, scope):
        """Create a token pair (the caller holds the lock) and return the answer."""
        access_token = "%s|%s" % (hexes(24), hexes(32))
        refresh_token = "%s|%s" % (hexes(24), hexes(32))
        try:
            expires_at = time.time() + self.expires_in
        except OverflowError:  # a lifetime of 400 digits, for the client's sake
            expires_at = float("inf")
        self.access_tokens[access_token] = Grant(user, client_id, list(scope), expires_at)
        self.refresh_tokens[refresh_token] = Grant(user, client_id, list(scope), None)
        self.access_of_refresh[refresh_token] = access_token
        self.issued.append((access_token, refresh_token))
        self.save_tokens()
        answer = {"access_token": access_token, "refresh_token": refresh_token}
        answer.update((field, self.expires_in) for field in self.lifetime_fields)
        if self.scope_format == "list":
            answer["scope"] = list(scope) + self.odd_scopes
        elif self.scope_format == "string":
            answer["scope"] = " ".join(list(scope) + self.odd_scopes)
        return answer

    def api(self, path, authorization, home_id=None):
        """Return (status, JSON answer) of a device endpoint (homestatus: of home_id)."""
        token = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""
        if not token:
            return 401, api_error(1, "Access token is missing")
        with self.lock:
            grant = self.access_tokens.get(token)
            if grant is None:
                return 403, api_error(2, "Invalid access_token")
            if grant.expires_at < time.time():
                return 403, api_error(3, "Access token expired")
            if ENDPOINT_SCOPES[path] not in grant.scope:
                return 403, api_error(13, "Application does not have the good scope rights")
            if not self.within_rate_limits(grant.user):
                return 429, api_error(26, "User usage reached")
            if path == "/api/homestatus":
                statuses = self.users[grant.user].get(path, {})
                if home_id not in statuses:  # Netatmo documents no answer for this
                    return 400, api_error(21, "Invalid home_id")
            body = self.encoded.get((grant.user, path, home_id))
            if body is None:
                value = self.users[grant.user][path]
                body = self.encoded[grant.user, path, home_id] = json.dumps(
                    value[home_id] if path == "/api/homestatus" else value)
        return 200, ('{"body": %s, "status": "ok", "time_exec": 0.012, "time_server": %d}'
                     % (body, time.time()))

    def within_rate_limits(self, user):
        """Count one call of user; return False if it is over a limit (lock held)."""
        now = time.time()
        self.api_call_count += 1
        if not self.rate_limits:
            return True
        calls = self.api_calls.setdefault(user, [])
        calls.append(now)
        longest = max(seconds for _, seconds in self.rate_limits)
        calls[:] = [t for t in calls if now - t < longest]
        return all(sum(1 for t in calls if now - t < seconds) <= limit
                   for limit, seconds in self.rate_limits)


def tls_context():
    """Return the fake's TLS context, with the test certificate (127.0.0.1, localhost)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS_CERT, TLS_KEY)
    return context


def pkce_ok(grant, verifier):
    """Return True if the verifier matches the challenge of the authorize request."""
    if grant.challenge is None:
        return True  # no challenge was sent: nothing to check
    if not verifier:
        return False
    if grant.challenge_method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        verifier = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return secrets.compare_digest(verifier, grant.challenge)


def api_error(code, message):
    """Return Netatmo's /api error envelope."""
    return {"error": {"code": code, "message": message}}


def page(title, text):
    """Return a tiny HTML page."""
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>%s</title></head>"
            "<body><h1>%s</h1><p>%s</p></body></html>" % (
                html.escape(title), html.escape(title), html.escape(text))).encode("utf-8")


def consent_page(params, users):
    """Return the fake's consent page: pick a user, then approve or deny."""
    hidden = "".join('<input type="hidden" name="%s" value="%s">'
                     % (html.escape(k), html.escape(v)) for k, v in sorted(params.items()))
    options = "".join('<option>%s</option>' % html.escape(u) for u in users)
    scopes = html.escape(params.get("scope", "read_station"))
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>Fake Netatmo: authorize</title></head><body style=\"font-family:sans-serif;"
            "max-width:40rem;margin:2rem auto\"><h1>Fake Netatmo</h1>"
            "<p>This is the demo's stand-in for Netatmo's login page. An app asks to read "
            "your devices (scopes: <code>%s</code>).</p>"
            "<form method=\"post\" action=\"/oauth2/authorize\">%s"
            "<p><label>Log in as <select name=\"user\">%s</select></label></p>"
            "<p><button name=\"decision\" value=\"approve\">Yes, I accept</button> "
            "<button name=\"decision\" value=\"deny\">No, I refuse</button></p>"
            "</form></body></html>" % (scopes, hidden, options)).encode("utf-8")


def foreign_form(action, label):
    """Return a page of another site whose one button POSTs a form to action."""
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Another site</title>"
            "</head><body><form method=\"post\" action=\"%s\"><button>%s</button></form>"
            "</body></html>" % (html.escape(action), html.escape(label))).encode("utf-8")


class FakeHandler(BaseHTTPRequestHandler):
    """Routes the fake's requests, records them, and injects faults."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every answer waits 40 ms for a delayed ACK

    def setup(self):
        """Number the connection, and give it the idle timeout of the moment."""
        fake = self.server.fake
        with fake.lock:
            fake.connections_opened += 1
            self.number = fake.connections_opened
        self.answers = 0
        self.timeout = fake.idle_timeout  # a read that waits longer ends the connection
        BaseHTTPRequestHandler.setup(self)

    def do_GET(self):
        """Answer GET and POST alike."""
        fake = self.server.fake
        target = self.path
        via_proxy = target.startswith("http://")  # absolute form: sent through a proxy
        if via_proxy:
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        path, _, query = target.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        form = dict(urllib.parse.parse_qsl(raw.decode("utf-8", "replace")))
        query = dict(urllib.parse.parse_qsl(query))
        with fake.lock:
            fake.requests.append(Recorded(self.command, path, query, form,
                                          dict(self.headers.items()), via_proxy, self.number))
        fault = fake.take_fault(path, query.get("home_id"))
        if fault and self.inject(fault):
            return
        if path == "/oauth2/authorize":
            params = dict(query, **form)
            decision = self.headers.get("X-Fake-Approve") or fake.auto_approve
            if self.command == "POST":
                decision = params.pop("user", None) if params.pop("decision", None) == \
                    "approve" else "deny"
            status, headers, body = fake.authorize(params, decision)
            self.answer(status, body, "text/html; charset=utf-8", headers)
        elif path == "/oauth2/token" and self.command == "POST":
            if fake.token_latency:
                fake.stopping.wait(fake.token_latency)
            status, answer = fake.token(form)
            self.answer_json(status, answer)
        elif path == "/_fake/stats":  # for the benchmark, which runs the fake apart
            with fake.lock:
                self.answer_json(200, {
                    "api_calls": fake.api_call_count, "refresh_reuse": fake.refresh_reuse,
                    "refreshes": len(fake.retired_refresh_tokens),
                    "connections": fake.connections_opened})
        elif path == "/_fake/register" and self.command == "POST":
            fake.register_redirect_uri(form["redirect_uri"])
            self.answer_json(200, {"registered": form["redirect_uri"]})
        elif path == "/_fake/latency" and self.command == "POST":
            fake.latency = float(form.get("seconds", 0))
            self.answer_json(200, {"latency": fake.latency})
        elif path == "/_fake/form":  # a page of another site with a form aimed at us
            self.answer(200, foreign_form(query.get("action", "/"), query.get("label", "Go")),
                        "text/html; charset=utf-8")
        elif path in ENDPOINT_SCOPES:
            if fake.latency:
                fake.stopping.wait(fake.latency)
            status, answer = fake.api(path, self.headers.get("Authorization", ""),
                                      query.get("home_id"))
            self.answer_json(status, answer)
        else:
            self.answer_json(404, api_error(404, "Not found"))

    do_POST = do_GET

    def do_CONNECT(self):
        """Be an HTTPS proxy (https_proxy): open a tunnel to host:port, pass bytes both ways."""
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(Recorded("CONNECT", self.path, {}, {},
                                          dict(self.headers.items()), True, self.number))
        self.close_connection = True
        host, _, port = self.path.rpartition(":")
        try:
            if host not in ("127.0.0.1", "localhost"):  # a proxy for the tests' servers only
                raise OSError("not a test server")
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except (OSError, ValueError):
            self.answer(502, b"", "text/plain")
            return
        with upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            ends = [self.connection, upstream]
            while not fake.stopping.is_set():
                readable = select.select(ends, [], [], 0.5)[0]
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)

    def inject(self, kind):
        """Misbehave as told; return True if the request is answered (or dropped)."""
        fake = self.server.fake
        if kind == "hang":
            fake.stopping.wait(60)
            self.close_connection = True
            return True
        if kind == "slow":
            fake.stopping.wait(fake.slow_seconds)
            return False
        if kind == "drip":  # the whole answer a byte at a time, each within a read's timeout
            self.close_connection = True
            answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 29\r\n\r\n" + b'{"body": {}, "status": "ok"} ')
            for byte in answer:
                if fake.stopping.wait(fake.drip_seconds):
                    return True
                try:
                    self.wfile.write(bytes([byte]))
                except OSError:  # the client gave up
                    return True
            return True
        if kind == "reset":
            # SO_LINGER with a zero timeout turns close() into a TCP reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            return True
        if isinstance(kind, tuple) and kind[0] == "body":
            self.answer_json(200, {"body": kind[1], "status": "ok", "time_server": 1559171003})
            return True
        if isinstance(kind, tuple) and kind[0] == "json":
            self.answer_json(200, json.dumps(kind[1]))  # a str too is a JSON value here
            return True
        if isinstance(kind, tuple) and kind[0] == "status":
            self.answer_json(kind[1], kind[2])
            return True
        if kind == "bad_status_line":  # not HTTP at all, with terminal escapes in it
            self.close_connection = True
            self.wfile.write(TERMINAL_ATTACK.encode("latin-1") + b" garbage\r\n\r\n")
            return True
        if kind == "redirect":
            self.answer(302, b"", "text/plain", {"Location": fake.url + "/elsewhere"})
            return True
        if kind == "huge":
            self.answer(200, b'{"body": {}, "status": "ok", "padding": "' + b"x" * (9 << 20)
                        + b'"}', "application/json")
            return True
        if kind == "endless":  # no Content-Length: the answer ends when the connection does
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(9 * 16):
                self.wfile.write(b" " * 65536)
            return True
        if kind == "deep":
            self.answer(200, b"[" * 100000 + b"]" * 100000, "application/json")
            return True
        answers = {
            "500_html": (500, b"<html><body><h1>500 Internal Server Error</h1></body></html>",
                         "text/html"),
            "non_json": (200, b"<html>Maintenance</html>", "text/html"),
            "no_body": (200, b'{"status": "ok", "time_server": 1559171003}',
                        "application/json"),
            "no_token": (200, b'{"scope": ["read_station"], "expires_in": 10800}',
                         "application/json"),
            "rate_limit": (429, json.dumps(api_error(26, "User usage reached")).encode(),
                           "application/json"),
            "rate_limit_403": (403, json.dumps(api_error(26, "User usage reached")).encode(),
                               "application/json"),
            "too_many_connections": (400, b'{"error": "too_many_connections"}',
                                     "application/json"),
            "invalid_grant": (400, b'{"error": "invalid_grant"}', "application/json"),
            "invalid_client": (400, b'{"error": "invalid_client"}', "application/json"),
            "scope": (403, json.dumps(api_error(13, "Application does not have the good "
                                                    "scope rights")).encode(),
                      "application/json"),
        }
        status, body, content_type = answers[kind]
        self.answer(status, body, content_type)
        return True

    def answer(self, status, body, content_type, headers=None):
        """Send an answer with its length."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.answers += 1
        if self.answers >= self.server.fake.requests_per_connection:
            self.send_header("Connection", "close")  # and http.server closes it
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, status, answer):
        """Send a JSON answer (a value, or JSON text already), as Netatmo does."""
        text = answer if isinstance(answer, str) else json.dumps(answer)
        self.answer(status, text.encode("utf-8"), "application/json")

    def log_message(self, format, *args):
        """Stay quiet: the tests read `requests` instead."""


class FakeServer(socketserver.ThreadingMixIn, HTTPServer):
    """One thread per connection, on every Python the project supports."""
    daemon_threads = True
    request_queue_size = 128
    tls = None  # a TLS context: then the handshake happens in the connection's thread

    def finish_request(self, request, client_address):
        """Serve one connection, first with a TLS handshake if the fake speaks HTTPS."""
        if self.tls is None:
            HTTPServer.finish_request(self, request, client_address)
            return
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):  # not TLS, or the client gave up: just close
            return
        try:
            HTTPServer.finish_request(self, request, client_address)
        finally:
            request.close()

    def server_bind(self):
        """Bind without a reverse DNS lookup."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def shutdown_request(self, request):
        """Close a connection, then count it as closed, for tests waiting on that."""
        HTTPServer.shutdown_request(self, request)
        with self.fake.lock:
            self.fake.connections_closed += 1
            self.fake.connection_closed.notify_all()

    def handle_error(self, request, client_address):
        """A client that hung up (or closed TLS without notice) is no error; bugs are."""
        if not isinstance(sys.exc_info()[1], OSError):
            HTTPServer.handle_error(self, request, client_address)


def main():
    """Serve the fake cloud for the demo until Ctrl-C."""
    parser = argparse.ArgumentParser(description="A fake Netatmo cloud for the demo.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret")
    parser.add_argument("--redirect-uri", default="http://127.0.0.1:8000/authenticate")
    parser.add_argument("--auto-approve", metavar="USER",
                        help="approve every login as USER, without the consent page")
    parser.add_argument("--approve-from-page", action="store_true",
                        help="send the browser back from a page, as Netatmo does")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds added to every /api call")
    parser.add_argument("--no-rate-limits", action="store_true",
                        help="do not enforce Netatmo's per-user limits (benchmarks)")
    parser.add_argument("--expires-in", type=int, default=10800,
                        help="lifetime of the access tokens it issues, in seconds")
    parser.add_argument("--tls", action="store_true",
                        help="serve HTTPS with the test certificate in tests/tls")
    args = parser.parse_args()
    fake = FakeNetatmo(args.client_id, args.client_secret)
    fake.register_redirect_uri(args.redirect_uri)
    fake.auto_approve = args.auto_approve
    fake.approve_from_page = args.approve_from_page
    fake.latency = args.latency
    fake.expires_in = args.expires_in
    if args.no_rate_limits:
        fake.rate_limits = None
    try:
        fake.server = FakeServer(("127.0.0.1", args.port), FakeHandler)
    except OSError as e:
        print("fake Netatmo: cannot listen on 127.0.0.1 port %d: %s" % (args.port, e.strerror),
              file=sys.stderr)
        return 2
    fake.server.fake = fake
    if args.tls:
        fake.server.tls = tls_context()
        fake.scheme = "https"
    print("fake Netatmo: serving on %s (users: %s)" % (fake.url, ", ".join(sorted(fake.users))),
          flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        fake.server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
