"""make test-browser: the whole flow in headless Chromium (Debian package `chromium`).

Browsers enforce what Python clients do not: SameSite cookies and the
Content-Security-Policy. The fake cloud is reached as `localhost` and the app as
`127.0.0.1`, two different sites, so the return from Netatmo to /authenticate is a
cross-site navigation, as with the real Netatmo: a SameSite=Strict cookie would not
come back with it. The screenshot is decoded to check that the page's own style was
applied: a policy that blocked it would leave the buttons grey, not blue.
"""

import os
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

from tests.support import AppTestCase, HERE

OUTPUT = os.path.join(HERE, "output")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BUTTON_BLUE = (0x00, 0x66, 0xcc)  # .button and button: background #06c


def chromium(*args):
    """Run headless Chromium with a fresh profile; return (exit status, stdout, stderr)."""
    profile = tempfile.mkdtemp()
    try:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--user-data-dir=" + profile,
             "--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw"]
            + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
            universal_newlines=True)
        return done.returncode, done.stdout, "\n".join(done.stderr.splitlines()[-8:])
    finally:
        shutil.rmtree(profile, ignore_errors=True)


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

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.auto_approve = "alice"  # the fake approves without a person...
        self.fake.approve_from_page = True  # ...from a page of its own site, as Netatmo
        port = self.fake.server.server_address[1]
        # Another site than the app's 127.0.0.1: the way back from Netatmo is cross-site.
        self.server.config.api_url = "http://localhost:%d" % port
        os.makedirs(OUTPUT, exist_ok=True)

    def test_login_in_chromium_ends_on_the_device_list(self):
        status, dom, said = chromium("--dump-dom", self.url + "/login")
        self.assertEqual(status, 0, said)
        for name in ("Your Netatmo devices", "73 devices", "MyStation", "Villa",
                     "Écocompteur"):
            self.assertIn(name, dom)
        self.assertEqual(len(self.fake.token_requests("authorization_code")), 1)
        self.assertIn('"GET /authenticate" 303', self.log.text())

    def test_the_pages_own_style_applies(self):
        screenshot = os.path.join(OUTPUT, "devices.png")
        if os.path.exists(screenshot):
            os.remove(screenshot)
        status, _, said = chromium("--screenshot=" + screenshot, "--window-size=1000,700",
                                   "--hide-scrollbars", self.url + "/login")
        self.assertTrue(os.path.exists(screenshot), "exit %d: %s" % (status, said))
        width, height, rows = png_pixels(screenshot)
        blue = sum(1 for row in rows for pixel in row if pixel == BUTTON_BLUE)
        print("\nbrowser: screenshot %s, %dx%d, %d pixels of the buttons' blue"
              % (os.path.relpath(screenshot), width, height, blue))
        self.assertGreater(blue, 1000)
