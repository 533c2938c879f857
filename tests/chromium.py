"""Headless Chromium driven as a person drives it: the DevTools protocol over a pipe.

Chromium started with --remote-debugging-pipe reads commands on its file descriptor
3 and writes answers and events on 4, each a JSON object ended by a NUL byte. A
click is what a mouse does: Input.dispatchMouseEvent at the middle of the element,
pressed, then released. The browser then applies its own rules to what follows
(the Origin of a form's POST, SameSite cookies, the Content-Security-Policy), which
is the point: nothing here sets a header by hand.

Standard library only; Linux (the descriptors are handed over by a small Python
trampoline, since subprocess cannot place a pipe at a given descriptor number).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--mute-audio", "--remote-debugging-pipe"]
# Put the two ends of the pipes at descriptors 3 and 4, then become Chromium.
TRAMPOLINE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
              "os.execv(sys.argv[3], sys.argv[3:])")
# Every element a person can click on our pages: buttons, and links.
CLICKABLE = "button, a[href]"


class BrowserError(Exception):
    """Chromium answered a command with an error, or did not answer in time."""


class Chromium(object):
    """One headless Chromium with one tab, and the events it has sent."""

    def __init__(self, timeout=30, width=1000, height=700, mobile=False):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_chromium, self.commands = os.pipe()
        self.answers, from_chromium = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(to_chromium), str(from_chromium),
             CHROMIUM] + FLAGS + ["--user-data-dir=" + self.profile, "about:blank"],
            pass_fds=(to_chromium, from_chromium), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chromium)
        os.close(from_chromium)
        self.lock = threading.Condition()
        self.results = {}   # command id -> its answer
        self.events = []    # every event, in order
        self.next_id = 0
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(domain + ".enable", session=True)
        self.viewport(width, height, mobile)

    def viewport(self, width, height, mobile=False):
        """Show pages at this size, as a phone (mobile) or a desktop browser does."""
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1,
                   "mobile": mobile}, session=True)

    # -- the protocol --

    def read(self):
        """Read answers and events from Chromium until it closes its end."""
        buffered = b""
        while True:
            try:
                chunk = os.read(self.answers, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self.lock:
                    self.results[None] = "closed"
                    self.lock.notify_all()
                return
            buffered += chunk
            *messages, buffered = buffered.split(b"\0")
            with self.lock:
                for raw in messages:
                    message = json.loads(raw.decode("utf-8"))
                    if "id" in message:
                        self.results[message["id"]] = message
                    else:
                        self.events.append(message)
                self.lock.notify_all()

    def send(self, method, params=None, session=False):
        """Send one command; return its result, or raise BrowserError."""
        with self.lock:
            self.next_id += 1
            number = self.next_id
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        data = json.dumps(message).encode("utf-8") + b"\0"
        while data:
            data = data[os.write(self.commands, data):]
        with self.lock:
            if not self.lock.wait_for(lambda: number in self.results or None in self.results,
                                      self.timeout):
                raise BrowserError("no answer to %s within %g s" % (method, self.timeout))
            answer = self.results.pop(number, None)
        if answer is None:
            raise BrowserError("Chromium closed while %s was pending" % method)
        if "error" in answer:
            raise BrowserError("%s: %s" % (method, answer["error"]))
        return answer.get("result", {})

    def wait_for_event(self, matches, since, what):
        """Return the first event from index `since` on that matches; wait for it."""
        deadline = time.time() + self.timeout
        with self.lock:
            while True:
                for index in range(since, len(self.events)):
                    if matches(self.events[index]):
                        return index, self.events[index]
                left = deadline - time.time()
                if left <= 0 or None in self.results:
                    raise BrowserError("no %s within %g s" % (what, self.timeout))
                self.lock.wait(left)

    def mark(self):
        """Return the index of the next event: what a wait starts from."""
        with self.lock:
            return len(self.events)

    # -- what a person does --

    def open(self, url):
        """Type url in the address bar and wait until the page it ends on has loaded."""
        since = self.mark()
        self.send("Page.navigate", {"url": url}, session=True)
        return self.wait_for_load(since)

    def wait_for_load(self, since, path=None):
        """Wait for a page to load after event `since` (at path, if given); return its URL.

        A page that moves on by itself before its load event (a script that navigates)
        is passed over: the wait goes on to the page where the browser stays.
        """
        while True:
            index, _ = self.wait_for_event(
                lambda e: e.get("method") == "Page.loadEventFired", since, "page load")
            url = self.url()
            if path is None or urllib.parse.urlsplit(url).path == path:
                return url
            since = index + 1

    def click(self, label, then_path=None):
        """Click the button or link labelled `label` with the mouse; wait for the next page.

        Return the URL of the page the click leads to.
        """
        x, y = self.evaluate(
            "(() => { const e = [...document.querySelectorAll(%s)].find("
            "e => e.textContent.trim() === %s); if (!e) return null; "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.left + r.width / 2, r.top + r.height / 2]; })()"
            % (json.dumps(CLICKABLE), json.dumps(label))) or (None, None)
        if x is None:
            raise BrowserError("no button or link %r on %s; there are %s"
                               % (label, self.url(), self.clickable()))
        since = self.mark()
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y},
                  session=True)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y,
                                                   "button": "left", "clickCount": 1},
                      session=True)
        return self.wait_for_load(since, then_path)

    def clickable(self):
        """Return the labels of every button and link on the page, in order."""
        return self.evaluate("[...document.querySelectorAll(%s)].map(e => e.textContent.trim())"
                             % json.dumps(CLICKABLE))

    def select(self, css, value):
        """Choose value in a <select>, as a person picks an option."""
        self.evaluate("(() => { const s = document.querySelector(%s); s.value = %s; "
                      "s.dispatchEvent(new Event('change')); })()"
                      % (json.dumps(css), json.dumps(value)))

    def text(self):
        """Return the text the page shows."""
        return self.evaluate("document.body ? document.body.innerText : ''")

    def url(self):
        """Return the address of the page shown."""
        return self.evaluate("location.href")

    def status(self, url):
        """Return the HTTP status the browser got for the last load of url."""
        found = None
        with self.lock:
            for event in self.events:
                if event.get("method") == "Network.responseReceived" and \
                        event["params"]["response"]["url"] == url:
                    found = event["params"]["response"]["status"]
        return found

    def evaluate(self, expression):
        """Return the value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError("%s: %s" % (expression[:80], result["exceptionDetails"]))
        return result["result"].get("value")

    def screenshot(self, path):
        """Save the page, as shown, to a PNG file."""
        import base64
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        """Quit Chromium and forget its profile."""
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        self.reader.join(10)
        os.close(self.answers)
        shutil.rmtree(self.profile, ignore_errors=True)
