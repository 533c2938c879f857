"""The map holds (issue 27): every real run touches only what the head of Part 2 names.

Each mode runs as a person runs it, in a child process, under an audit hook
(tests/audited.py) that records every connect, bind, open, rename, remove, chmod,
child process, exec, compile and unpickling. An event the map does not allow fails
the test. Allowed by name: what the import system does (opening and compiling the
modules under the interpreter's own prefix), the files mimetypes reads when
http.server is imported, and collections.namedtuple's compile. OpenSSL reads the
certificate store, --certfile and --keyfile without any audit event: the map names
them, and this test cannot see them.

A second test holds the limits table and the classes' attributes together.
"""

import glob
import json
import mimetypes
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import unittest

import netatmo_stdlib
from tests.fake_netatmo import TLS_CERT, TLS_KEY
from tests.support import Browser, CLIENT_ID, CLIENT_SECRET, HERE, ROOT
from tests.test_paste import PasteRun
from tests.test_terminal import BrowserStub, TokenFileCase

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")
PREFIXES = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


class Audited(object):
    """netatmo_stdlib in a child process under the recording hook."""

    def __init__(self, test, args, stdin=subprocess.DEVNULL, **env):
        self.test = test
        self.record = os.path.join(test.folder, "events-%d.json" % len(test.runs))
        test.runs.append(self)
        environment = dict(os.environ, NETATMO_CLIENT_ID=CLIENT_ID, PYTHONIOENCODING="utf-8",
                           NETATMO_CLIENT_SECRET=CLIENT_SECRET)
        environment.update(env)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "audited.py"), self.record, PROGRAM,
             "--api-url", test.fake.url] + list(args), stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, encoding="utf-8",
            env=environment)
        test.addCleanup(lambda: self.process.poll() is None and self.process.kill())

    def address(self, stream="stderr"):
        """Read lines until one says what to open; return that address."""
        while True:
            line = getattr(self.process, stream).readline()
            self.test.assertTrue(line, "the program ended before printing an address")
            found = re.search(r"(?:^|open |log in from )(https?://\S+)", line.strip())
            if found:
                return found.group(1)

    def finish(self, interrupt=False):
        """End the run (Ctrl-C for the web app); return its exit status."""
        if interrupt:
            self.process.send_signal(signal.SIGINT)
        if self.process.stdin is not None and self.process.stdin.closed:
            self.process.stdin = None
        self.process.communicate(timeout=60)
        return self.process.returncode

    def events(self):
        with open(self.record) as f:
            return json.load(f)


@unittest.skipIf(sys.version_info < (3, 8), "audit hooks came with Python 3.8")
class MapTest(TokenFileCase):
    """Every mode, every page and button: nothing outside the map."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.folder = os.path.dirname(self.path)
        self.runs = []
        self.home = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", self.home]))
        self.secret_file = os.path.join(self.folder, "secret")
        with open(self.secret_file, "w") as f:
            f.write(CLIENT_SECRET + "\n")
        os.chmod(self.secret_file, 0o600)
        self.proxy = None
        self.browsers = []

    def web_app(self):
        """The web app with --token-file and --trace: the owner's login, every page and
        button, a stranger's login and a refusal."""
        run = Audited(self, ["--port", "0", "--token-file", self.path, "--trace"])
        home = run.address("stdout")
        self.fake.register_redirect_uri(run.process.stdout.readline().split()[-1])
        owners = run.address("stdout")
        origin = owners.split("/login")[0]
        browser = Browser()
        self.assertEqual(browser.follow(owners, approve_as="alice")[-1].status, 200)
        for path in ("/", "/devices", "/devices.json", "/healthz", "/nowhere"):
            browser.get(origin + path)
        for path in ("/devices", "/refresh", "/logout"):
            self.assertEqual(browser.post(origin + path, headers={"Origin": origin}).status,
                             303)
        Browser().follow(home + "login", approve_as="carol")
        Browser().follow(home + "login", approve_as="deny")
        self.assertEqual(run.finish(interrupt=True), 0)

    def terminal_runs(self):
        """--once in the browser, --once --json and --print-token from the saved login,
        a refresh under the lock, and --paste; a client-secret file for one."""
        os.remove(self.path)  # the web app's owner saved a login: this one starts anew
        run = Audited(self, ["--once", "--port", "0", "--token-file", self.path,
                             "--client-secret-file", self.secret_file],
                      NETATMO_CLIENT_SECRET="")
        url = run.address()
        self.fake.register_redirect_uri(run.process.stderr.readline().split()[-1])
        Browser().follow(url, approve_as="alice")
        self.assertEqual(run.finish(), 0)
        for args in (["--once", "--json"], ["--print-token"], ["--print-token", "--json"]):
            self.expire_saved()  # each refreshes under the lock, and rewrites the file
            run = Audited(self, args + ["--token-file", self.path, "--no-browser"])
            self.assertEqual(run.finish(), 0)
        os.remove(self.path)
        redirect_uri = "http://127.0.0.1:9/authenticate"
        self.fake.register_redirect_uri(redirect_uri)
        run = Audited(self, ["--once", "--paste", "--redirect-uri", redirect_uri,
                             "--token-file", self.path], stdin=subprocess.PIPE)
        consent = run.address()
        ended = Browser().get(consent, headers={"X-Fake-Approve": "alice"}).location
        run.process.stdin.write(ended + "\n")
        run.process.stdin.close()
        self.assertEqual(run.finish(), 0)

    def open_and_https(self):
        """--open with a stub browser, and the web app over https."""
        stub = BrowserStub(self)
        self.browser_command = stub.command()
        run = Audited(self, ["--once", "--port", "0", "--open"], BROWSER=self.browser_command,
                      HOME=self.home)
        url = run.address()
        self.fake.register_redirect_uri(run.process.stderr.readline().split()[-1])
        stub.opened()
        Browser().follow(url, approve_as="alice")
        self.assertEqual(run.finish(), 0)
        run = Audited(self, ["--port", "0", "--certfile", TLS_CERT, "--keyfile", TLS_KEY])
        home = run.address("stdout")
        self.fake.register_redirect_uri(run.process.stdout.readline().split()[-1])
        self.assertEqual(Browser().follow(home + "login", approve_as="alice")[-1].status, 200)
        self.assertEqual(run.finish(interrupt=True), 0)

    def outside_the_map(self, events):
        """Return the events the map does not allow, as text."""
        fake = ("127.0.0.1", self.fake.server.server_address[1])
        token_files = {self.path, self.path + ".lock", self.folder, self.secret_file}
        strays = []
        namedtuple_compiled = False
        for event, args in events:
            allowed = False
            if event == "socket.connect":
                allowed = args[1] in (repr(fake), repr(list(fake)))
            elif event == "socket.bind":
                allowed = args[1].startswith("('127.0.0.1', ")  # the configured host
            elif event == "open":
                path = args[0]
                allowed = (isinstance(path, int) or self.ours(path, token_files)
                           or path in mimetypes.knownfiles)
            elif event == "os.rename":
                allowed = self.sibling(args[0]) and args[1] == self.path
            elif event in ("os.remove", "os.rmdir", "os.mkdir"):
                allowed = self.sibling(args[0]) or self.open_page(args[0])
            elif event in ("subprocess.Popen", "os.posix_spawn"):
                allowed = "dict(argv=sys.argv" in args[1]  # BROWSER, the stub (--open)
            elif event == "compile":
                namedtuple = args[1].startswith(("lambda _cls", "def __new__(_cls"))
                namedtuple_compiled = namedtuple_compiled or namedtuple
                allowed = self.module(args[0]) or namedtuple
            elif event == "exec":
                allowed = self.module(args[0]) or (args[0] == "<string>" and namedtuple_compiled)
            if not allowed:
                strays.append("%s %s" % (event, args))
        return strays

    def ours(self, path, token_files):
        """Return True for a file the map names, or a module the import system opens."""
        return (path in token_files or self.sibling(path) or self.open_page(path)
                or self.module(path))

    def sibling(self, path):
        """The temporary sibling a save writes, then renames over the token file."""
        return os.path.dirname(path) == self.folder and os.path.basename(path).startswith(
            ".netatmo-tokens-") and path.endswith(".tmp")

    def open_page(self, path):
        """--open's private page, and its folder, in the home folder (shutil.rmtree removes
        the page by its name in the folder)."""
        return path == "login.html" or os.path.dirname(path.rstrip("/")) == self.home or \
            os.path.dirname(os.path.dirname(path)) == self.home

    def module(self, path):
        """The interpreter's own files, the program itself, and the hook that runs it."""
        real = os.path.realpath(path) if isinstance(path, str) else ""
        return real.startswith(PREFIXES) or real in (os.path.realpath(PROGRAM), os.path.realpath(
            os.path.join(HERE, "audited.py"))) or path.startswith("<frozen ")

    def test_every_mode_touches_only_what_the_map_names(self):
        self.web_app()
        self.terminal_runs()
        self.open_and_https()
        seen = {}
        for run in self.runs:
            events = run.events()
            for event, _ in events:
                seen[event] = seen.get(event, 0) + 1
            self.assertEqual(self.outside_the_map(events), [], run.process.args[4:])
        print("\nthe map: %d runs under the audit hook, %s" % (len(self.runs), ", ".join(
            "%s %d" % kv for kv in sorted(seen.items()))))
        for needed in ("socket.connect", "socket.bind", "os.rename", "subprocess.Popen"):
            self.assertIn(needed, seen)  # the hook saw what the map allows


class LimitsTest(unittest.TestCase):
    """The limits table and the classes' attributes agree; each limit is written once."""

    def test_every_class_limit_is_its_attribute(self):
        rows = netatmo_stdlib.LIMITS
        self.assertEqual(len({name for name, _, _ in rows}), len(rows))
        for name, value, past in rows:
            with self.subTest(limit=name):
                self.assertTrue(past)
                if "." in name:
                    owner, attribute = name.split(".")
                    self.assertEqual(getattr(getattr(netatmo_stdlib, owner), attribute), value)

    def test_each_class_binds_its_limits_from_the_table_and_nothing_else_does(self):
        with open(PROGRAM, encoding="utf-8") as f:
            source = f.read()
        owner = None
        bound = []
        for line in source.splitlines():
            found = re.match(r"class (\w+)\(", line)
            if found:
                owner = found.group(1)
            for attribute, table_owner, table_attribute in re.findall(
                    r'^    (\w+) = LIMIT\["(\w+)\.(\w+)"\]', line):
                self.assertEqual((owner, attribute), (table_owner, table_attribute), line)
                bound.append("%s.%s" % (table_owner, table_attribute))
        self.assertEqual(sorted(bound), sorted(n for n, _, _ in netatmo_stdlib.LIMITS
                                               if "." in n))
        for name in netatmo_stdlib.LIMIT:  # and the others are read where they apply
            self.assertIn('LIMIT["%s"]' % name, source.split("LIMIT = dict(", 1)[1])
