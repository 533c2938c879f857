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
import tempfile

import netatmo_stdlib
from tests.support import Browser, CLIENT_ID, CLIENT_SECRET, ROOT
from tests.test_cli import run
from tests.test_newcomer import columns_of, free_port, shell_environment
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


class WaitsTest(TokenFileCase):
    """2. Every wait in a terminal mode says what it waits for, once, when it starts."""

    def test_a_held_lock_is_said_once_and_ctrl_c_there_is_one_line_and_130(self):
        self.browser_login()
        self.expire_saved()
        with netatmo_stdlib.FileLock(self.path + ".lock", 1):  # another program's
            status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                       mode="--print-token", lock_wait=0.5).finish()
            self.assertEqual((status, out), (6, ""), err)
            self.assertEqual(err.count("waiting up to 0.5 s for another program that holds "
                                       "%s.lock" % self.path), 1, err)
            run_ = OnceRun(self, "--token-file", self.path, "--no-browser",
                           mode="--print-token", lock_wait=30)
            waiting = run_.process.stderr.readline()  # the readiness signal: it waits
            self.assertIn("waiting up to 30 s for another program that holds", waiting)
            run_.process.send_signal(signal.SIGINT)
            status, out, err = run_.finish()
        self.assertEqual((status, out), (130, ""), err)
        self.assertEqual(err.strip().splitlines(), ["netatmo_stdlib: interrupted"])
        self.assertEqual(self.fake.token_requests("refresh_token"), [])

    def test_the_login_wait_names_the_likely_cause_of_an_error_page_at_netatmo(self):
        run_ = OnceRun(self, "--wait", "60", NETATMO_CLIENT_ID="a-wrong-id")
        first = run_.process.stderr.readline()
        self.assertIn("if Netatmo shows an error page instead of its login, the client id or "
                      "the redirect URI is the likely cause", first)
        url = re.search(r"open (\S+) in a browser", first).group(1)
        run_.process.stderr.readline()
        page = Browser().follow(url)[-1]  # the person opens it: Netatmo's error page
        self.assertIn("Unknown application", page.text)
        run_.process.send_signal(signal.SIGINT)
        status, _, err = run_.finish()
        self.assertEqual(status, 130)
        self.assertEqual(err.strip().splitlines(), ["netatmo_stdlib: interrupted"])
        run_ = OnceRun(self, "--wait", "1", NETATMO_CLIENT_ID="a-wrong-id")
        Browser().follow(run_.wait_for_login_url())
        status, _, err = run_.finish()
        self.assertEqual(status, 3)
        self.assertIn("the browser went to Netatmo but never came back: if Netatmo showed an "
                      "error page, check the client id and the redirect URI", err)


class DeadEndsTest(TokenFileCase):
    """3. Every dead end names the next step."""

    def test_a_dead_saved_login_with_no_browser_says_to_run_once_without_it(self):
        self.browser_login()
        self.expire_saved()
        with self.fake.lock:  # another program used its refresh token
            token = self.saved()["refresh_token"]
            self.fake.refresh_tokens.pop(token)
            self.fake.retired_refresh_tokens.add(token)
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (1, ""), err)
        self.assertIn("expired or was used elsewhere", err)
        self.assertIn("run once without --no-browser to log in again", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def make(self, target, **variables):
        ports = {"DEMO_PORT": str(free_port()), "FAKE_PORT": str(free_port())}
        ports.update(variables)
        return subprocess.run(["make", "-s", target] + ["%s=%s" % kv for kv in ports.items()],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60, stdin=subprocess.DEVNULL,
                              env=shell_environment()), ports

    def test_the_demo_gives_its_port_advice_only_for_a_port_in_use_and_once(self):
        done, _ = self.make("demo-once", ARGS="--token-file /nonexistent/folder/t.json")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("cannot write --token-file", done.stderr)
        self.assertNotIn("DEMO_PORT", done.stderr)  # not a port: no advice about one
        port = held_port(self)
        for target in ("demo", "demo-once"):
            with self.subTest(target=target):
                done, _ = self.make(target, DEMO_PORT=port)
                self.assertNotEqual(done.returncode, 0)
                said = [line for line in done.stderr.splitlines()
                        if not line.startswith("make")]
                self.assertEqual(len(said), 1, done.stderr)  # one line, one piece of advice
                self.assertIn("cannot listen on 127.0.0.1 port %s" % port, said[0])
                self.assertIn("pass another port, as DEMO_PORT=8010 to make", said[0])
                self.assertNotIn("--host", said[0])


def links_of(page):
    """Return the addresses a page links to or posts to."""
    return re.findall(r'(?:href|action)="([^"]*)"', page)


class TerminalPagesTest(TokenFileCase):
    """5. In --once, the web pages belong to this run."""

    def test_the_start_page_leads_to_no_403_and_an_ended_run_is_not_linked_back(self):
        run_ = OnceRun(self)
        url = run_.wait_for_login_url()
        origin = url.split("/login")[0]
        start = Browser().get(origin + "/")
        self.assertEqual(links_of(start.text), [])
        self.assertIn("Open the address it printed there", start.text)
        stale = Browser().get(origin + "/authenticate?code=x&state=y")  # the run goes on
        self.assertEqual(stale.status, 400)
        self.assertEqual(links_of(stale.text), [])
        self.assertIn("open the address printed in the terminal", stale.text)
        hops = Browser().follow(url, approve_as="deny")  # with the state: the run ends
        self.assertEqual(hops[-1].status, 403)
        self.assertEqual(links_of(hops[-1].text), [])
        self.assertIn("This run has ended: run the command again in the terminal", hops[-1].text)
        self.assertEqual(run_.finish()[0], 1)

    def test_a_refusal_without_state_and_its_cancel(self):
        self.fake.refuse_without_state = True
        run_ = OnceRun(self)
        url = run_.wait_for_login_url()
        origin = url.split("/login")[0]
        browser = Browser()
        asked = browser.follow(url, approve_as="deny")[-1]
        self.assertEqual(links_of(asked.text), ["/authenticate"])  # Cancel this login
        self.assertIn("To try again, open the address printed in the terminal", asked.text)
        cancelled = browser.post(origin + "/authenticate", headers={"Origin": origin})
        self.assertEqual(cancelled.status, 200)
        self.assertEqual(links_of(cancelled.text), [])
        self.assertIn("This run has ended", cancelled.text)
        self.assertEqual(run_.finish()[0], 1)


class ProblemsAtAnyWidthTest(TokenFileCase):
    """6. Problems show at any width from 60 columns up."""

    def test_alice_at_60_80_and_120_columns(self):
        self.browser_login()
        for width in (60, 80, 120):
            with self.subTest(width=width):
                status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                           COLUMNS=str(width)).finish()
                self.assertEqual(status, 0, err)
                lines = out.splitlines()
                self.assertEqual(len(lines), 74)
                self.assertTrue(all(columns_of(line) <= width for line in lines), lines)
                start = lines[0].index("STATUS")
                names = [line[:start].rstrip() for line in lines[1:]]
                self.assertEqual(len(set(names)), 73)  # no two rows show the same NAME
                statuses = [line[start:].split("  ")[0] for line in lines[1:]]
                self.assertEqual(sum(s.endswith(", battery low") for s in statuses), 4)
                bedrooms = [n for n in names if n.startswith("Bedr")]
                self.assertEqual(len(bedrooms), 2)
                self.assertIn("offline", statuses[names.index(
                    [n for n in bedrooms if "Coach" in n][0])])
                # The summary counts what needs a person, on stderr: stdout is the table.
                self.assertEqual(err, "netatmo_stdlib: 73 devices: 4 offline, 4 battery low "
                                      "or very low, 14 status unknown\n")
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   "--json").finish()
        self.assertEqual((status, err), (0, ""))  # --json: for a program, no summary

    def test_names_alike_at_both_ends_still_differ_when_cut(self):
        self.fake.users["yves"] = {
            "/api/homesdata": {"homes": [{"id": "y1", "name": "Yves", "modules": [
                {"id": "70:ee:50:00:00:0%d" % i, "type": "NACamDoorTag",
                 "name": "Kitchen sensor %d in the hall" % i} for i in (1, 2)]}]},
            "/api/getstationsdata": {"devices": []},
            "/api/gethomecoachsdata": {"devices": []},
            "/api/homestatus": {"y1": {"home": {"id": "y1", "modules": [
                {"id": "70:ee:50:00:00:0%d" % i, "reachable": False,
                 "battery_state": "very_low"} for i in (1, 2)]}}}}
        run_ = OnceRun(self, "--token-file", self.path)
        Browser().follow(run_.wait_for_login_url(), approve_as="yves")
        self.assertEqual(run_.finish()[0], 0)
        for width in (20, 40, 60):
            with self.subTest(width=width):
                status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                           COLUMNS=str(width)).finish()
                lines = out.splitlines()
                start = lines[0].index("STATUS")
                names = [line[:start].rstrip() for line in lines[1:3]]
                self.assertNotEqual(names[0], names[1], names)


def readme_section(title):
    """Return the README's section that starts with this heading."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return re.split(r"\n##+ ", f.read().split("\n" + title, 1)[1], 1)[0]


def program_commands(section):
    """Return the section's commands that run netatmo_stdlib.py, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #")[0].strip()
            if command.startswith("python3 netatmo_stdlib.py"):
                commands.append(" ".join(command.split()))
    return commands


class ReadmeCommandsTest(TokenFileCase):
    """4. The README's commands work as pasted, pointed at the fake cloud."""

    def run_as_pasted(self, command, home, **settings):
        """Run a README command in a newcomer's shell, against the fake; log in with a
        browser when it prints an address. Return (exit status, stdout, stderr)."""
        process = subprocess.Popen(
            command + " --api-url " + self.fake.url, shell=True, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            universal_newlines=True, encoding="utf-8",
            env=shell_environment(HOME=home, NETATMO_CLIENT_ID=CLIENT_ID,
                                  NETATMO_CLIENT_SECRET=CLIENT_SECRET, **settings))
        self.addCleanup(lambda: process.poll() is None and process.kill())
        if "--no-browser" not in command:  # a person opens the address printed
            line = process.stderr.readline()
            self.fake.register_redirect_uri(process.stderr.readline().split()[-1])
            address = re.search(r"open (\S+) in a browser", line).group(1)
            self.assertEqual(Browser().follow(address, approve_as="alice")[-1].status, 200)
        out, err = process.communicate(timeout=60)
        return process.returncode, out, err

    def test_scripts_and_cron_and_the_ssh_section(self):
        home = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", home]))
        commands = program_commands(readme_section("## Scripts and cron"))
        self.assertEqual(len(commands), 3, commands)  # the curl line names Netatmo itself
        first, unattended = commands[0], commands[1:]
        self.assertNotIn("--no-browser", first)
        for command in unattended:
            self.assertIn("--no-browser", command)  # no cron job waits for a browser
        port = str(free_port())
        for command in commands:
            with self.subTest(command=command):
                status, out, err = self.run_as_pasted(command, home, NETATMO_PORT=port)
                self.assertEqual(status, 0, err)
                self.assertTrue(out)
        ssh_section = readme_section("**On a headless host over SSH**").split("\n**", 1)[0]
        [ssh] = program_commands(ssh_section)
        self.assertEqual(ssh, "python3 netatmo_stdlib.py --once")
        status, out, err = self.run_as_pasted(ssh, home, NETATMO_PORT=port)
        self.assertEqual(status, 0, err)
        self.assertEqual(len(out.splitlines()), 74)
        block = readme_section("**On a headless host over SSH**").split("```sh\n", 1)[1]
        self.assertIn("open the address it prints", block.split("```", 1)[0])
