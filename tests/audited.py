"""Run netatmo_stdlib.py under an audit hook that records what it touches.

    python3 tests/audited.py RECORD netatmo_stdlib.py ARGS...

The hook (sys.addaudithook, Python 3.8 and later) keeps every event of the kinds
below; at exit they are written to RECORD as JSON, for tests/test_map.py to hold
against the map at the head of Part 2. Nothing the hook records can be changed by
the program: a hook cannot be removed once added.
"""

import atexit
import json
import runpy
import sys

EVENTS = ("socket.connect", "socket.bind", "open", "os.rename", "os.remove", "os.rmdir",
          "os.mkdir", "os.chmod", "subprocess.Popen", "os.exec", "os.posix_spawn",
          "os.spawn", "os.system", "os.fork", "os.startfile", "exec", "compile")
seen = []
recording = [True]


def hook(event, args):
    """Keep one event: its name and what it was about, as text."""
    if not recording[0] or not (event in EVENTS or event.startswith("pickle.")):
        return
    if event == "exec":  # a code object: where its source is
        args = (getattr(args[0], "co_filename", repr(args[0])),)
    elif event == "compile":  # (source, filename): the name, and how the source starts
        source = args[0]
        if isinstance(source, bytes):
            source = source.decode("utf-8", "replace")
        args = (args[1], source[:40] if isinstance(source, str) else type(source).__name__)
    seen.append([event, [a if isinstance(a, (int, float, str, type(None))) else repr(a)
                         for a in args]])


def write():
    """Stop recording, and write what was seen."""
    recording[0] = False
    with open(RECORD, "w") as f:
        json.dump(seen, f)


RECORD = sys.argv[1]
sys.argv = sys.argv[2:]
atexit.register(write)
sys.addaudithook(hook)
runpy.run_path(sys.argv[0], run_name="__main__")
