"""A seeded fuzzer for netatmo_stdlib's HTTP surface: hostile requests over raw sockets.

Each case is raw bytes (http.client refuses to send most of them) and whether a
well-formed request line went out (then an answer is required; for unparseable bytes
a closed connection is also fine). Hostile values carry the marker FZ, so a check can
tell whether anything from the input came back unescaped: they go into the query
(codes, states, errors) and into the path, which the 404 page names.
"""

import random
import re
import socket

ROUTES = ["/", "/login", "/authenticate", "/devices", "/devices.json", "/refresh",
          "/logout", "/healthz"]
MARKER = "FZ"
HOSTILE = [
    "<script>FZ</script>", "\"><img src=x onerror=FZ>", "'FZ'\"", "FZ\r\nX-Injected: FZ",
    "FZ\nSet-Cookie: FZ=1", "FZ\x00FZ", "%FZ%zz%", "\u202eFZ\u2028", "FZ" * 40,
    "javascript:FZ", "FZ%0d%0aX-Injected:%20FZ", "../../FZ", "FZ;netatmo_session=FZ",
]
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW",
           "get", "G\x00ET", "CONNECT", "PROPFIND"]


def quote_loosely(rng, text):
    """Percent-encode some characters of text, leave others raw, break a few escapes."""
    out = []
    for ch in text:
        roll = rng.random()
        if ch in " \r\n" or roll < 0.4:
            out.append("".join("%%%02X" % b for b in ch.encode("utf-8")))
        elif roll < 0.45:
            out.append("%" + rng.choice(["", "G", "z1", "%"]))
        else:
            out.append(ch)
    return "".join(out)


def random_path(rng):
    """Return a path: a route, a traversal, junk escapes, or invalid UTF-8."""
    kind = rng.randrange(8)
    if kind == 0:
        return rng.choice(ROUTES)
    if kind == 7:  # hostile text where the 404 page names the path
        return "/" + quote_loosely(rng, rng.choice(HOSTILE)).replace("?", "%3F")
    if kind == 1:
        return rng.choice(["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//login",
                           "/devices/../login", "/.%2e/", "/login/", "/DEVICES", "\\login",
                           "/devices.json.", "/healthz;x", "/%00", "/login%00.html"])
    if kind == 2:
        return "/" + "".join(rng.choice("abc/%.-_~:@!$&'()*+,;=") for _ in range(rng.randrange(40)))
    if kind == 3:
        return rng.choice(ROUTES) + "%" + rng.choice(["", "zz", "f", "%%", "C3%28"])
    if kind == 4:
        return (rng.choice(ROUTES) + "/").encode().decode() + "\udcff"  # raw byte 0xff
    if kind == 5:
        return rng.choice(ROUTES) + "?" + "&".join(
            "%s=%s" % (rng.choice(["code", "state", "error", "x", "", "code"]),
                       quote_loosely(rng, rng.choice(HOSTILE + [""])))
            for _ in range(rng.randrange(1, 6)))
    return "/authenticate?" + rng.choice(["code", "state", "q"]) + "=" + "a" * 16384


def request_line(rng):
    """Return (request line, path, whether it is well-formed)."""
    method = rng.choice(METHODS) if rng.random() < 0.3 else rng.choice(["GET", "POST"])
    path = random_path(rng)
    raw_path = path.encode("utf-8", "surrogateescape")
    well_formed = method.isalpha() and method.isupper()
    line = method.encode("latin-1") + b" " + raw_path + b" HTTP/1.1\r\n"
    return line, path, well_formed


def headers(rng, session_cookie):
    """Return header lines: sometimes hostile cookies, hosts, origins, lengths."""
    lines = [b"Host: 127.0.0.1"]
    roll = rng.randrange(10)
    if roll == 0:
        lines.append(b"Cookie: " + b"; ".join(b"c%d=%d" % (i, i) for i in range(200)))
    elif roll == 1:
        lines.append(b"Cookie: netatmo_session=" + b"A" * 8000)
    elif roll == 2:
        lines.append(b"Cookie: netatmo_session; =; ;;netatmo_session==x; " +
                     quote_loosely(rng, rng.choice(HOSTILE)).encode())
    elif roll == 3 and session_cookie:
        lines.append(b"Cookie: netatmo_session=" + session_cookie.encode())
    if rng.random() < 0.2:
        lines.append(b"Origin: " + rng.choice([b"http://evil.example", b"null", b"FZ\x7f"]))
    if rng.random() < 0.1:
        lines.append(b"Host: " + rng.choice([b"[", b"localhost:99999", b"FZ<>", b""]))
    return lines


def body_headers(rng):
    """Return (header lines, body bytes): missing, negative, lying or huge lengths."""
    kind = rng.randrange(6)
    if kind == 0:
        return [], b""
    if kind == 1:
        return [b"Content-Length: -5"], b"abc"
    if kind == 2:
        return [b"Content-Length: 100"], b"short"  # lies: fewer bytes follow
    if kind == 3:
        return [b"Content-Length: 99999999999"], b"x"
    if kind == 4:
        return [b"Content-Length: 5", b"Content-Length: 7"], b"hello"
    return [b"Transfer-Encoding: chunked"], b"5\r\nhello\r\n0\r\n\r\n"


def garbage(rng):
    """Return bytes that are no HTTP request at all, or odd ones."""
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 1:
        return b"GET /\r\n"  # HTTP/0.9
    if kind == 2:
        return b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i)
                                                for i in range(1000)) + b"\r\n"
    if kind == 3:
        return b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"
    if kind == 4:
        return b"GET / HTTP/9.9\r\n\r\n"
    return b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n"


def cases(seed, count, session_cookie=None):
    """Yield (raw bytes, must it be answered) for count hostile requests."""
    rng = random.Random(seed)
    for _ in range(count):
        if rng.random() < 0.1:
            yield garbage(rng), False
            continue
        line, path, well_formed = request_line(rng)
        extra, body = body_headers(rng) if rng.random() < 0.3 else ([], b"")
        # /login and /logout end the session they are sent with: that is no failure.
        owner = None if path.split("?")[0] in ("/login", "/logout") else session_cookie
        head = [line.rstrip(b"\r\n")] + headers(rng, owner) + extra + \
            [b"Connection: close"]
        yield b"\r\n".join(head) + b"\r\n\r\n" + body, well_formed


def exchange(port, data):
    """Send data, close our side, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse the rest: its answer still counts
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


def problems_with(answer, must_answer):
    """Return what is wrong with one answer (an empty list if nothing)."""
    if not answer:
        return ["no answer to a well-formed request"] if must_answer else []
    match = STATUS_LINE.match(answer)
    if not match:
        return ["not an HTTP answer: %r" % answer[:80]]
    status = int(match.group(1))
    head, sep, body = answer.partition(b"\r\n\r\n")
    found = []
    if not sep:
        found.append("no end of headers")
    if status >= 500 and status != 505:  # 505: the HTTP/9.9 of a fuzzed request line
        found.append("status %d" % status)
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not re.match(rb"^[A-Za-z0-9-]+$", name):
            found.append("malformed header line %r" % line[:80])
        if MARKER.encode() in line or name.lower() == b"x-injected":
            found.append("input reached a header: %r" % line[:120])
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    if length and len(body) not in (0, int(length.group(1))):  # 0: the answer to a HEAD
        found.append("Content-Length %s, but %d bytes" % (length.group(1), len(body)))
    for raw in (b"<script>FZ", b"<img src=x", b"'FZ'\"", b"FZ\r\n", b"\x00FZ"):
        if raw in body:
            found.append("input reflected unescaped: %r" % raw)
    return found


# ---- Answers: what Netatmo sends back, of any shape ----------------------------
# The fuzzer above attacks the app from the browser's side; this one from Netatmo's.
# Each case takes a real answer (tests/fixtures) and swaps one of its nodes, at any
# depth, the envelope included, for a value of another JSON type, or sends an empty
# body, or none.

NOT_A_NUMBER = float("nan")
ODD_VALUES = [
    None, True, False, 0, -1, 1.5, 1e308, -1e308, 10 ** 30, NOT_A_NUMBER, float("inf"),
    "", "text\x1b]0;x\x07\r\x9b", "x" * 5000, [], {}, [{}], [None], {"": []},
    # lone surrogates, which json.loads takes from "\ud800" escapes, and C1, bidi and
    # line-separator controls, alone and as keys
    "\ud800", "x\udfffy\udbff", "\x85\x9b\u202e\u2066\u2028", {"\ud800": "\udc00"},
]


def nested(depth):
    """Return a list nested depth deep: deep, yet within what json.loads takes."""
    value = []
    for _ in range(depth):
        value = [value]
    return value


def node_paths(value, path=()):
    """Return the path (keys and indexes) of every node of a JSON value, itself too."""
    paths = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            paths += node_paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += node_paths(child, path + (index,))
    return paths


def swapped(value, path, new):
    """Return a copy of value with the node at path replaced by new."""
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = swapped(value[path[0]], path[1:], new)
    return copy


def mutated_answers(seed, count, answers):
    """Yield (endpoint path, answer, what was done) for count mutated real answers.

    answers maps an endpoint's path to its whole real answer ({"body": ...,
    "status": "ok", ...}). A third of the cases swap a node near the top (the
    envelope, the body, a list of homes or devices), the others any node.
    """
    rng = random.Random(seed)
    endpoints = sorted(answers)
    paths = {endpoint: node_paths(answers[endpoint]) for endpoint in endpoints}
    for _ in range(count):
        endpoint = rng.choice(endpoints)
        answer = answers[endpoint]
        roll = rng.random()
        if roll < 0.03:
            yield endpoint, {"status": "ok", "body": {}}, "an empty body"
            continue
        if roll < 0.06:
            yield endpoint, {"status": "ok", "time_server": 1559171003}, "no body"
            continue
        near_top = [p for p in paths[endpoint] if len(p) <= 3]
        path = rng.choice(near_top if roll < 0.35 else paths[endpoint])
        new = nested(rng.choice([50, 500])) if rng.random() < 0.05 else \
            rng.choice(ODD_VALUES)
        yield endpoint, swapped(answer, path, new), "%s at %s" % (
            type(new).__name__, "/".join(str(p) for p in path) or "the root")
