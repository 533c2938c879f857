"""What every test needs: the fake cloud, the app on a free port, and a browser."""

import http.client
import logging
import os
import socket
import ssl
import sys
import threading
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import netatmo_stdlib  # noqa: E402
from tests.fake_netatmo import FakeNetatmo, TLS_CERT  # noqa: E402

# A proxy set in the environment must not capture loopback traffic.
os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret"


def raw_exchange(port, data, read_all=True):
    """Send raw bytes to 127.0.0.1:port and return what comes back before close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not read_all:
                break
    return b"".join(chunks)



def flood_login(port, count, address="127.0.0.1"):
    """GET /login count times from address, on kept-alive connections while they last."""
    request = b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
    sock = reader = None
    try:
        for _ in range(count):
            if sock is None:
                sock = socket.socket()
                sock.bind((address, 0))
                sock.connect(("127.0.0.1", port))
                reader = sock.makefile("rb")
            sock.sendall(request)
            status = reader.readline()
            assert status.startswith(b"HTTP/1.1 302"), status
            closing = False
            while True:
                line = reader.readline()
                if line in (b"\r\n", b""):
                    break
                closing = closing or line.lower() == b"connection: close\r\n"
            if closing:  # the server's limit of requests per connection
                reader.close()
                sock.close()
                sock = None
    finally:
        if sock is not None:
            reader.close()
            sock.close()


def rss_mb():
    """Return this process's resident memory, in MB (the app runs in this process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0


class LogCapture(logging.Handler):
    """Keeps every record netatmo_stdlib logs, for tests to read."""

    def __init__(self):
        logging.Handler.__init__(self, logging.DEBUG)
        self.setFormatter(netatmo_stdlib.LogFormatter("%(message)s"))  # as main() logs
        self.lines = []
        self.lock_ = threading.Lock()

    def emit(self, record):
        with self.lock_:
            self.lines.append(self.format(record))

    def text(self):
        """Return everything logged so far, one line per record."""
        with self.lock_:
            return "\n".join(self.lines)


class Response(object):
    """What a browser sees of one answer."""

    def __init__(self, response, url):
        self.url = url
        self.status = response.status
        self.headers = response.msg
        self.body = response.read()

    @property
    def text(self):
        return self.body.decode("utf-8")

    @property
    def location(self):
        return self.headers.get("Location")

    def json(self):
        import json
        return json.loads(self.text)


class Browser(object):
    """A small browser: keeps cookies per host, as browsers do, and follows redirects."""

    def __init__(self):
        self.cookies = {}   # host -> {name: value}
        self.set_cookies = []  # every Set-Cookie header received, as sent
        self.history = []   # every Response received, in order

    def request(self, method, url, headers=None, body=None):
        """Send one request with this browser's cookies; return the Response."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "https":  # the test certificate is the only one trusted
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=30,
                context=ssl.create_default_context(cafile=TLS_CERT))
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        target = parts.path + ("?" + parts.query if parts.query else "")
        headers = dict(headers or {})
        jar = self.cookies.setdefault(parts.hostname, {})
        if jar and "Cookie" not in headers:
            headers["Cookie"] = "; ".join("%s=%s" % kv for kv in jar.items())
        try:
            connection.request(method, target or "/", body=body, headers=headers)
            response = Response(connection.getresponse(), url)
        finally:
            connection.close()
        self.history.append(response)
        for header in response.headers.get_all("Set-Cookie") or ():
            self.set_cookies.append(header)
            name, _, rest = header.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in header.lower() or not value:
                jar.pop(name, None)
            else:
                jar[name] = value
        return response

    def get(self, url, headers=None):
        return self.request("GET", url, headers)

    def post(self, url, headers=None, body=b""):
        return self.request("POST", url, headers, body)

    def follow(self, url, approve_as=None, limit=10):
        """GET url and follow redirects; approve at the fake as approve_as. Return hops."""
        hops = []
        method = "GET"
        for _ in range(limit):
            headers = {}
            if approve_as and "/oauth2/authorize" in url:
                headers["X-Fake-Approve"] = approve_as
            response = self.request(method, url, headers)
            hops.append(response)
            if response.status not in (301, 302, 303, 307, 308):
                return hops
            url = urllib.parse.urljoin(url, response.location)
        raise AssertionError("more than %d redirects" % limit)

    def cookie(self, host="127.0.0.1"):
        """Return this browser's netatmo_session cookie for host, or None."""
        return self.cookies.get(host, {}).get(netatmo_stdlib.COOKIE_NAME)


class AppTestCase(unittest.TestCase):
    """Starts the fake cloud and the app for each test; cleans both up."""

    scopes = netatmo_stdlib.DEFAULT_SCOPES
    cache_seconds = 0  # most tests watch what each page asks of Netatmo

    def setUp(self):
        self.fake = FakeNetatmo(CLIENT_ID, CLIENT_SECRET, recorded_times=True)
        self.fake.start()
        self.addCleanup(self.fake.stop)
        self.log = LogCapture()
        logger = logging.getLogger("netatmo_stdlib")
        logger.addHandler(self.log)
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        self.addCleanup(logger.removeHandler, self.log)
        self.server = self.start_app(**self.app_settings())
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def app_settings(self):
        """Return the settings of the app each test starts with, beyond the usual."""
        return {}

    def start_app(self, **settings):
        """Start netatmo_stdlib on a free port against the fake; return its server."""
        options = dict(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, host="127.0.0.1",
                       port=0, scopes=self.scopes, api_url=self.fake.url, timeout=5,
                       cache_seconds=self.cache_seconds)
        options.update(settings)
        server = netatmo_stdlib.Server(netatmo_stdlib.Config(**options))
        self.fake.register_redirect_uri(server.config.redirect_uri)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,))
        thread.start()

        def stop():
            server.shutdown()
            server.server_close()
            thread.join()
        self.addCleanup(stop)
        return server

    def login(self, user="alice", browser=None):
        """Log a new browser in as user; return (browser, hops)."""
        browser = browser or Browser()
        hops = browser.follow(self.url + "/login", approve_as=user)
        self.assertEqual(hops[-1].status, 200, hops[-1].text[:500])
        self.assertEqual(hops[-1].url, self.url + "/devices")
        return browser, hops

    def assertNoTraceback(self):
        self.assertNotIn("Traceback", self.log.text())
