"""make test-mutations: break one property at a time, and check that a test fails.

Each mutation is a line of netatmo_stdlib.py that carries a security or correctness
property, and the same line broken. For each, a copy of the project is made with
that one change, and the test modules it names run on the copy until their first
failure. A mutation that no test notices SURVIVED: the property it breaks has no
test that can fail, so, by our rule, it does not exist.

The check exits 1 if any mutation survives, or if a mutation's original text is no
longer in the program (the list must keep up with the code). Mutants run in
parallel, one per core and one more (tests wait on sockets more than they compute).

    python3 tests/mutations.py            # every mutation
    python3 tests/mutations.py state pkce # only those whose description has a word
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.run import each_at_once  # noqa: E402
PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")

BROWSER = "tests.browser_test"
HARDENING = "tests.test_hardening."
TERMINAL = "tests.test_terminal."
TIMEOUT = 240  # seconds a mutant's tests may take; longer is a test that hangs

# (what the mutation breaks, the original text, the mutated text, the tests to run:
# modules, classes or single tests)
FLOW = "tests.test_flow."
HTTP = "tests.test_http."
DEVICES = "tests.test_devices."
TOKENS = "tests.test_tokens."
SCRIPTS = "tests.test_scripts.SharedFileTest"
BAD_DAYS = "tests.test_bad_days."
REAL = "tests.test_real_accounts."
LESSON = "tests.test_lesson."
NEWCOMER = "tests.test_newcomer."
REVIEW = "tests.test_review."
FIRST_DAY = "tests.test_first_day."
PASTE = "tests.test_paste."
MUTATIONS = [
    # -- state, PKCE and the signed login cookie --
    ("state is not checked against the login cookie",
     'state.encode(), logins.state(nonce).encode())', 'state.encode(), state.encode())',
     [FLOW + "CallbackTest"]),
    ("the login cookie's signature is not checked",
     'if not owner and not hmac.compare_digest(parts[2].encode(),',
     'if False and not hmac.compare_digest(parts[2].encode(),', [FLOW + "LoginStateTest"]),
    ("a login cookie older than 10 minutes is taken",
     'if not 0 <= age <= self.ttl:', 'if False:',
     [FLOW + "CallbackTest"]),
    ("a state works twice",
     'if not (code and matches and logins.use(nonce)):', 'if not (code and matches):',
     [FLOW + "CallbackTest"]),
    ("state cut to 128 bits", 'return self.mac("state", nonce)',
     'return self.mac("state", nonce)[:22]', [FLOW + "LoginFlowTest"]),
    ("the login's nonce cut to 64 bits", 'nonce = random_text(16)  # 128 bits',
     'nonce = random_text(8)', [FLOW + "LoginFlowTest"]),
    ("the PKCE verifier is not sent", 'form.append(("code_verifier", code_verifier))',
     'pass', [FLOW + "LoginFlowTest"]),
    ("the PKCE challenge is sent plain",
     '("code_challenge_method", "S256")]', '("code_challenge_method", "plain")]',
     [FLOW + "LoginFlowTest"]),
    ("an error=... without the login cookie, or with another state, ends the login",
     'if nonce is None or (state is not None and not matches):', 'if False:',
     [FLOW + "LoginStateTest", TERMINAL + "OnceTest"]),
    ("a refusal without the state ends the login at once",
     '    if state is None:\n        server.trace.callback', '    if False:\n        server.trace.callback',
     [BAD_DAYS + "RefusalTest"]),
    ("Cancel this login does not end --once",
     'error="cancelled",\n                    exit_status=Exit.LOGIN_FAILED)',
     'error="cancelled")', [BAD_DAYS + "RefusalTest.test_once_ends_only_with_the_state_or_"
                                      "the_persons_cancel"]),
    ("a login can be cancelled twice, or without its cookie",
     'if nonce is None or not logins.use(nonce):', 'if False:', [BAD_DAYS + "RefusalTest"]),
    ("/login logs the browser out",
     '    cookie, nonce = logins.start(owner)',
     '    server.sessions.delete(request.cookie(config.cookie_name) or "")\n'
     '    cookie, nonce = logins.start(owner)',
     [FLOW + "LoginStateTest"]),
    ("a new login keeps the old session", 'server.sessions.delete(old)', 'pass',
     [FLOW + "LoginFlowTest"]),
    # -- cookie attributes --
    ("cookies without HttpOnly",
     '"HttpOnly", "SameSite=Lax", "Path=" + path]', '"SameSite=Lax", "Path=" + path]',
     [FLOW + "LoginFlowTest"]),
    ("cookies with SameSite=Strict: the way back from Netatmo loses the login cookie",
     '"HttpOnly", "SameSite=Lax", "Path=" + path]', '"HttpOnly", "SameSite=Strict", '
     '"Path=" + path]', [BROWSER + ".BrowserTest.test_login_in_chromium_ends_on_the_device_list"]),
    ("cookies without Secure over https", 'parts.append("Secure")', 'pass',
     [FLOW + "LoginFlowTest"]),
    ("the login cookie lives for ever",
     'config.login_cookie_path,  # (a)\n                       logins.ttl)',
     'config.login_cookie_path)  # (a)', [FLOW + "LoginFlowTest"]),
    ("two session cookies: the first one wins (cookie tossing)",
     'if len(values) > 1:', 'if False:', [HARDENING + "CookieTossingTest"]),
    ("no __Host- prefix over https",
     'return ("__Host-" if self.secure_cookies else "") + COOKIE_NAME',
     'return COOKIE_NAME', [HARDENING + "CookieTossingTest"]),
    ("no __Host- prefix for the login cookie over https",
     'return ("__Host-" if self.secure_cookies else "") + LOGIN_COOKIE_NAME',
     'return LOGIN_COOKIE_NAME', [HARDENING + "CookieTossingTest"]),
    ("the login cookie over https is __Secure-, which a sibling subdomain can plant",
     'return ("__Host-" if self.secure_cookies else "") + LOGIN_COOKIE_NAME',
     'return ("__Secure-" if self.secure_cookies else "") + LOGIN_COOKIE_NAME',
     [HARDENING + "CookieTossingTest"]),
    # -- escaping, on every page --
    ("the name column unescaped", 'escape(d["name"] or "(unnamed)")',
     '(d["name"] or "(unnamed)")', [DEVICES + "DeviceListTest"]),
    ("the product column unescaped", 'escape(d["product"]), seen,', 'd["product"], seen,',
     [DEVICES + "DeviceListTest"]),
    ("the type column unescaped", 'escape(d["type"]), escape(d["id"])))',
     'd["type"], escape(d["id"])))', [DEVICES + "DeviceListTest"]),
    ("the id column unescaped", 'escape(d["type"]), escape(d["id"])))',
     'escape(d["type"]), d["id"]))', [DEVICES + "DeviceListTest"]),
    ("the home column unescaped", 'escape(d["home"] or ""), escape(d["type"])',
     '(d["home"] or ""), escape(d["type"])', [DEVICES + "DeviceListTest"]),
    ("the granted scopes unescaped on the home page",
     'escape(" ".join(tokens.scope) or "none")', '(" ".join(tokens.scope) or "none")',
     [DEVICES + "DeviceListTest"]),
    ("the error page's explanation unescaped", 'escape(error.explanation), button(',
     '(error.explanation), button(', [DEVICES + "DeviceListTest", HTTP + "HeadersTest"]),
    # -- the Origin check and the pages' headers --
    ("POSTs from a page under no-referrer get Origin: null: Log out fails in a browser",
     'self.send_header("Referrer-Policy", "same-origin")',
     'self.send_header("Referrer-Policy", "no-referrer")',
     [BROWSER + ".BrowserTest.test_every_button_of_every_page_does_what_it_says"]),
    ("Origin: null, or another origin, is accepted on a POST",
     'if any(o.lower() != self.server.config.origin for o in origins) or \\',
     'if False or \\', [HTTP + "HeadersTest"]),
    ("Sec-Fetch-Site: cross-site is accepted on a POST",
     'site in ("cross-site", "same-site"):', 'site in ():', [HTTP + "HeadersTest"]),
    ("no Strict-Transport-Security over https",
     'self.send_header("Strict-Transport-Security", "max-age=31536000")',
     'pass', [HARDENING + "CookieTossingTest", TERMINAL + "HttpsTest"]),
    # -- talking to Netatmo: TLS, proxies, redirects, answers --
    ("TLS certificates of Netatmo not verified",
     'self.tls = ssl.create_default_context()  # verifies certificate and host name',
     'self.tls = ssl._create_unverified_context()', [HTTP + "NetatmoConnectionTest"]),
    ("TLS host names of Netatmo not checked",
     'self.tls = ssl.create_default_context()  # verifies certificate and host name',
     'self.tls = ssl.create_default_context(); self.tls.check_hostname = False',
     [HTTP + "NetatmoConnectionTest"]),
    ("https_proxy and http_proxy ignored", 'urllib.request.ProxyHandler()',
     'urllib.request.ProxyHandler({})', [HTTP + "ProxyTest"]),
    ("the proxy's password goes to Netatmo too",
     'tunnel_headers["Proxy-Authorization"] = headers.pop("Proxy-Authorization")',
     'tunnel_headers["Proxy-Authorization"] = headers["Proxy-Authorization"]',
     [HTTP + "ProxyTest"]),
    ("redirects from Netatmo followed, with the token",
     'urllib.request.HTTPDefaultErrorHandler(),',
     'urllib.request.HTTPRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),',
     [HTTP + "NetatmoConnectionTest"]),
    ("--timeout not applied to calls to Netatmo",
     'with self.opener.open(request, timeout=self.config.timeout) as response:',
     'with self.opener.open(request, timeout=self.config.timeout * 10) as response:',
     [TOKENS + "RefreshTest.test_refresh_timeout_is_a_504_and_keeps_the_session",
      TERMINAL + "OnceTest.test_timeout_for_netatmo_by_flag_and_by_environment"]),
    ("answers from Netatmo are read whole, however large",
     'body = read_at_most(response, self.max_answer)', 'body = response.read()',
     [HARDENING + "NetatmoAnswerTest"]),
    ("JSON nested too deep is a 500",
     'except (ValueError, RecursionError):  # RecursionError: JSON nested too deep',
     'except ValueError:', [HARDENING + "NetatmoAnswerTest"]),
    ("a token of the wrong type is taken",
     'return isinstance(value, str) and bool(value) and all(33 <= ord(c) <= 126 for c in '
     'value)', 'return bool(value)', [HARDENING + "NetatmoAnswerTest"]),
    ("an expires_in of NaN, infinity or centuries is believed",
     'return lifetime if -year <= lifetime <= year else None', 'return lifetime',
     [HARDENING + "NetatmoAnswerTest"]),
    ("403 code 13 fails the page instead of saying 'not granted'",
     'if isinstance(error, NetatmoError) and error.code == 13:', 'if False:',
     [DEVICES + "DeviceListTest"]),
    ("the older 403 code 26 is not a rate limit",
     'return (self.status == 429 or self.code in (11, 26)',
     'return (self.status == 429 or self.code in (11,)', [TOKENS + "LifetimeTest"]),
    ("the rate-limit page has no Retry-After", 'headers=(("Retry-After", "600"),)',
     'headers=()', [DEVICES + "DeviceListTest"]),
    # -- refresh: when, single flight and rotation --
    ("a token about to expire is used, not refreshed first",
     'if tokens.expires_at is None or tokens.expires_at - time.time() > margin:', 'if True:',
     [TOKENS + "RefreshTest.test_token_about_to_expire_is_refreshed_before_the_call"]),
    ("a short-lived token is refreshed on every call",
     'margin = min(margin, tokens.lifetime / 2)', 'pass', [TOKENS + "LifetimeTest"]),
    ("two threads refresh with the same refresh token",
     'if stale_access_token is not None and tokens.access_token != stale_access_token:',
     'if False:', [TOKENS + "RefreshTest"]),
    ("the rotated pair is not saved to --token-file", 'self.save(new)', 'pass',
     [TERMINAL + "TokenFileTest"]),
    ("an older session still writes the token file after a new login",
     'self.token_owner.token_file = None', 'pass', [TERMINAL + "TokenFileTest"]),
    # -- the cache --
    ("the device list is fetched on every page",
     'if cached is None or time.time() - cached.fetched_at >= max_age:', 'if True:',
     [DEVICES + "CacheTest"]),
    ("Fetch again now does not fetch",
     '    if session is not None:\n        session.device_list = None',
     '    if session is not None:\n        pass',
     [DEVICES + "CacheTest"]),
    # -- the device merge --
    ("a device listed twice keeps its gaps",
     'if key not in STATUS_FIELDS and (seen[key] is None or seen[key] == ""):',
     'if False:', [DEVICES + "DeviceListTest"]),
    ("stray spaces stay in device ids",
     '"id": "".join(str(device_id).split()),', '"id": str(device_id),',
     [DEVICES + "DeviceListTest"]),
    # -- device status (issue 11) --
    ("home ids are not remembered: every page waits for homesdata first",
     'session.home_ids = homes', 'pass', [DEVICES + "StatusTest"]),
    ("a homestatus that fails takes the whole list with it",
     'if isinstance(status, Exception) and not isinstance(status, NetatmoError):',
     'if isinstance(status, Exception):', [DEVICES + "StatusTest"]),
    ("a gateway that does not answer leaves its devices' status unknown, not offline",
     'silent = bridged_by(modules + only_live, not_answering(status))', 'silent = set()',
     [DEVICES + "StatusTest"]),
    ("the modules a silent gateway bridges are not marked offline",
     '            ids.add(str(module["id"]))', '            pass', [DEVICES + "StatusTest"]),
    ("a gateway reached through its modules stays 'unknown'",
     '            said[module_id] = True', '            pass', [DEVICES + "StatusTest"]),
    ("two sources' status fields mixed, or the staler one kept",
     '        if fresher(row, seen):', '        if False:', [DEVICES + "StatusTest"]),
    ("a thermostat does not read its room",
     'if module_id not in silent and row["type"] in THERMOSTATS:', 'if False:',
     [DEVICES + "StatusTest"]),
    ("a device with Wi-Fi and radio reports its radio",
     '"signal": level(module.get("wifi_strength"), WIFI_SIGNAL, "full")\n'
     '        or level(module.get("rf_strength"), RADIO_SIGNAL, "full"),',
     '"signal": level(module.get("rf_strength"), RADIO_SIGNAL, "full")\n'
     '        or level(module.get("wifi_strength"), WIFI_SIGNAL, "full"),',
     [DEVICES + "StatusTest"]),
    ("the radio thresholds off by ten", '(80, "medium"), (70, "high"))',
     '(80, "medium"), (60, "high"))', [DEVICES + "StatusOfTest"]),
    ("the battery thresholds moved", '(25, "medium"), (10, "low"))',
     '(25, "medium"), (5, "low"))', [DEVICES + "StatusOfTest"]),
    ("the room column unescaped", 'escape(d["room"] or "")', '(d["room"] or "")',
     [DEVICES + "StatusTest"]),
    ("the home that does not answer is named unescaped",
     'notes += "".join(\'<p class="note">%s</p>\\n\' % escape(line)',
     'notes += "".join(\'<p class="note">%s</p>\\n\' % (line)',
     [DEVICES + "StatusTest"]),
    ("the offline devices are named unescaped",
     'len(offline), escape(names_of(offline, labels, lambda d: "")))',
     'len(offline), (names_of(offline, labels, lambda d: "")))', [DEVICES + "DeviceListTest"]),
    # -- request limits --
    ("request bodies of any size are read", 'if int(length) > self.max_body:', 'if False:',
     [HTTP + "ConnectionTest"]),
    ("request heads are not capped as a whole",
     'self.rfile = CappedHead(rfile, self.max_head, self.max_header_lines)',
     'self.rfile = rfile', [HARDENING + "RequestHeadTest"]),
    ("a request head may have any number of header lines",
     'if self.lines_left <= 0:', 'if False:', [HARDENING + "RequestHeadTest"]),
    ("connections of one address are not capped",
     'allowed = (mine < self.max_connections_per_client',
     'allowed = (True', [HARDENING + "ConnectionCapTest"]),
    ("connections are not capped in all",
     'and sum(self.connections.values()) < self.max_connections)', 'and True)',
     [HARDENING + "ConnectionCapTest"]),
    ("a busy client keeps its connection for ever",
     'if self.requests >= self.max_requests:', 'if False:', [HARDENING + "ConnectionCapTest"]),
    ("an idle kept-alive connection waits as long as a new one",
     'seconds = min(seconds, self.keep_alive_seconds)', 'pass',
     [HARDENING + "ConnectionCapTest"]),
    ("a slow client holds its connection for ever",
     'self.deadlines[connection] = time.time() + seconds',
     'self.deadlines[connection] = time.time() + 3600', [HARDENING + "SlowClientTest"]),
    ("Content-Length takes any digit, such as \u00b2, and two of them",
     'if len(lengths) > 1 or not digits(length):',
     'if not length.isdigit():', [HARDENING + "RequestParsingTest"]),
    # -- secrets never logged, nor traced --
    ("--trace shows secrets", 'return "%d characters" % len(value or "")',
     'return value or ""', ["tests.test_trace"]),
    ("--trace shows the code and the client secret",
     'public = ("grant_type", "client_id", "redirect_uri", "scope")',
     'public = ("grant_type", "client_id", "redirect_uri", "scope", "code", "client_secret")',
     ["tests.test_trace"]),
    ("the query string, with codes and states, is logged",
     'message = message.split("?", 1)[0] + "?[query dropped]"', 'pass',
     [HTTP + "LogTest"]),
    ("the session id is logged, with the request's cookies",
     'log.info("%s %s", self.address_string(), message)',
     'log.info("%s %s %s", self.address_string(), message, '
     'self.headers.get("Cookie") if self.headers else "")', [HTTP + "LogTest"]),
    ("the log writes control characters raw",
     'record.message = escaped(record.message)', 'pass',
     [HARDENING + "RequestParsingTest", BAD_DAYS + "TerminalAttackTest"]),
    ("control characters reach stderr raw", 'return str(text).translate(CONTROL_CHARACTERS)',
     'return str(text)', [BAD_DAYS + "TerminalAttackTest"]),
    ("--trace writes Netatmo's strings raw", '"".join("    %s\\n" % escaped(line)',
     '"".join("    %s\\n" % (line)', [BAD_DAYS + "TerminalAttackTest"]),
    # -- the token file --
    ("the token file is written through the fixed name PATH.tmp",
     'fd, temporary = self.temporary_file()',
     'temporary = self.path + ".tmp"; fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | '
     'os.O_EXCL, 0o600)', [TERMINAL + "TokenFileTest"]),
    ("the token file readable by all",
     '        fd, temporary = self.temporary_file()\n        try:',
     '        fd, temporary = self.temporary_file()\n        os.chmod(temporary, 0o644)\n'
     '        try:', [TERMINAL + "TokenFileTest"]),
    ("the token file rewritten in place, not replaced whole",
     'os.replace(temporary, self.path)',
     'open(self.path, "wb").write(content); os.unlink(temporary)',
     [TERMINAL + "TokenFileTest"]),
    ("the token file's folder is not synced after the rename",
     'sync_folder(os.path.dirname(self.path))', 'pass', [TERMINAL + "TokenFileTest"]),
    ("a FIFO at the token file's path hangs the start",
     'if not stat.S_ISREG(info.st_mode):', 'if False:', [TERMINAL + "TokenFileTest"]),
    ("root adopts another user's token file",
     'elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():', 'elif False:',
     [TERMINAL + "TokenFileTest", BAD_DAYS + "LockTest"]),
    ("a token file readable by others is used",
     'if info.st_mode & 0o077:', 'if False:', [TERMINAL + "TokenFileTest"]),
    ("a token file of the wrong types is used",
     'if not self.well_formed(saved):', 'if not isinstance(saved, dict):',
     [TERMINAL + "TokenFileTest"]),
    ("--once refreshes without checking that the folder takes the new pair",
     '        config.token_file.check_writable()\n    return config',
     '        pass\n    return config', [TERMINAL + "TokenFileTest"]),
    # -- the token file shared by several programs, and --print-token --
    ("a good saved token is refreshed anyway",
     'session.access_token(server.netatmo)  # refreshes now only if it must',
     'session.refresh(server.netatmo)', [SCRIPTS]),
    ("programs sharing the token file refresh without its lock",
     '        with self.locked():\n            try:\n                saved = self.load()',
     '        if True:\n            try:\n                saved = self.load()', [SCRIPTS]),
    ("the token file is not read again under the lock",
     '            try:\n                saved = self.load()',
     '            try:\n                saved = None', [SCRIPTS]),
    ("a pair another program rotated is refreshed again, not taken",
     'if saved.expires_at is None or saved.expires_at - time.time() > margin:',
     'if False:', [SCRIPTS]),
    ("the web server's session does not share the file",
     '            session.token_file = token_file', '            pass', [SCRIPTS]),
    ("--print-token prints the refresh token too",
     'write_out(json.dumps({"access_token": tokens.access_token,',
     'write_out(json.dumps({"access_token": tokens.access_token, "refresh_token": '
     'tokens.refresh_token,', [SCRIPTS]),
    ("--print-token fetches the devices",
     'found = None if config.print_token else device_list(server, session,',
     'found = device_list(server, session,', [SCRIPTS]),
    # -- the client secret --
    ("the client-secret file read with its trailing newline",
     'secret = raw.decode("utf-8").strip()', 'secret = raw.decode("utf-8")',
     ["tests.test_cli.StartTest.test_old_app_id_variable_and_secret_file"]),
    # -- --once: exit statuses, the shared host --
    ("--once exits 1, not 4, when Netatmo fails",
     'error="netatmo_failed", exit_status=Exit.NETATMO_FAILED)\n\n\n',
     'error="netatmo_failed", exit_status=Exit.LOGIN_FAILED)\n\n\n',
     [TERMINAL + "OnceTest"]),
    ("--once exits 1, not 3, when no login comes in time",
     'return fail(Exit.NO_LOGIN, "no login was completed within %g s (--wait)%s"',
     'return fail(Exit.LOGIN_FAILED, "no login was completed within %g s (--wait)%s"',
     [TERMINAL + "OnceTest"]),
    ("--once lets anyone on the host log in",
     'if (config.terminal or given is not None) and not owner:', 'if False:',
     [TERMINAL + "OnceTest"]),
    # -- real accounts (issue 18) --
    ("a room's module_ids is not read: a module there without room_id has no room",
     'found.setdefault(str(module_id), str(room.get("id")))', 'pass', [REAL + "RoomsTest"]),
    ("module_ids wins over the module's own room_id",
     'found[str(module["id"])] = str(module["room_id"])',
     'found.setdefault(str(module["id"]), str(module["room_id"]))', [REAL + "RoomsTest"]),
    ("a module that only homestatus lists is dropped",
     'only_live = [m for module_id, m in live.items() if module_id not in listed_ids]',
     'only_live = []', [REAL + "StatusOnlyTest"]),
    ("every row says it is in homesdata", 'in_homesdata=module_id in listed_ids)',
     'in_homesdata=True)', [REAL + "StatusOnlyTest"]),
    ("a valve that homestatus does not list does not read its room",
     'and row["type"] in THERMOSTATS:', 'and row["type"] in THERMOSTATS and module_id in live:',
     [REAL + "StatusOnlyTest"]),
    ("a module that does not answer beside others' status makes the home 'without status'",
     '"reason": "some_not_answering"\n                             if live else "not_answering"',
     '"reason": "not_answering"', [REAL + "StatusInPartsTest"]),
    ("one failing product line fails the whole page",
     '        elif isinstance(error, NetatmoError):\n            failed.append(',
     '        elif isinstance(error, NetatmoError):\n            raise error\n'
     '            failed.append(',
     [REAL + "ProductLinesTest"]),
    ("every product line failing is an empty list, not the page of a failure",
     'if errors and not bodies:', 'if False:', [REAL + "ProductLinesTest"]),
    ("--once exits 0 on a partial list",
     'return Exit.PARTIAL if found is not None and found.failed else Exit.DONE',
     'return Exit.DONE', [REAL + "ProductLinesTest"]),
    ("--once says nothing on stderr of a product line that failed",
     '            say(failure_line(failure))', '            pass', [REAL + "ProductLinesTest"]),
    ("what Netatmo said of a failed line goes raw into /devices.json",
     'dict(f, message=escaped(f["message"]))', 'dict(f)', [REAL + "ProductLinesTest"]),
    ("the failed line's message unescaped on the page",
     'escape(failure_line(failure))', '(failure_line(failure))', [REAL + "ProductLinesTest"]),
    ("a failing homesdata forgets the home ids: the next page waits for it",
     'if "homesdata" in bodies else known', 'if "homesdata" in bodies else []',
     [REAL + "ProductLinesTest"]),
    ("a type of section 6 is shown as its raw code",
     '"NLE": ("Legrand", "Connected ecometer"),', '', [REAL + "ProductNamesTest"]),
    ("no maker", '"maker": maker,', '"maker": None,', [REAL + "ProductNamesTest"]),
    # -- what only Netatmo may see never reaches the browser (issue 21) --
    ("the login's state is its PKCE verifier: the verifier travels in the authorize URL",
     'return self.mac("state", nonce)', 'return self.mac("code_verifier", nonce)',
     ["tests.test_channels"]),
    ("the access token is shown on a page",
     'expiry = when(tokens.expires_at) if tokens.expires_at else "unknown"',
     'expiry = tokens.access_token', ["tests.test_channels"]),
    # -- on a bad day nothing is lost and nothing leaks (issue 17) --
    ("a refresh without the file's lock, when it cannot be had",
     '            if e.tokens is None:\n                raise',
     '            if e.tokens is None:\n                return renewed(client, tokens)',
     [BAD_DAYS + "LockTest"]),
    ("--once exits 2, not 6, when the lock is held",
     'the saved pair lives\n        return fail(Exit.NOT_KEPT, str(e))',
     'the saved pair lives\n        return fail(Exit.BAD_SETTING, str(e))',
     [BAD_DAYS + "LockTest"]),
    ("a login the file cannot keep gets no page that says so",
     'raise not_kept_page(not_kept, logged_in=True)', 'pass', [BAD_DAYS + "LockTest"]),
    ("a rotated pair that cannot be saved is dropped quietly",
     '            log.error("%s", e)\n', '', [BAD_DAYS + "LockTest"]),
    ("--once exits 0 when the rotated pair could not be saved",
     'return print_outcome(config, session.tokens, found, session.not_kept)',
     'return print_outcome(config, session.tokens, found)', [BAD_DAYS + "LockTest"]),
    ("a symlink at the lock file or the token file is not said to be refused on purpose",
     'if os.path.islink(path):', 'if False:',
     [BAD_DAYS + "NewcomerErrorsTest", BAD_DAYS + "LockTest"]),
    ("the lock file is not checked at start",
     '            os.close(open_own_file(self.path + ".lock", os.O_RDONLY, "the lock file"))',
     '            pass', [BAD_DAYS + "LockTest"]),
    ("a login begun at /login writes the owner's token file",
     'server.keep_tokens(session) if owner else None',
     'server.keep_tokens(session)', [BAD_DAYS + "OwnerTest"]),
    ("every login cookie is signed as the owner's",
     'self.mac("owner" if owner else "cookie", signed)', 'self.mac("owner", signed)',
     [BAD_DAYS + "OwnerTest"]),
    ("the owner's key goes into the redirect to the redirect URI's host",
     '        if owner:\n            raise PageError(400,',
     '        if False:\n            raise PageError(400,', [BAD_DAYS + "OwnerTest"]),
    ("--no-browser without --token-file is taken",
     'if args.no_browser and not args.token_file:', 'if False:',
     [BAD_DAYS + "NewcomerErrorsTest"]),
    ("an --api-url where nothing answers is blamed on Netatmo",
     'if self.config.api_url != DEFAULT_API_URL and isinstance(',
     'if False and isinstance(', [BAD_DAYS + "NewcomerErrorsTest"]),
    ("a body that is a list (homestatus, homesdata, stations) answers 500",
     'return answer["body"] if isinstance(answer["body"], dict) else {}',
     'return answer["body"]', [BAD_DAYS + "AnyAnswerTest"]),
    ("an empty homestatus looks like 'all fine'",
     '        elif not live:', '        elif False:', [BAD_DAYS + "AnyAnswerTest"]),
    ("the trace of (a) and (b) goes out after the redirect, as it once did",
     '    server.trace.login(request, cookie, state, challenge)  # told before the answer\n'
     '    request.redirect(302, authorize_url(config, state, challenge))  # (b) to Netatmo',
     '    request.redirect(302, authorize_url(config, state, challenge))\n'
     '    server.trace.login(request, cookie, state, challenge)', [BAD_DAYS + "TraceOrderTest"]),
    # -- a newcomer's first hour (issue 20) --
    ("--once's table ignores COLUMNS", 'if digits(os.environ.get("COLUMNS", "")):',
     'if False:', [NEWCOMER + "TableTest"]),
    ("a wide character counted as one screen column",
     '2 if unicodedata.east_asian_width(c) in "WF"',
     '1 if unicodedata.east_asian_width(c) in "WF"', [NEWCOMER + "TableTest"]),
    ("a combining mark counted as a screen column", '0 if unicodedata.combining(c) else',
     '1 if unicodedata.combining(c) else', [NEWCOMER + "TableTest"]),
    ("a table piped into a file is narrowed to 80 columns",
     'if sys.stdout.isatty() \\\n            else None',
     'if sys.stdout.isatty() \\\n            else 80', [NEWCOMER + "TableTest"]),
    ("--wide does not keep every column", 'if config.wide:\n        return None',
     'if False:\n        return None', [NEWCOMER + "TableTest"]),
    ("Renew says nothing of what it did",
     'request.set_cookie(server.config.done_cookie_name, "renewed-%d" % time.time(), '
     'max_age=60)', 'pass', [NEWCOMER + "ButtonsTest"]),
    ("a reload says again what a button did",
     '    request.expire_cookie(server.config.done_cookie_name)\n', '',
     [NEWCOMER + "ButtonsTest"]),
    ("two devices of one name are not told apart", '        if shared[d["name"]] > 1:',
     '        if False:', [NEWCOMER + "SharedNamesTest"]),
    ("a demo says to register its redirect URI at dev.netatmo.com",
     'if self.api_url == DEFAULT_API_URL:', 'if True:', [NEWCOMER + "HelpTest"]),
    # -- the lesson (issue 19) --
    ("a stray step marker in Part 2", '    """Return new Tokens from Netatmo for tokens\' '
     'refresh token, which then dies."""\n',
     '    """Return new Tokens from Netatmo for tokens\' refresh token, which then dies."""'
     '\n    form = None  # (d) a refresh\n', [LESSON + "MarkersTest"]),
    ("the docstring's map misses a banner",
     '    The HTTP handler                         routing, reading, writing, error pages\n',
     '', [LESSON + "MarkersTest"]),
    ("the handler holds step (c)'s logic", '"/authenticate": {"GET": authenticate,',
     '"/authenticate": {"GET": lambda server, request: authenticate(server, request),',
     [LESSON + "HandlerTest"]),
    ("a Netatmo call is told twice under --trace: log line and trace",
     'if status is not None and not self.trace.on:', 'if status is not None:',
     ["tests.test_trace"]),
    ("step (d) told under two headings: the POST, then the session cookie",
     '    told.session_started(config, sid)\n',
     '    server.trace.step("d", ["-> Set-Cookie: %s=<%s>" % (config.cookie_name, '
     'hidden(sid))], "the browser holds only the id")\n', ["tests.test_trace"]),
    ("the same why told once per call", '        if self.trace.on and why not in block.why:',
     '        if self.trace.on:', ["tests.test_trace"]),
    ("--print-token says 'used as it is' and then refreshes",
     'told.saved_login(config.token_file.path, saved, session.tokens is not saved)',
     'told.saved_login(config.token_file.path, saved, False)', ["tests.test_trace"]),
    # -- the security review (issue 24) --
    ("an answer http.server refuses carries the previous answer's cookies",
     'self.cookies = []\n        BaseHTTPRequestHandler.handle_one_request(self)',
     'self.cookies = self.cookies if self.requests else []\n'
     '        BaseHTTPRequestHandler.handle_one_request(self)', [REVIEW + "OwnCookiesTest"]),
    ("a refusal page links to the owner's login with the key",
     'again = None if owner else "/login"', 'again = server.login_path(owner)',
     ["tests.test_channels.OwnersKeyTest"]),
    ("--open puts the owner's key on the browser's command line, for ps",
     'redirect = open_browser(login_url, secret=True)',
     'redirect = open_browser(login_url)', [REVIEW + "OpenBrowserTest"]),
    ("--open's private page never sends the browser on to the login",
     'content="0;url=%s">', 'content="3600;url=%s">',
     [BROWSER + ".BrowserTest.test_the_private_page_of_open_leads_the_browser_to_the_owners_"
                "login"]),
    ("the browser inherits the client secret from the environment",
     '    environ.pop("NETATMO_CLIENT_SECRET", None)', '    pass', [REVIEW + "OpenBrowserTest"]),
    ("--open's private page is readable by other users",
     '                 0o600)\n    with os.fdopen(fd, "w", encoding="utf-8") as f:',
     '                 0o644)\n    os.chmod(folder, 0o755)\n'
     '    with os.fdopen(fd, "w", encoding="utf-8") as f:', [REVIEW + "OpenBrowserTest"]),
    ("tcsh's HOST moves the server onto the network",
     'host = setting(args.host, "NETATMO_HOST", default="127.0.0.1")',
     'host = setting(args.host, "HOST", default="127.0.0.1")', [REVIEW + "SettingsTest"]),
    ("a server on the network over plain http says nothing of the cookies in clear",
     'if loopback(self.host) or self.certfile or self.secure_cookies:',
     'if True:', [REVIEW + "SettingsTest"]),
    ("an --api-url in plain http to another host is taken",
     'if api_url.lower().startswith("http:") and not loopback(',
     'if False and not loopback(', [REVIEW + "SettingsTest"]),
    ("a client-secret file others can read is taken",
     '            if problem:  # as ssh refuses a private key that others can read',
     '            if False:', [REVIEW + "SettingsTest"]),
    ("a token file in a folder others may write is taken",
     '    if info.st_mode & stat.S_IWOTH:\n        return "other users"',
     '    if False:\n        return "other users"', [REVIEW + "SettingsTest"]),
    ("a token file in a folder another group may write is taken",
     'if info.st_mode & stat.S_IWGRP and info.st_gid != os.getgid():', 'if False:',
     [REVIEW + "SettingsTest"]),
    ("a lone surrogate from Netatmo goes on to the pages, and fails them",
     'answer = parsed(raw.decode("utf-8"))', 'answer = json.loads(raw.decode("utf-8"))',
     [REVIEW + "NetatmoStringsTest"]),
    ("/devices.json writes C1 and bidi controls raw",
     'JSON_ESCAPES.sub(lambda c: "\\\\u%04x" % ord(c.group()), json.dumps(',
     'JSON_ESCAPES.sub(lambda c: c.group(), json.dumps(',
     [REVIEW + "NetatmoStringsTest"]),
    ("stderr lets the bidi controls and the line separators through",
     '                          for c in TERMINAL_CONTROLS)',
     '                          for c in TERMINAL_CONTROLS if c < 0xa0)',
     [REVIEW + "NetatmoStringsTest"]),
    ("a done cookie of 5,000 digits, or from another day, is read",
     'if digits(renewed) and len(renewed) <= LIMIT["done_digits"] and abs(\n'
     '            time.time() - int(renewed)) <= 86400 \\',
     'if digits(renewed) and (True or\n            time.time()) \\',
     [REVIEW + "ReviewRestTest"]),
    ("tokens from --token-file are taken unchecked",
     'token_like(saved["access_token"]) and token_like(saved["refresh_token"])))',
     'True))', [REVIEW + "ReviewRestTest"]),
    ("the refusal page puts its form inside a <p>",
     'return page(error.title, "<p>%s</p>\\n<div>%s%s</div>" % (',
     'return page(error.title, "<p>%s</p>\\n<p>%s%s</p>" % (', [REVIEW + "ReviewRestTest"]),
    ("a page waits for a busy lock once per call (3 x 60 s)",
     'if self.busy is not None and self.busy[0] is tokens and self.busy[1] >= asked:',
     'if False:', [REVIEW + "ReviewRestTest"]),
    ("sessions are not capped", 'while len(self.sessions) > self.max_sessions:',
     'while False:', [REVIEW + "ReviewRestTest"]),
    ("the cap drops the oldest session, not the least recently used",
     '            self.sessions.move_to_end(sid)', '            pass', [REVIEW + "ReviewRestTest"]),
    ("a session keeps its device list for 24 hours",
     '                    self.cache_seconds:\n                session.device_list = None',
     '                    self.cache_seconds:\n                pass', [REVIEW + "ReviewRestTest"]),
    ("anyone who connects makes the server POST codes with the client secret, unbounded",
     '        if len(times) >= self.max_refused:', '        if False:',
     [REVIEW + "CodeFloodTest"]),
    ("the __Host- login cookie keeps Path=/authenticate over https, and browsers drop it",
     'return "/" if self.secure_cookies else "/authenticate"', 'return "/authenticate"',
     [HARDENING + "CookieTossingTest"]),
    ("a call to Netatmo is timed per read: a dribbled answer takes for ever",
     'with self.deadlines.watch(connection, deadline):', 'if True:',
     [REVIEW + "DeadlineTest"]),
    ("every home's status is asked, however many homes",
     'homes = home_ids(bodies["homesdata"])[:MAX_HOMES] if',
     'homes = home_ids(bodies["homesdata"]) if', [REVIEW + "ManyHomesTest"]),
    ("the homes whose status was not asked are not named",
     '    for home_id in home_ids(homes_body)[MAX_HOMES:]:',
     '    for home_id in home_ids(homes_body)[MAX_HOMES:0]:', [REVIEW + "ManyHomesTest"]),
    ("a line names every home or device, however many",
     '    return ", ".join(names[:most]) + (', '    return ", ".join(names) + (',
     [REVIEW + "ManyHomesTest"]),
    # -- a first day on a server (issue 25) --
    ("a terminal run binds its port before it reads the saved login",
     '    app = App(config)\n    try:\n        if saved is not None:',
     '    app = listen(config)\n    try:\n        if saved is not None:',
     [FIRST_DAY + "NoPortTest"]),
    ("a held lock makes a terminal run wait in silence",
     '            log.warning("waiting up to %g s for another program that holds %s", self.wait,',
     '            log.debug("waiting up to %g s for another program that holds %s", self.wait,',
     [FIRST_DAY + "WaitsTest"]),
    ("Ctrl-C in the lock's wait exits 130 without a line",
     '    except KeyboardInterrupt:\n        return fail(Exit.INTERRUPTED, "interrupted")\n'
     '    finally:\n        app.netatmo.close()',
     '    finally:\n        app.netatmo.close()', [FIRST_DAY + "WaitsTest"]),
    ("the login's wait does not say what an error page at Netatmo means",
     ' if server.logins.started\n', ' if False\n', [FIRST_DAY + "WaitsTest"]),
    ("--client-secret=VALUE echoes the value in the error",
     'flags = [a.split("=", 1)[0] for a in message.split(":", 1)[1].split()',
     'flags = [a for a in message.split(":", 1)[1].split()', ["tests.test_cli"]),
    ("a terminal run's start page shows a login button that leads to a 403",
     '    if server.config.terminal:\n        return request.send_html(200, page(',
     '    if False:\n        return request.send_html(200, page(', [FIRST_DAY + "TerminalPagesTest"]),
    ("the pages of a terminal run that has ended link back to it",
     '        if self.server.outcome is not None:\n            error = error.in_terminal_run()',
     '        if False:\n            error = error.in_terminal_run()',
     [FIRST_DAY + "TerminalPagesTest"]),
    ("a low battery shows nowhere at 80 columns",
     'labels[id(d)], status_word(d) + BATTERY_IN_STATUS.get(d["battery"], ""),',
     'labels[id(d)], status_word(d),', [FIRST_DAY + "ProblemsAtAnyWidthTest"]),
    ("two rows of the table show the same NAME",
     'labels[id(d)], status_word(d) + BATTERY_IN_STATUS',
     'd["name"] or "(unnamed)", status_word(d) + BATTERY_IN_STATUS',
     [FIRST_DAY + "ProblemsAtAnyWidthTest"]),
    ("a narrow table cuts away what tells two names apart",
     '        if len(set(cells)) == len(set(labels)):', '        if True:',
     [FIRST_DAY + "ProblemsAtAnyWidthTest"]),
    ("no summary line of what needs a person",
     '            say(needs_a_person(found.devices))', '            pass',
     [FIRST_DAY + "ProblemsAtAnyWidthTest"]),
    ("a battery cell wraps inside \"14 %\"", 'escape(battery_text(d, "%s (%d\\u00a0%%)"))',
     'escape(battery_text(d))', [BROWSER + ".BrowserTest.test_the_device_page_fits_at_1280_and_"
                                           "390_px"]),
    ("a Last seen time that may not wrap: alice's table scrolls sideways at 1280 px",
     'small{color:#555}', 'small{color:#555;white-space:nowrap}',
     [BROWSER + ".BrowserTest.test_the_device_page_fits_at_1280_and_390_px"]),
    ("a hostile name without spaces overflows a phone",
     'td:first-child{overflow-wrap:anywhere}', 'td:first-child{}',
     [BROWSER + ".BrowserTest.test_the_device_page_fits_at_1280_and_390_px"]),
    ("Renew and Log out only below the 73 rows",
     'button("/devices", "Fetch again now"),\n           buttons, table, buttons)))',
     'button("/devices", "Fetch again now"),\n           "", table, buttons)))',
     [BROWSER + ".BrowserTest.test_the_device_page_fits_at_1280_and_390_px"]),
    # -- --paste (issue 26) --
    ("a pasted address is taken without checking its state",
     'or state_matches(logins, nonce, answer.get("state"))):', 'or True):',
     [PASTE + "BadPasteTest"]),
    ("--paste listens on the redirect URI's port",
     '        if config.paste:\n            return paste_login(config, app)',
     '        if config.paste:\n            listen(config).server_close()\n'
     '            return paste_login(config, app)', [PASTE + "NothingListensTest"]),
    # -- the map (issue 27) --
    ("a stray open() in main(), outside the map",
     '        config = read_config(argv, os.environ if environ is None else environ)\n',
     '        config = read_config(argv, os.environ if environ is None else environ)\n'
     '        open(os.path.join(os.path.expanduser("~"), ".netatmo-stray"), "a").close()\n',
     ["tests.test_map.MapTest"]),
    ("a stray connect in main(), outside the map",
     '        config = read_config(argv, os.environ if environ is None else environ)\n',
     '        config = read_config(argv, os.environ if environ is None else environ)\n'
     '        socket.socket().connect_ex(("127.0.0.1", 9))\n', ["tests.test_map.MapTest"]),
    # -- HTTPS serving --
    ("plain HTTP to the https port gets no answer",
     'request.sendall(plain_http_answer(self.config.origin + "/"))', 'pass',
     [TERMINAL + "HttpsTest"]),
]


def copy_project(into):
    """Copy the program, the README and Makefile it is read and run by, and the tests
    into a folder; return the copy's program path."""
    for name in (PROGRAM, os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")):
        shutil.copy2(name, into)
    shutil.copytree(HERE, os.path.join(into, "tests"),
                    ignore=shutil.ignore_patterns("__pycache__", "output", "*.pyc"))
    return os.path.join(into, "netatmo_stdlib.py")


def run_mutant(number, mutation, source, results):
    """Apply one mutation to a copy of the project, run its tests; record the outcome."""
    description, original, mutated, modules = mutation
    folder = tempfile.mkdtemp(prefix="mutant-%02d-" % number)
    started = time.time()
    try:
        program = copy_project(folder)
        with open(program, "w", encoding="utf-8") as f:
            f.write(source.replace(original, mutated))
        done = subprocess.run(
            [sys.executable, os.path.join(folder, "tests", "run.py"), "--failfast"] + modules,
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, timeout=TIMEOUT)
        # "FAIL: test_x (tests.module.Class)", or "(tests.module.Class.test_x)" on 3.11+
        caught = re.findall(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+?)(?:\.\1)?\)", done.stdout,
                            re.M)
        if done.returncode == 0:
            outcome = "SURVIVED"
        elif caught:
            outcome = "%s.%s" % (caught[0][1].split(".", 1)[-1], caught[0][0])
        else:
            outcome = "failed: " + (done.stdout.strip().splitlines() or ["?"])[-1][:80]
    except subprocess.TimeoutExpired:
        outcome = "failed: timed out (%d s)" % TIMEOUT
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    results[number] = (outcome, time.time() - started)


def main(argv):
    """Run the mutations (those matching argv's words, if any); return the exit status."""
    with open(PROGRAM, encoding="utf-8") as f:
        source = f.read()
    chosen = [(i, m) for i, m in enumerate(MUTATIONS)
              if not argv or any(w.lower() in m[0].lower() for w in argv)]
    broken = []
    for _, (description, original, mutated, _) in chosen:
        if source.count(original) != 1:
            broken.append("NOT IN THE PROGRAM (exactly once): %s: %r" % (description, original))
            continue
        try:
            compile(source.replace(original, mutated), "mutant", "exec")
        except SyntaxError as e:
            broken.append("DOES NOT COMPILE: %s: %s" % (description, e))
    pending = [(i, m) for i, m in chosen if not any(m[0] + ":" in b for b in broken)]
    results = {}
    lock = threading.Lock()
    started = time.time()

    def mutant(item):
        number, mutation = item
        run_mutant(number, mutation, source, results)
        with lock:
            print("%3d done: %s (%.0f s)" % ((number,) + results[number]), flush=True)

    each_at_once(pending, (os.cpu_count() or 1) + 1, mutant)
    print("\n%-3s  %-62s  %s" % ("#", "mutation", "caught by"))
    for number in sorted(results):
        print("%-3d  %-62.62s  %s" % (number, MUTATIONS[number][0], results[number][0]))
    survived = [n for n, (outcome, _) in results.items()
                if outcome == "SURVIVED" or outcome.startswith("failed:")]
    for line in broken:
        print(line)
    print("\n%d mutations in %.0f s: %d caught, %d survived or failed to run, %d not "
          "applicable" % (len(chosen), time.time() - started, len(results) - len(survived),
                          len(survived), len(broken)))
    return 1 if survived or broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
