"""make test-browser: a person's use of the app in headless Chromium (Debian's `chromium`).

Browsers enforce what Python clients do not: the Origin of a form's POST, which the
Referrer-Policy decides, SameSite cookies and the Content-Security-Policy. So these
tests click the pages' own buttons with the mouse, through the DevTools protocol
(tests/chromium.py), and read what reached the fake cloud. The fake is reached as
`localhost` and the app as `127.0.0.1`, two different sites, so the return from
Netatmo to /authenticate is a cross-site navigation, as with the real Netatmo: a
SameSite=Strict cookie would not come back with it. The screenshot is decoded to
check that the page's own style was applied: a policy that blocked it would leave
the buttons grey, not blue.
"""

import copy
import json
import os
import shutil
import struct
import tempfile
import unittest
import urllib.parse
import zlib

import netatmo_stdlib
from tests.chromium import CHROMIUM, Chromium
from tests.support import AppTestCase, HERE

OUTPUT = os.path.join(HERE, "output")
BUTTON_BLUE = (0x00, 0x66, 0xcc)  # .button and button: background #06c
API = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")


def png_pixels(path):
    """Return (width, height, rows of (r, g, b) tuples) of an 8-bit RGB(A) PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat = 8, b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        chunk = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6) and chunk[12] == 0, "unusual PNG"
        elif kind == b"IDAT":
            idat += chunk
        position += 12 + length
    size = 4 if color == 6 else 3
    raw, stride = zlib.decompress(idat), width * size
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:
                                                          (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG filter of this row
            left = line[i - size] if i >= size else 0
            up, corner = previous[i], previous[i - size] if i >= size else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else
                                      up if pb <= pc else corner)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, size)])
        previous = line
    return width, height, rows


@unittest.skipIf(CHROMIUM is None, "chromium is not installed (apt-get install chromium)")
class BrowserTest(AppTestCase):

    cache_seconds = 30

    def app_settings(self):
        # Another site than the app's 127.0.0.1: the way back from Netatmo is cross-site.
        return {"api_url": self.fake.url.replace("127.0.0.1", "localhost")}

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake_site = self.server.config.api_url
        self.chromium = Chromium()
        self.addCleanup(self.chromium.close)
        os.makedirs(OUTPUT, exist_ok=True)
        self.seen = {}     # page title -> the labels of its buttons and links
        self.clicked = set()  # (page title, label)

    def title(self):
        return self.chromium.evaluate("document.title")

    def look(self):
        """Note the buttons and links of the page shown; return its title."""
        title = self.title()
        self.seen.setdefault(title, set()).update(self.chromium.clickable())
        return title

    def click(self, label, then_path):
        """Click a button or link of the page shown, as a person does; return the new URL."""
        self.clicked.add((self.look(), label))
        url = self.chromium.click(label, then_path)
        self.look()
        return url

    def api_calls(self):
        return sum(len(self.fake.requests_to(path)) for path in API)

    def refreshes(self):
        return len(self.fake.token_requests("refresh_token"))

    def log_in(self):
        """From the page shown, click through Netatmo's consent page to the devices."""
        self.chromium.select("select[name=user]", "alice")
        return self.click("Yes, I accept", "/devices")

    def assertLoggedOut(self):
        """/devices.json, opened in this browser, answers 401; the server holds no session."""
        url = self.url + "/devices.json"
        self.chromium.open(url)
        self.assertEqual(self.chromium.status(url), 401)
        self.assertEqual(json.loads(self.chromium.text())["error"], "not_authenticated")
        self.assertEqual(self.server.sessions.sessions, {})

    def test_every_button_of_every_page_does_what_it_says(self):
        chromium = self.chromium
        chromium.open(self.url + "/")
        # The home page, logged out: its one button leads to Netatmo's consent page.
        self.assertTrue(self.click("Log in with Netatmo", "/oauth2/authorize")
                        .startswith(self.fake_site))
        self.click("No, I refuse", "/authenticate")
        self.assertIn("You declined", chromium.text())
        self.click("Try again", "/oauth2/authorize")
        self.log_in()
        self.assertIn("73 devices", chromium.text())
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 1)

        # Fetch again now: the list is cached for 30 s, yet a new fetch reaches Netatmo.
        calls = self.api_calls()
        self.click("Fetch again now", "/devices")
        self.assertEqual(self.api_calls(), calls + 3)
        self.assertIn("Fetched just now from Netatmo.", chromium.text())
        # Renew the token now: exactly one refresh; the list is kept.
        self.assertEqual(self.refreshes(), 0)
        self.click("Renew the token now", "/devices")
        self.assertEqual(self.refreshes(), 1)
        self.assertRegex(chromium.text(), r"Renewed at \d\d:\d\d UTC; valid until "
                                          r"\d\d:\d\d UTC\.")
        self.assertEqual(self.api_calls(), calls + 3)
        # Home, and the buttons of the home page when logged in.
        self.click("Home", "/")
        self.assertIn("You are logged in", chromium.text())
        self.click("Show my devices", "/devices")
        self.click("Home", "/")
        self.click("Renew the token now", "/devices")
        self.assertEqual(self.refreshes(), 2)
        self.click("Home", "/")
        self.click("Log out", "/")
        self.assertIn("Log in with Netatmo", chromium.text())
        self.assertIn("Logged out of this browser. Its tokens are forgotten.", chromium.text())
        self.assertLoggedOut()

        # Log out from the device page too.
        chromium.open(self.url + "/")
        self.click("Log in with Netatmo", "/oauth2/authorize")
        self.log_in()
        self.click("Log out", "/")
        self.assertLoggedOut()

        # The error pages' buttons lead on.
        chromium.open(self.url + "/authenticate?code=stale&state=stale")
        self.assertIn("This login link is not valid", chromium.text())
        self.click("Log in again", "/oauth2/authorize")
        chromium.open(self.url + "/nowhere")
        self.click("Back to the start", "/")

        missed = sorted((title, label) for title, labels in self.seen.items()
                        for label in labels if (title, label) not in self.clicked)
        self.assertEqual(missed, [])
        self.assertNoTraceback()

    def test_a_refusal_without_state_asks_the_person_and_each_button_works(self):
        self.fake.refuse_without_state = True  # Netatmo may leave the state out
        chromium = self.chromium
        chromium.open(self.url + "/")
        self.click("Log in with Netatmo", "/oauth2/authorize")
        self.click("No, I refuse", "/authenticate")
        self.assertIn("cannot tell it from a link on another site", chromium.text())
        self.click("Try again", "/oauth2/authorize")  # a new login, at Netatmo again
        self.click("No, I refuse", "/authenticate")
        self.click("Cancel this login", "/authenticate")
        self.assertEqual(self.title(), "Login cancelled")
        self.click("Back to the start", "/")
        self.assertIn("Log in with Netatmo", chromium.text())
        self.assertEqual(self.fake.token_requests(), [])
        for title in ("You declined", "Login cancelled"):
            self.assertEqual(self.seen[title], {label for t, label in self.clicked
                                                if t == title})

    def test_a_login_the_token_file_cannot_keep_says_so_and_leads_on(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        path = os.path.join(folder, "tokens.json")
        server = self.start_app(token_file=path, api_url=self.fake_site)
        server.config.token_file.lock_wait = 0.3
        url = "http://127.0.0.1:%d" % server.server_address[1]
        self.fake.register_redirect_uri(server.config.redirect_uri)
        with netatmo_stdlib.FileLock(path + ".lock", 1):  # another program holds it
            self.chromium.open(url + server.login_path())
            self.chromium.select("select[name=user]", "alice")
            self.click("Yes, I accept", "/authenticate")
            self.assertEqual(self.title(), "Another program is renewing this login")
        self.click("Show my devices", "/devices")
        self.assertIn("73 devices", self.chromium.text())
        self.assertFalse(os.path.exists(path))

    def test_a_form_on_another_site_cannot_log_a_person_out(self):
        self.chromium.open(self.url + "/")
        self.click("Log in with Netatmo", "/oauth2/authorize")
        self.log_in()
        attack = "%s/_fake/form?%s" % (self.fake_site, urllib.parse.urlencode(
            {"action": self.url + "/logout", "label": "Win a prize"}))
        self.chromium.open(attack)
        self.chromium.click("Win a prize", "/logout")
        self.assertEqual(self.chromium.status(self.url + "/logout"), 403)
        self.assertIn("Request from another site refused", self.chromium.text())
        self.assertEqual(len(self.server.sessions.sessions), 1)
        self.chromium.open(self.url + "/devices.json")
        self.assertEqual(self.chromium.status(self.url + "/devices.json"), 200)

    def test_login_in_chromium_ends_on_the_device_list(self):
        self.fake.auto_approve = "alice"  # the fake approves without a person...
        self.fake.approve_from_page = True  # ...from a page of its own site, as Netatmo
        self.chromium.open(self.url + "/login")
        url = self.chromium.wait_for_load(0, "/devices")
        self.assertEqual(url, self.url + "/devices")
        dom = self.chromium.evaluate("document.documentElement.outerHTML")
        for name in ("Your Netatmo devices", "73 devices", "MyStation", "Villa",
                     "Écocompteur"):
            self.assertIn(name, dom)
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 1)
        self.assertIn('"GET /authenticate" 303', self.log.text())

    def test_the_pages_own_style_applies(self):
        screenshot = os.path.join(OUTPUT, "devices.png")
        if os.path.exists(screenshot):
            os.remove(screenshot)
        self.fake.auto_approve = "alice"
        self.chromium.open(self.url + "/login")
        self.chromium.wait_for_load(0, "/devices")
        self.chromium.screenshot(screenshot)
        width, height, rows = png_pixels(screenshot)
        blue = sum(1 for row in rows for pixel in row if pixel == BUTTON_BLUE)
        print("\nbrowser: screenshot %s, %dx%d, %d pixels of the buttons' blue"
              % (os.path.relpath(screenshot), width, height, blue))
        self.assertGreater(blue, 1000)

    def test_the_device_page_with_status_on_a_phone_and_on_a_desktop(self):
        self.fake.auto_approve = "alice"
        self.chromium.open(self.url + "/login")
        self.chromium.wait_for_load(0, "/devices")
        shown = ("[...document.querySelectorAll('th')].filter(th => "
                 "getComputedStyle(th).display !== 'none').map(th => th.textContent)")
        sizes = {"phone": (390, 844, True), "desktop": (1280, 900, False)}
        seen = {}
        for name, (width, height, mobile) in sizes.items():
            self.chromium.viewport(width, height, mobile)
            self.chromium.open(self.url + "/devices")
            seen[name] = self.chromium.evaluate(shown)
            path = os.path.join(OUTPUT, "devices-%s.png" % name)
            self.chromium.screenshot(path)
            width_seen, _, _ = png_pixels(path)
            self.assertEqual(width_seen, width)
        self.assertEqual(seen["phone"], ["Name", "Status", "Readings"])
        self.assertEqual(seen["desktop"], ["Name", "Status", "Readings", "Product", "Last seen",
                                           "Battery", "Signal", "Room", "Home", "Type", "Id"])
        text = self.chromium.text()
        self.assertIn("4 offline", text)
        self.assertIn("4 batteries low or very low", text)

    # The widest content of the page against the viewport; the table's own scrolling
    # box; the battery cells whose "14 %" would wrap; where Renew stands.
    MEASURE = """(() => {
        const box = document.querySelector('.scroll'), table = box.querySelector('table');
        let widest = 0, what = '';
        for (const e of document.querySelectorAll('body *')) {
            const r = e.getBoundingClientRect();
            if (r.width && r.right > widest) { widest = r.right; what = e.tagName; }
        }
        const wrapped = [...document.querySelectorAll('td')].filter(td =>
            /[0-9]\\s%\\)$/.test(td.textContent) && getComputedStyle(td).display !== 'none'
        ).filter(td => {
            const range = document.createRange(), text = td.firstChild;
            range.setStart(text, text.textContent.lastIndexOf('(') + 1);
            range.setEnd(text, text.textContent.length);
            return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size > 1;
        }).length;
        const renew = [...document.querySelectorAll('button')].find(b =>
            b.textContent === 'Renew the token now');
        return JSON.stringify({viewport: innerWidth, page: document.documentElement.scrollWidth,
            widest: Math.ceil(widest), what: what, table: table.scrollWidth,
            box: box.clientWidth, wrapped: wrapped, batteries: [...document.querySelectorAll(
                'td')].filter(td => /\\)$/.test(td.textContent)).length,
            renew_above: !!(renew.compareDocumentPosition(table)
                            & Node.DOCUMENT_POSITION_FOLLOWING)});
    })()"""

    def test_the_device_page_fits_at_1280_and_390_px(self):
        long_names = copy.deepcopy(self.fake.users["bob"])  # bob's, and one without a space
        long_names["/api/homesdata"]["homes"][0]["modules"][4]["name"] = "Bob" * 30
        self.fake.users["bob-long"] = long_names
        for user in ("alice", "bob", "bob-long"):
            self.fake.auto_approve = user
            self.chromium.open(self.url + "/login")
            self.chromium.wait_for_load(0, "/devices")
            for width, height, mobile in ((1280, 900, False), (390, 844, True)):
                with self.subTest(user=user, width=width):
                    self.chromium.viewport(width, height, mobile)
                    self.chromium.open(self.url + "/devices")
                    seen = json.loads(self.chromium.evaluate(self.MEASURE))
                    print("\nbrowser: %s at %d px: widest content %d px (%s), table %d px in "
                          "a box of %d" % (user, width, seen["widest"], seen["what"],
                                           seen["table"], seen["box"]))
                    self.assertLessEqual(seen["page"], width)  # no sideways scrolling
                    self.assertLessEqual(seen["widest"], width)
                    self.assertLessEqual(seen["table"], seen["box"])  # nor in the table
                    self.assertEqual(seen["wrapped"], 0)
                    self.assertTrue(seen["renew_above"])
            if user == "alice":
                self.assertGreater(seen["batteries"], 10)

    def test_the_private_page_of_open_leads_the_browser_to_the_owners_login(self):
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        saved = os.environ.get("HOME")
        self.addCleanup(lambda: os.environ.__setitem__("HOME", saved) if saved
                        else os.environ.pop("HOME", None))
        os.environ["HOME"] = home  # where --open writes its page
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        server = self.start_app(token_file=os.path.join(folder, "tokens.json"),
                                api_url=self.fake_site)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        self.fake.register_redirect_uri(server.config.redirect_uri)
        redirect = netatmo_stdlib.redirect_page(url + server.login_path())
        self.fake.auto_approve = "alice"
        since = self.chromium.mark()
        self.chromium.send("Page.navigate", {"url": "file://" + redirect}, session=True)
        self.chromium.wait_for_load(since, "/devices")  # through the consent, as the owner
        self.assertIn("Your Netatmo devices", self.chromium.text())
        with open(os.path.join(folder, "tokens.json")) as f:  # the owner's login: saved
            self.assertIn(json.load(f)["refresh_token"], self.fake.refresh_tokens)
