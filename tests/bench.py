"""make bench: how fast netatmo_stdlib is on this machine, against the fake cloud.

The fake cloud and the app each run in a process of their own on loopback; this
process is the clients. Each row says its conditions. Timings are noisy on shared
machines: rows whose target is a ratio measure both sides in the same run. The exit
status is non-zero only if something failed, never because a target was missed.
"""

import http.client
import io
import json
import os
import queue
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
TLS_CERT = os.path.join(HERE, "tls", "cert.pem")
CLIENT_ID, CLIENT_SECRET = "bench-client", "bench-secret"


def free_port():
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    """Return the resident memory of a process, in MB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS for %d" % pid)


def cpu_seconds(pid):
    """Return the CPU time (user + system) a process has used so far, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


def percentile(values, p):
    """Return the p-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


class Child(object):
    """A child process that prints its address on its first line of output."""

    def __init__(self, args, env=None):
        environment = dict(os.environ, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        environment.update(env or {})
        self.started = time.time()
        self.process = subprocess.Popen([sys.executable] + args, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                        universal_newlines=True, env=environment)
        self.first_line = self.process.stdout.readline()

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        self.process.stdout.close()


class Fake(Child):
    """The fake Netatmo cloud, in its own process."""

    def __init__(self, *options):
        self.port = free_port()
        FAKE_PORT.append(self.port)
        Child.__init__(self, [os.path.join(HERE, "fake_netatmo.py"), "--port", str(self.port),
                              "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
                              "--no-rate-limits"] + list(options))
        self.tls = "--tls" in options
        self.url = "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.port)

    def control(self, path, **form):
        """POST to one of the fake's /_fake/ endpoints; return its JSON answer."""
        connection = connect(self.url, 30)
        connection.request("POST" if form else "GET", "/_fake/" + path,
                           urllib.parse.urlencode(form),
                           {"Content-Type": "application/x-www-form-urlencoded"})
        answer = json.loads(connection.getresponse().read().decode())
        connection.close()
        return answer

    def api_calls(self):
        return self.control("stats")["api_calls"]

    def stats(self):
        return self.control("stats")


class App(Child):
    """netatmo_stdlib in its own process, pointed at the fake."""

    def __init__(self, fake, cache_seconds, api_url=None):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        fake.control("register", redirect_uri=self.url + "/authenticate")
        Child.__init__(self, [PROGRAM, "--port", str(self.port), "--api-url",
                              api_url or fake.url, "--cache-seconds", str(cache_seconds)],
                       {"NETATMO_CLIENT_ID": CLIENT_ID, "NETATMO_CLIENT_SECRET": CLIENT_SECRET,
                        "SSL_CERT_FILE": TLS_CERT})
        if "open http://" not in self.first_line:
            raise RuntimeError("the app did not start: %r" % self.first_line)

    def rss(self):
        return rss_mb(self.process.pid)


class Client(object):
    """One browser: a cookie and a kept-alive connection per host, from its address."""

    def __init__(self, address=None):
        self.cookie = None
        self.connections = {}
        self.address = address  # a loopback address of its own, as another machine's

    def request(self, method, url, headers=None):
        """Send a request; return (status, headers, body)."""
        parts = urllib.parse.urlsplit(url)
        connection = self.connections.get(parts.netloc)
        if connection is None:
            connection = self.connections[parts.netloc] = connect(url, 60, self.address)
        headers = dict(headers or {})
        if self.cookie and parts.port not in FAKE_PORT:
            headers["Cookie"] = self.cookie
        connection.request(method, parts.path + ("?" + parts.query if parts.query else ""),
                           headers=headers)
        response = connection.getresponse()
        body = response.read()
        for set_cookie in response.msg.get_all("Set-Cookie") or ():
            if "Max-Age=0" not in set_cookie:  # the login cookie, then the session's
                self.cookie = set_cookie.split(";", 1)[0]
        return response.status, response, body

    def get(self, url):
        """GET url; return (status, body as text)."""
        status, _, body = self.request("GET", url)
        return status, body.decode("utf-8", "replace")

    def login(self, app, user, to_devices=False):
        """Log in as user: /login, the fake's authorize, /authenticate (then /devices)."""
        status, response, _ = self.request("GET", app.url + "/login")
        assert status == 302, status
        status, response, _ = self.request("GET", response.getheader("Location"),
                                           {"X-Fake-Approve": user})
        assert status == 302, status
        status, response, _ = self.request("GET", response.getheader("Location"))
        assert status == 303, status
        if to_devices:
            status, _, _ = self.request("GET", app.url + "/devices")
            assert status == 200, status

    def close(self):
        for connection in self.connections.values():
            connection.close()


def connect(url, timeout, address=None):
    """Return an HTTP(S) connection to the host of url; HTTPS trusts the test certificate."""
    parts = urllib.parse.urlsplit(url)
    source = (address, 0) if address else None
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                           context=ssl.create_default_context(cafile=TLS_CERT),
                                           source_address=source)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=source)


class FarAway(object):
    """A TCP relay that puts a network with round trip `rtt` between clients and a server.

    Each new connection first waits one round trip, as TCP's handshake does; then each
    chunk of bytes arrives half a round trip after it was sent, in either direction.
    """

    def __init__(self, port, rtt):
        self.port, self.rtt = port, rtt
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = "https://127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        """Accept connections until closed; relay each in threads of its own."""
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self.relay, args=(near,), daemon=True).start()

    def relay(self, near):
        """Connect to the server one round trip later; then carry bytes both ways."""
        time.sleep(self.rtt)  # the SYN and the SYN-ACK
        far = socket.create_connection(("127.0.0.1", self.port))
        for sock in (near, far):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for source, sink in ((near, far), (far, near)):
            chunks = queue.Queue()
            threading.Thread(target=self.read, args=(source, chunks), daemon=True).start()
            threading.Thread(target=self.deliver, args=(chunks, sink), daemon=True).start()

    def read(self, source, chunks):
        """Queue what source sends, stamped with when it is due at the other end."""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.time() + self.rtt / 2, data))
            if not data:
                return

    def deliver(self, chunks, sink):
        """Send each queued chunk to sink when it is due; pass the end on too."""
        while True:
            due, data = chunks.get()
            time.sleep(max(0, due - time.time()))  # the way there
            try:
                if data:
                    sink.sendall(data)
                else:
                    sink.shutdown(socket.SHUT_WR)
                    return
            except OSError:
                return

    def close(self):
        """Stop accepting connections."""
        self.listener.close()


FAKE_PORT = []
ROWS = []


def row(name, conditions, result, target, met):
    """Print one row as soon as it is measured, and keep it for the table."""
    ROWS.append((name, conditions, result, target, met))
    print("  %-18s %s" % (name, result), flush=True)


def timed(function, count):
    """Call function count times; return the durations in ms."""
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        function()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


# A program that imports only http.server and serves: the floor of idle memory.
FLOOR = ("import http.server, sys; server = http.server.HTTPServer(('127.0.0.1', "
         "int(sys.argv[-1])), http.server.BaseHTTPRequestHandler); print('up', flush=True); "
         "server.serve_forever()")


def ways_to_run(cache):
    """Return [(name, argv, folder to run in)]: the floor, and the program both ways.

    `-m` from the file's folder loads the bytecode Python keeps (here in cache, as
    PYTHONPYCACHEPREFIX); `python3 netatmo_stdlib.py` compiles the source at each run.
    """
    return [("http.server floor", ["-c", FLOOR, "--port"], None),
            ("python3 netatmo_stdlib.py", [PROGRAM], None),
            ("python3 -m netatmo_stdlib", ["-m", "netatmo_stdlib"], ROOT)]


def bytecode_environment(cache):
    """Return the environment in which Python keeps its bytecode, in cache."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPYCACHEPREFIX=cache, NETATMO_CLIENT_ID=CLIENT_ID,
               NETATMO_CLIENT_SECRET=CLIENT_SECRET)
    return env


def bench_start():
    cache = tempfile.mkdtemp(prefix="bench-pycache-")
    try:
        env = bytecode_environment(cache)
        subprocess.check_call([sys.executable, "-c", "import netatmo_stdlib"], cwd=ROOT,
                              env=env)  # the bytecode -m loads, kept as a server's is
        results = {}
        for name, argv, folder in ways_to_run(cache):
            times, memory = [], []
            for _ in range(10):
                port = free_port()
                started = time.perf_counter()
                child = subprocess.Popen([sys.executable] + argv + ["--port", str(port)],
                                         cwd=folder, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, universal_newlines=True)
                child.stdout.readline()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("GET", "/healthz")
                assert connection.getresponse().status in (200, 501)  # the floor: 501
                times.append((time.perf_counter() - started) * 1000)
                connection.close()
                memory.append(rss_mb(child.pid))
                child.terminate()
                child.wait(10)
                child.stdout.close()
            results[name] = statistics.median(times), statistics.median(memory)
        floor = results["http.server floor"][1]
        row("start", "spawn to first answer from /healthz, p50 of 10 runs, each way, beside "
            "a program that imports only http.server", "; ".join(
                "%s %.0f ms" % (name, t) for name, (t, _) in results.items()), "report", None)
        row("idle memory", "RSS after start and one /healthz, p50 of 10, and above the floor",
            "; ".join("%s %.1f MB%s" % (name, m, "" if m == floor else " (+%.1f)" % (m - floor))
                      for name, (_, m) in results.items()),
            "plain <= floor + 8.5 MB", results["python3 netatmo_stdlib.py"][1] - floor <= 8.5)
        bench_cron(cache, env)
    finally:
        subprocess.call(["rm", "-rf", cache])


def bench_cron(cache, env):
    """--print-token on a good saved token, both ways: a cron job's whole run."""
    folder = tempfile.mkdtemp(prefix="bench-cron-")
    try:
        path = os.path.join(folder, "tokens.json")
        with open(path, "w") as f:
            json.dump({"access_token": "a" * 57, "refresh_token": "r" * 57,
                       "expires_at": time.time() + 3 * 3600, "scope": ["read_station"]}, f)
        os.chmod(path, 0o600)
        results = []
        # The peak of the run itself (VmHWM, read as it exits): the rusage of a child
        # counts the parent's pages it was forked with.
        peak = ("import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write([line "
                "for line in open('/proc/self/status') if line.startswith('VmHWM')][0])); ")
        for name, run, where in (
                ("python3 netatmo_stdlib.py", "sys.argv[0] = %r; runpy.run_path(%r, "
                 "run_name='__main__')" % (PROGRAM, PROGRAM), None),
                ("python3 -m netatmo_stdlib", "runpy.run_module('netatmo_stdlib', "
                 "run_name='__main__', alter_sys=True)", ROOT)):
            times, peaks = [], []
            for _ in range(10):
                started = time.perf_counter()
                child = subprocess.run([sys.executable, "-c", peak + run, "--print-token",
                                        "--token-file", path, "--no-browser"], cwd=where,
                                       env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, universal_newlines=True)
                assert child.returncode == 0, child.stderr
                times.append((time.perf_counter() - started) * 1000)
                peaks.append(int(child.stderr.split()[-2]) / 1024.0)
            results.append("%s %.0f ms, peak %.1f MB" % (name, statistics.median(times),
                                                           statistics.median(peaks)))
        row("cron run", "--print-token on a good saved token (no call), p50 of 10 runs",
            "; ".join(results), "report", None)
    finally:
        subprocess.call(["rm", "-rf", folder])


def bench_code_lines():
    """The program's lines of code: no blank line, comment or docstring (tokenize)."""
    with open(PROGRAM, encoding="utf-8") as f:
        source = f.read()
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING)]
    lines = set()
    for i, token in enumerate(tokens):
        if token.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
            continue
        before = tokens[i - 1].type if i else tokenize.NEWLINE
        after = tokens[i + 1].type if i + 1 < len(tokens) else tokenize.NEWLINE
        if token.type == tokenize.STRING and after == tokenize.NEWLINE and before in (
                tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            continue  # a string alone as a statement: a docstring
        lines.update(range(token.start[0], token.end[0] + 1))
    row("code lines", "lines of netatmo_stdlib.py that hold code (tokenize): no blank line, "
        "comment or docstring; of %d in all" % source.count("\n"), "%d" % len(lines),
        "report", None)


def bench_page_latency(fake):
    latency = 100.0
    fake.control("latency", seconds=latency / 1000)
    app = App(fake, cache_seconds=0)
    try:
        client = Client()
        client.login(app, "dave")
        first = timed(lambda: client.request("GET", app.url + "/devices"), 1)[0]
        durations = timed(lambda: client.request("GET", app.url + "/devices"), 50)
        p50, p95 = statistics.median(durations), percentile(durations, 95)
        row("page latency", "/devices, dave (139 devices in 2 homes: 3 endpoints and 2 "
            "homestatus calls), L = 100 ms on every API call, cache off: the first page "
            "after the login (it learns the home ids), then 50 requests",
            "first %.0f ms = %.2f L; then p50 %.0f ms = %.2f L, p95 %.0f ms = %.2f L"
            % (first, first / latency, p50, p50 / latency, p95, p95 / latency),
            "first <= 2.2 L; p50 <= 1.2 L, p95 <= 1.5 L",
            first <= 2.2 * latency and p50 <= 1.2 * latency and p95 <= 1.5 * latency)
        client.close()
    finally:
        fake.control("latency", seconds=0)
        app.stop()


def bench_big_account(fake):
    app = App(fake, cache_seconds=0)
    results = {}
    try:
        for user, count in (("big500", 500), ("big5000", 5000)):
            client = Client()
            client.login(app, user)
            client.request("GET", app.url + "/devices")
            results[count] = statistics.median(
                timed(lambda: client.request("GET", app.url + "/devices"), 20))
            client.close()
    finally:
        app.stop()
    per_device = (results[5000] - results[500]) / 4500 * 1000
    row("big account", "/devices with 500 and 5,000 devices with their status (1 and 5 "
        "homes: 4 and 8 calls a page), L = 0, cache off, 20 requests",
        "p50 %.0f ms (500), %.0f ms (5,000); %.0f us per device; 10x devices = %.1fx time"
        % (results[500], results[5000], per_device, results[5000] / results[500]),
        "p50 <= 150 ms at 5,000; linear", results[5000] <= 150)


def bench_cached_page(fake):
    app = App(fake, cache_seconds=30)
    try:
        client = Client()
        client.login(app, "alice", to_devices=True)
        before = fake.api_calls()
        durations = timed(lambda: client.request("GET", app.url + "/devices"), 50)
        calls = fake.api_calls() - before
        p50 = statistics.median(durations)
        row("cached page", "/devices again within the 30 s cache window, alice, 50 requests",
            "p50 %.1f ms, %d calls reached the fake" % (p50, calls),
            "p50 <= 5 ms, 0 calls", p50 <= 5 and calls == 0)
        client.close()
    finally:
        app.stop()


def load(app, clients, path, seconds, fake):
    """Have each client GET path for `seconds`; return (req/s, app and fake CPU ms/req)."""
    count = [0] * len(clients)
    errors = []
    start = threading.Barrier(len(clients) + 1)
    stop_at = [0.0]

    def run(i, client):
        start.wait()
        while time.time() < stop_at[0]:
            status, _, _ = client.request("GET", app.url + path)
            if status != 200:
                errors.append(status)
            count[i] += 1

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.time() + seconds
    cpu = [cpu_seconds(app.process.pid), cpu_seconds(fake.process.pid)]
    began = time.time()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.time() - began
    if errors:
        raise RuntimeError("%d errors under load on %s: %s" % (len(errors), path,
                                                               sorted(set(errors))))
    done = sum(count)
    return (done / elapsed, (cpu_seconds(app.process.pid) - cpu[0]) * 1000 / done,
            (cpu_seconds(fake.process.pid) - cpu[1]) * 1000 / done)


def token_for(fake, user):
    """Log user in at the fake directly, as an app would; return (connection, token)."""
    redirect_uri = "http://127.0.0.1:9/authenticate"
    fake.control("register", redirect_uri=redirect_uri)
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=30)
    connection.request("GET", "/oauth2/authorize?" + urllib.parse.urlencode({
        "client_id": CLIENT_ID, "redirect_uri": redirect_uri, "state": "bench",
        "scope": "read_station read_thermostat read_homecoach", "response_type": "code"}),
        headers={"X-Fake-Approve": user})
    response = connection.getresponse()
    response.read()
    query = urllib.parse.urlsplit(response.getheader("Location")).query
    connection.request("POST", "/oauth2/token", urllib.parse.urlencode({
        "grant_type": "authorization_code", "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "redirect_uri": redirect_uri,
        "code": urllib.parse.parse_qs(query)["code"][0]}),
        {"Content-Type": "application/x-www-form-urlencoded"})
    return connection, json.loads(connection.getresponse().read().decode())["access_token"]


def bare_calls_cpu(fake, user, pages):
    """Return the CPU ms that a page's API calls cost with nothing around them.

    Bare http.client on one kept-alive connection, and json.loads of each answer:
    the least any client must spend, the floor under the app's own CPU per page.
    The calls are those of alice's page: the three endpoints and her one home's
    homestatus.
    """
    connection, access_token = token_for(fake, user)
    started = time.process_time()
    for _ in range(pages):
        for path in ("homesdata", "getstationsdata", "gethomecoachsdata",
                     "homestatus?home_id=91763b24c43d3e344f424e8b"):
            connection.request("GET", "/api/" + path,
                               headers={"Authorization": "Bearer " + access_token})
            json.loads(connection.getresponse().read().decode("utf-8"))
    connection.close()
    return (time.process_time() - started) * 1000 / pages


def bench_throughput(fake):
    floor = bare_calls_cpu(fake, "alice", 300)
    fake.control("latency", seconds=0.02)
    app = App(fake, cache_seconds=0)
    try:
        clients = [Client() for _ in range(32)]
        for client in clients:
            client.login(app, "alice")
        devices, app_cpu, fake_cpu = load(app, clients, "/devices.json", 5, fake)
        health, health_cpu, _ = load(app, clients, "/healthz", 5, fake)
        for client in clients:
            client.close()
        row("throughput", "32 clients, each its own session and connection, /devices.json "
            "(alice: 4 calls a page), L = 20 ms, cache off, 5 s; then /healthz the same "
            "way; CPU per request of the app and of the fake cloud (all on the same "
            "cores); the floor: the CPU of the page's 4 calls alone (bare http.client, "
            "kept alive, json.loads)",
            "%.0f req/s; /healthz %.0f req/s (ratio %.2f); CPU per request: app %.1f ms "
            "(/healthz %.2f ms), fake %.1f ms; floor %.1f ms: app = %.1f x floor"
            % (devices, health, devices / health, app_cpu, health_cpu, fake_cpu, floor,
               app_cpu / floor),
            "app CPU per page <= 3 x floor", app_cpu <= 3 * floor)
    finally:
        fake.control("latency", seconds=0)
        app.stop()


def bench_keep_alive(fake):
    app = App(fake, cache_seconds=30)
    try:
        client = Client()
        client.login(app, "alice", to_devices=True)
        connection = client.connections["127.0.0.1:%d" % app.port]
        sockets = set()
        for _ in range(20):
            status, response, _ = client.request("GET", app.url + "/devices")
            assert status == 200 and response.getheader("Content-Length")
            sockets.add(id(connection.sock))
        row("keep-alive", "20 page loads of /devices on one HTTP/1.1 connection",
            "%d TCP connection(s) used" % len(sockets), "1", len(sockets) == 1)
        client.close()
    finally:
        app.stop()


def bench_netatmo_connections(fake):
    app = App(fake, cache_seconds=0)
    try:
        before = fake.stats()
        client = Client()
        client.login(app, "alice", to_devices=True)
        for _ in range(20):
            status, _, _ = client.request("GET", app.url + "/devices")
            assert status == 200, status
        client.close()
        after = fake.stats()  # its own connection counts too: hence the - 2 below
        calls = after["api_calls"] - before["api_calls"] + 1  # + the token request
        opened = after["connections"] - before["connections"] - 2  # - the browser's too
        row("Netatmo connections", "a login, then 20 loads of /devices, cache off: "
            "connections opened to the fake; each is a TCP and a TLS handshake with Netatmo",
            "%d calls over %d connections" % (calls, opened), "report", None)
    finally:
        app.stop()


def bench_far_netatmo(fake):
    rtt = 100.0
    far_fake = Fake("--tls")
    far = FarAway(far_fake.port, rtt / 1000)
    FAKE_PORT.append(int(far.url.rsplit(":", 1)[1]))
    app = App(far_fake, cache_seconds=0, api_url=far.url)
    try:
        client = Client()
        client.login(app, "alice")
        first = timed(lambda: client.request("GET", app.url + "/devices"), 1)[0]
        durations = timed(lambda: client.request("GET", app.url + "/devices"), 20)
        row("far Netatmo", "/devices over HTTPS with a round trip of R = 100 ms to the fake "
            "(a relay adds it, and one R to each TCP handshake), L = 0, cache off: the "
            "first page after the login, then 20 pages; a new connection per call would "
            "cost 3 R a page (TCP, TLS 1.3, request)",
            "first %.0f ms = %.1f R; then p50 %.0f ms = %.2f R"
            % (first, first / rtt, statistics.median(durations),
               statistics.median(durations) / rtt), "report", None)
        client.close()
    finally:
        app.stop()
        far.close()
        far_fake.stop()


def bench_login(fake):
    app = App(fake, cache_seconds=30)
    try:
        def one_login():
            client = Client()
            client.request("GET", app.url + "/")
            client.login(app, "alice", to_devices=True)
            client.close()
        durations = timed(one_login, 50)
        row("login", "the 5 hops: /, /login, authorize, /authenticate, /devices (alice), "
            "L = 0, new connections, 50 logins",
            "p50 %.0f ms" % statistics.median(durations), "report", None)
    finally:
        app.stop()


def bench_memory_per_session(fake):
    app = App(fake, cache_seconds=30)
    try:
        warm = Client()
        warm.login(app, "carol")
        warm.close()
        before = app.rss()
        count, threads = 10000, 8

        def run():
            for _ in range(count // threads):
                client = Client()
                client.login(app, "carol")
                client.close()
        workers = [threading.Thread(target=run) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        growth_kb = (app.rss() - before) * 1024
        row("memory per session", "RSS growth over 10,000 completed logins (/login, "
            "authorize, /authenticate) / 10,000",
            "%.2f KB per session (%.1f MB in all)" % (growth_kb / count, growth_kb / 1024),
            "<= 4 KB", growth_kb / count <= 4)
    finally:
        app.stop()


def bench_sessions_with_pages(fake):
    app = App(fake, cache_seconds=2)
    try:
        warm = Client()
        warm.login(app, "alice", to_devices=True)
        before = app.rss()
        batches, size, threads = 4, 150, 4

        def run():
            for _ in range(size // threads):
                client = Client()
                client.login(app, "alice", to_devices=True)
                client.close()
        for _ in range(batches):  # each batch's lists outlive the cache before the next
            workers = [threading.Thread(target=run) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            time.sleep(3)  # past --cache-seconds and the sweep that follows it
        warm.close()
        warm.connections = {}  # its kept connection was closed while idle
        warm.request("GET", app.url + "/")  # a request: the sweep runs
        count = batches * size
        growth_kb = (app.rss() - before) * 1024
        row("sessions with a page", "RSS growth over %d logins in %d batches 3 s apart, each "
            "login with a page of alice's 73 devices, --cache-seconds 2 / %d"
            % (count, batches, count), "%.1f KB per session (%.1f MB in all)"
            % (growth_kb / count, growth_kb / 1024), "report", None)
    finally:
        app.stop()


def main(argv):
    """Run every row (or those whose name has a word of argv); print the table; return 1
    if anything failed."""
    fake = Fake()
    print("netatmo_stdlib benchmark, Python %s, %d cores" % (sys.version.split()[0],
                                                           os.cpu_count()), flush=True)
    try:
        for bench in (bench_code_lines, bench_start, bench_page_latency, bench_big_account, bench_cached_page,
                      bench_throughput, bench_keep_alive, bench_netatmo_connections,
                      bench_far_netatmo, bench_login, bench_memory_per_session,
                      bench_sessions_with_pages):
            if argv and not any(word in bench.__name__ for word in argv):
                continue
            bench(*([] if bench in (bench_start, bench_code_lines) else [fake]))
    except Exception as error:
        print("bench: FAILED: %s: %s" % (type(error).__name__, error))
        return 1
    finally:
        fake.stop()
    print()
    print("| row | conditions | result | target | met |")
    print("|---|---|---|---|---|")
    for name, conditions, result, target, met in ROWS:
        print("| %s | %s | %s | %s | %s |" % (name, conditions, result, target,
                                              {True: "yes", False: "no", None: "-"}[met]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
