"""A first day on a server (issue 25): cron runs never fight over a port, every wait says
what it waits for, every dead end names the next step, the README's commands work as
pasted, the pages of a terminal run belong to it, and problems show at any width.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys

from tests.support import Browser
from tests.test_cli import run
from tests.test_terminal import OnceRun, TokenFileCase


def held_port(test):
    """Return a port that another program listens on, until the test ends."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    test.addCleanup(holder.close)
    return str(holder.getsockname()[1])


class NoPortTest(TokenFileCase):
    """1. A terminal run binds only when it needs a browser login."""

    def test_runs_on_a_good_saved_login_bind_nothing(self):
        self.browser_login()
        port = held_port(self)  # the web app's, say
        for mode, extra in (("--once", ()), ("--once", ("--json",)), ("--print-token", ()),
                            ("--print-token", ("--json",))):
            with self.subTest(mode=mode, extra=extra):
                status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                           "--port", port, *extra, mode=mode).finish()
                self.assertEqual(status, 0, err)
                self.assertTrue(out)
        self.expire_saved()  # a refresh binds nothing either
        runs = [OnceRun(self, "--token-file", self.path, "--no-browser", "--port", port,
                        "--json") for _ in range(5)]  # and five at once, as cron starts them
        for each in runs:
            status, out, err = each.finish()
            self.assertEqual(status, 0, err)
            self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertEqual(len(self.fake.token_requests("refresh_token")), 1)

    def test_a_run_that_needs_a_browser_binds_and_says_when_the_port_is_taken(self):
        port = held_port(self)
        status, out, err = OnceRun(self, "--token-file", self.path, "--port", port).finish()
        self.assertEqual((status, out), (2, ""), err)
        self.assertIn("cannot listen on 127.0.0.1 port %s" % port, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
