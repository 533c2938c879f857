"""The token for scripts: --print-token, and a token file that several programs share.

Each run is a child process, as a cron job or a shell script is, against the fake
cloud, which kills the old access token and the old refresh token at every refresh,
as Netatmo does.
"""

import json
import os
import stat
import subprocess
import sys
import time
import urllib.request

import netatmo_stdlib
from tests.support import ROOT, Browser
from tests.test_terminal import OnceRun, TokenFileCase


class SharedFileTest(TokenFileCase):

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.rate_limits = None  # these tests count refreshes, not calls

    def browser_login(self, *args):
        status, out, err = TokenFileCase.browser_login(self, *args)
        self.assertEqual(status, 0, err)

    def refreshes(self):
        return len(self.fake.token_requests("refresh_token"))

    def test_runs_with_a_good_saved_token_do_not_refresh(self):
        self.browser_login()
        before = self.saved()
        for _ in range(5):
            status, out, err = OnceRun(self, "--token-file", self.path, "--json",
                                       "--no-browser").finish()
            self.assertEqual(status, 0, err)
            self.assertEqual(len(json.loads(out)["devices"]), 73)
        print("\nshared file: 5 runs on a good saved token: %d calls to the token endpoint"
              % self.refreshes())
        self.assertEqual(self.refreshes(), 0)
        self.assertEqual(self.saved(), before)
        # Each run made only its three device calls.
        self.assertEqual(len(self.fake.requests_to("/api/homesdata")), 1 + 5)

    def test_ten_runs_started_together_on_an_expired_token_refresh_once(self):
        self.browser_login()
        self.expire_saved()
        self.fake.latency = self.fake.token_latency = 0.3  # 300 ms from Netatmo
        runs = [OnceRun(self, "--token-file", self.path, "--json", "--no-browser")
                for _ in range(10)]
        results = [run.finish() for run in runs]
        print("\nshared file: 10 runs started together on an expired token: exit statuses "
              "%s; %d refresh(es) reached the fake; refresh tokens presented twice: %d"
              % (sorted(r[0] for r in results), self.refreshes(), self.fake.refresh_reuse))
        for status, out, err in results:
            self.assertEqual(status, 0, err)
            self.assertEqual(len(json.loads(out)["devices"]), 73)
        self.assertEqual(self.refreshes(), 1)
        self.assertEqual(self.fake.refresh_reuse, 0)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertIn(self.saved()["refresh_token"], self.fake.refresh_tokens)  # the last

    def test_the_web_server_and_a_cron_job_share_one_login(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)  # the owner's address, printed at start
        self.fake.expire_access_tokens()  # three hours later, the cron job runs
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(self.refreshes(), 1)
        # The browser's next page: its pair died with the cron job's refresh, and the
        # server takes the live one from the file instead of logging the person out.
        response = browser.get(url + "/devices")
        self.assertEqual(response.status, 200)
        self.assertIn("73 devices", response.text)
        self.assertEqual(len(self.fake.requests_to("/oauth2/authorize")), 1)  # no new login
        self.assertEqual(self.refreshes(), 1)
        self.assertEqual(self.fake.refresh_reuse, 0)
        self.assertIn("took the pair another program refreshed", self.log.text())

    def test_the_web_server_takes_a_newer_pair_from_the_file_before_refreshing(self):
        server = self.start_app(token_file=self.path)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + server.login_path(), approve_as="alice")[-1]
                         .status, 200)  # the owner's address, printed at start
        self.expire_saved()
        status, _, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(browser.post(url + "/refresh").status, 303)  # Renew the token
        self.assertEqual(self.refreshes(), 1)  # the cron job's: Renew took it from the file
        self.assertEqual(browser.get(url + "/devices.json").status, 200)

    def test_print_token_on_a_good_saved_token_prints_it_and_calls_nothing(self):
        self.browser_login()
        calls = len(self.fake.requests)
        run = OnceRun(self, "--token-file", self.path, "--no-browser", mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, self.saved()["access_token"] + "\n")
        self.assertEqual(len(self.fake.requests), calls)

    def test_print_token_on_an_expired_token_refreshes_once_and_the_token_works(self):
        self.browser_login()
        self.expire_saved()
        run = OnceRun(self, "--token-file", self.path, "--no-browser", mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertEqual(self.refreshes(), 1)
        token = out.strip()
        self.assertEqual(token, self.saved()["access_token"])
        self.assertEqual(len(out.splitlines()), 1)
        request = urllib.request.Request(self.fake.url + "/api/getstationsdata",
                                         headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(request, timeout=10) as answer:
            self.assertEqual(answer.status, 200)

    def test_print_token_as_json_never_shows_the_refresh_token(self):
        self.browser_login()
        run = OnceRun(self, "--token-file", self.path, "--no-browser", "--json",
                      mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        answer = json.loads(out)
        self.assertEqual(set(answer), {"access_token", "expires_at", "scope"})
        self.assertEqual(answer["access_token"], self.saved()["access_token"])
        self.assertEqual(answer["expires_at"], int(self.saved()["expires_at"]))
        self.assertEqual(answer["scope"], self.saved()["scope"])
        self.assertNotIn(self.saved()["refresh_token"].split("|")[1], out)

    def test_print_token_without_a_saved_login(self):
        run = OnceRun(self, "--token-file", self.path, "--no-browser", mode="--print-token")
        status, out, err = run.finish()
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no saved login", err)
        # Without --token-file: a login in the browser, then the token, and no device call.
        run = OnceRun(self, mode="--print-token")
        hops = Browser().follow(run.wait_for_login_url(), approve_as="alice")
        self.assertIn("The terminal has your access token", hops[-1].text)
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertIn(out.strip(), self.fake.access_tokens)
        self.assertEqual(self.fake.requests_to("/api/homesdata"), [])

    def test_a_lock_left_by_a_killed_process_does_not_block_the_next_run(self):
        self.browser_login()
        self.expire_saved()
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; sys.path.insert(0, %r); "
             "import netatmo_stdlib; netatmo_stdlib.FileLock(%r, 1).__enter__(); "
             "print('held', flush=True); time.sleep(120)" % (ROOT, self.path + ".lock")],
            stdout=subprocess.PIPE, universal_newlines=True)
        self.addCleanup(holder.wait)
        self.assertEqual(holder.stdout.readline(), "held\n")
        holder.kill()  # dies holding the lock
        holder.stdout.close()
        started = time.time()
        status, _, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual(status, 0, err)
        self.assertLess(time.time() - started, 10)
        self.assertEqual(self.refreshes(), 1)

    def test_the_lock_is_not_held_across_a_device_fetch(self):
        self.browser_login()
        self.fake.latency = 2.0  # the device calls take a while
        run = OnceRun(self, "--token-file", self.path, "--no-browser")
        deadline = time.time() + 10
        while not self.fake.requests_to("/api/homesdata")[1:] and time.time() < deadline:
            time.sleep(0.01)  # a readiness check: the run's device calls have begun
        started = time.time()
        with netatmo_stdlib.FileLock(self.path + ".lock", 1):
            self.assertLess(time.time() - started, 0.5)
        self.assertEqual(run.finish()[0], 0)
