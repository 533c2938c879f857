"""make demo, make demo-once: netatmo_stdlib against the fake Netatmo cloud, no account.

    python3 tests/demo.py                          # the web app: open http://127.0.0.1:8000/
    python3 tests/demo.py --once                   # a terminal run: open the address printed
    python3 tests/demo.py --once --json --token-file tests/output/netatmo-demo.json
    python3 tests/demo.py --print-token --token-file tests/output/netatmo-demo.json --no-browser

Any flag of netatmo_stdlib.py goes through, but --port and --fake-port, which this
script reads (make passes DEMO_PORT and FAKE_PORT). The fake cloud runs in this
process on 127.0.0.1; the program runs in a child process, as a person runs it. If
either cannot start, both stop, and the exit status is not 0. The fake keeps the
tokens it issued in tests/output/demo-tokens.json, so that a login saved with
--token-file by one command still works in the next.

The demo users, at the fake's consent page: alice (a real account of 73 devices, with
their status), bob (hostile names, a home whose gateway does not answer), carol (no
home, unreachable stations), dave (139 modules in two homes), big500 and big5000
(generated accounts, for the benchmark).
"""

import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tests.fake_netatmo import FakeHandler, FakeNetatmo, FakeServer  # noqa: E402

PROGRAM = os.path.join(os.path.dirname(HERE), "netatmo_stdlib.py")
CLIENT_ID, CLIENT_SECRET = "demo-client", "demo-secret"


def option(argv, name, default):
    """Remove `name VALUE` from argv; return VALUE, else default."""
    if name in argv:
        i = argv.index(name)
        value = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i:i + 2]
        return value
    return default


def main(argv):
    """Start the fake, run the program against it; return the program's exit status."""
    port = option(argv, "--port", os.environ.get("DEMO_PORT", "8000"))
    fake_port = option(argv, "--fake-port", os.environ.get("FAKE_PORT", "8001"))
    if not (port.isdigit() and fake_port.isdigit()):
        print("demo: --port and --fake-port (DEMO_PORT, FAKE_PORT) are port numbers",
              file=sys.stderr)
        return 2
    fake = FakeNetatmo(CLIENT_ID, CLIENT_SECRET)
    os.makedirs(os.path.join(HERE, "output"), exist_ok=True)
    fake.keep_tokens_in(os.path.join(HERE, "output", "demo-tokens.json"))
    fake.register_redirect_uri("http://127.0.0.1:%s/authenticate" % port)
    try:
        fake.server = FakeServer(("127.0.0.1", int(fake_port)), FakeHandler)
    except (OSError, OverflowError) as e:
        print("demo: the fake Netatmo cannot listen on 127.0.0.1 port %s (%s): pass another "
              "port, as FAKE_PORT=8011 to make or --fake-port 8011"
              % (fake_port, getattr(e, "strerror", None) or e), file=sys.stderr)
        return 2
    fake.server.fake = fake
    fake.thread = threading.Thread(target=fake.server.serve_forever, args=(0.1,), daemon=True)
    fake.thread.start()
    environment = dict(os.environ, NETATMO_CLIENT_ID=CLIENT_ID,
                       NETATMO_CLIENT_SECRET=CLIENT_SECRET, NETATMO_API_URL=fake.url,
                       NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    try:
        child = subprocess.Popen([sys.executable, PROGRAM, "--port", port] + argv,
                                 env=environment, stderr=subprocess.PIPE)
        copier = threading.Thread(target=copy_stderr, args=(child.stderr, port))
        copier.start()
        try:
            status = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the program too: let it end
            status = child.wait()
        copier.join()
    finally:
        fake.stop()
    return status


def copy_stderr(stream, port):
    """Copy the program's stderr as it comes; its line of a port in use becomes the
    demo's, which says how to pass another port to make."""
    in_use = ("netatmo_stdlib: error: cannot listen on 127.0.0.1 port %s: " % port).encode()
    for line in iter(stream.readline, b""):
        if line.startswith(in_use):
            reason = line[len(in_use):].split(b";", 1)[0].decode("utf-8", "replace")
            line = ("demo: the program cannot listen on 127.0.0.1 port %s (%s): pass another "
                    "port, as DEMO_PORT=8010 to make or --port 8010\n" % (port, reason)).encode()
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
