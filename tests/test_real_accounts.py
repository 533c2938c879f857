"""Real accounts (issue 18): every device in its room, with its status and readings,
and no product line that fails hides the ones that answered.

Each rule is tested on a real answer (tests/fixtures, from pyatmo) where one shows it.
Three have none there, and get a hand-made answer shaped like the real ones: a module
that only homestatus lists, a room_id that disagrees with module_ids, and a valve that
homestatus does not list.
"""

import html
import json
import re
import time

from tests.fake_netatmo import TERMINAL_ATTACK
from tests.support import AppTestCase, Browser
from tests.test_terminal import OnceRun, TokenFileCase

ALICES_HOME = "91763b24c43d3e344f424e8b"
STATIONS = ("/api/getstationsdata",)
LINES = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")
# The type codes of ../shared/netatmo-api.md, section 6, and who makes each.
SECTION_6 = {
    "NAMain": "Netatmo", "NAModule1": "Netatmo", "NAModule2": "Netatmo",
    "NAModule3": "Netatmo", "NAModule4": "Netatmo", "NHC": "Netatmo", "NAPlug": "Netatmo",
    "NATherm1": "Netatmo", "NRV": "Netatmo", "NAC": "Netatmo", "OTH": "Netatmo",
    "OTM": "Netatmo", "NOC": "Netatmo", "NPC": "Netatmo", "NACamera": "Netatmo",
    "NSD": "Netatmo", "NIS": "Netatmo", "NACamDoorTag": "Netatmo", "NDB": "Netatmo",
    "NCO": "Netatmo", "NDL": "Netatmo", "BNS": "Smarther", "Z3L": "third party",
    "Z3V": "third party", "EBU": "third party", "NLPD": "Drivia", "TPSRS": "Somfy",
    "NBG": "Bubendorff", "NBR": "Bubendorff", "NBO": "Bubendorff", "NBS": "Bubendorff",
    "BNDL": "BTicino", "BNMS": "BTicino", "BNAB": "BTicino", "BNTH": "BTicino",
    "BNTR": "BTicino", "BNLD": "BTicino", "NLG": "Legrand", "NLGS": "Legrand",
    "NLP": "Legrand", "NLPM": "Legrand", "NLPBS": "Legrand", "NLF": "Legrand",
    "NLFE": "Legrand", "NLIS": "Legrand", "NLFN": "Legrand", "NLM": "Legrand",
    "NLL": "Legrand", "NLLF": "Legrand", "NLV": "Legrand/BTicino",
    "NLLV": "Legrand/BTicino", "NLLM": "Legrand/BTicino", "NLPO": "Legrand",
    "NLPT": "Legrand", "NLPC": "Legrand", "NLE": "Legrand", "NLPS": "Legrand",
    "NLC": "Legrand", "NLT": "Legrand", "NLAS": "Legrand", "NLD": "Legrand",
    "NLDD": "Legrand", "NLUP": "Legrand", "NLUO": "Legrand", "NLUI": "Legrand",
    "NLTS": "Legrand", "NLUF": "Legrand", "NLJ": "Legrand", "BNCX": "BTicino",
    "BNEU": "BTicino", "BNSL": "BTicino", "BNAS": "BTicino", "BNMH": "BTicino",
    "BNFC": "BTicino", "BNIL": "BTicino", "BNCS": "BTicino",
}


def by_id(devices):
    return {d["id"]: d for d in devices}


def hand_made_account():
    """Return erin's account: a home shaped like the real ones, for the three rules
    no real answer shows.

    - the relay g1 bridges a valve, v1, that homesdata lists in room Kitchen, and
      that homestatus does not list (its room reports 20 °C, set to 25);
    - homestatus lists a valve, v2, that homesdata does not (unreachable, battery
      low), which room Bedroom lists in its module_ids;
    - the thermostat t1 names Living in its room_id, while Kitchen lists it too.
    """
    home_id = "eeeeeeeeeeeeeeeeeeeeeeee"
    return {
        "/api/homesdata": {"homes": [{
            "id": home_id, "name": "Erin's flat",
            "rooms": [{"id": "r1", "name": "Kitchen", "type": "kitchen",
                       "module_ids": ["v1", "t1"]},
                      {"id": "r2", "name": "Bedroom", "type": "bedroom", "module_ids": ["v2"]},
                      {"id": "r3", "name": "Living", "type": "livingroom"}],
            "modules": [
                {"id": "g1", "type": "NAPlug", "name": "Relay", "modules_bridged": ["v1", "t1"]},
                {"id": "v1", "type": "NRV", "name": "Kitchen valve", "room_id": "r1",
                 "bridge": "g1"},
                {"id": "t1", "type": "NATherm1", "name": "Thermostat", "room_id": "r3",
                 "bridge": "g1"}]}], "user": {"email": "erin@example.com"}},
        "/api/getstationsdata": {"devices": []},
        "/api/gethomecoachsdata": {"devices": []},
        "/api/homestatus": {home_id: {"home": {"id": home_id, "modules": [
            {"id": "g1", "type": "NAPlug", "firmware_revision": 174, "wifi_strength": 42},
            {"id": "t1", "type": "NATherm1", "reachable": True, "battery_state": "high",
             "rf_strength": 58, "bridge": "g1"},
            {"id": "v2", "type": "NRV", "reachable": False, "battery_state": "low",
             "rf_strength": 91, "firmware_revision": 79, "last_seen": 1700000000,
             "bridge": "g1"}], "rooms": [
            {"id": "r1", "reachable": True, "therm_measured_temperature": 20,
             "therm_setpoint_temperature": 25},
            {"id": "r3", "reachable": True, "therm_measured_temperature": 21.5,
             "therm_setpoint_temperature": 19, "humidity": 48}]}}},
    }


class RealAccountCase(AppTestCase):

    def setUp(self):
        AppTestCase.setUp(self)
        self.fake.users["erin"] = hand_made_account()
        self.fake.rate_limits = None

    def devices_json(self, user="alice", browser=None):
        """Log in as user (or use browser); return /devices.json's document."""
        if browser is None:
            browser, _ = self.login(user)
        self.browser = browser
        response = browser.get(self.url + "/devices.json")
        self.assertEqual(response.status, 200, response.text[:300])
        return response.json()

    def page(self):
        response = self.browser.get(self.url + "/devices")
        self.assertEqual(response.status, 200)
        return html.unescape(response.text)


class RoomsTest(RealAccountCase):

    def test_a_room_that_lists_a_module_which_names_no_room(self):
        devices = by_id(self.devices_json()["devices"])
        # homesdata.json: the siren is in Hall only through Hall's module_ids,
        # the light switch only through Toilettes'.
        self.assertEqual(devices["12:34:56:00:e3:9b"]["room"], "Hall")
        self.assertEqual(devices["00:11:22:33:00:11:45:fe"]["room"], "Toilettes")
        # Two modules name Hall in room_id and are missing from its module_ids.
        self.assertEqual(devices["12:34:56:80:00:c3:69:3d"]["room"], "Hall")
        self.assertEqual(devices["12:34:56:80:00:c3:69:3e"]["room"], "Hall")

    def test_room_id_wins_where_the_two_disagree(self):
        devices = by_id(self.devices_json("erin")["devices"])
        self.assertEqual(devices["t1"]["room"], "Living")  # Kitchen lists it too
        self.assertEqual(devices["t1"]["readings"],  # and it reads Living, not Kitchen
                         {"temperature": 21.5, "setpoint": 19, "humidity": 48})


class StatusOnlyTest(RealAccountCase):

    def test_a_module_only_homestatus_lists_gets_a_row(self):
        answer = self.devices_json("erin")
        devices = by_id(answer["devices"])
        valve = devices["v2"]
        self.assertEqual(
            {k: valve[k] for k in ("type", "product", "maker", "name", "home", "room",
                                   "reachable", "battery", "signal", "firmware", "last_seen",
                                   "in_homesdata")},
            {"type": "NRV", "product": "Valve", "maker": "Netatmo", "name": None,
             "home": "Erin's flat", "room": "Bedroom", "reachable": False, "battery": "low",
             "signal": "low", "firmware": "79", "last_seen": 1700000000,
             "in_homesdata": False})
        self.assertTrue(all(devices[i]["in_homesdata"] for i in ("g1", "v1", "t1")))
        page = self.page()
        self.assertIn("<strong>1 offline</strong>: unnamed v2", page)
        self.assertIn("<strong>1 battery low or very low</strong>: unnamed v2 (low)", page)

    def test_a_valve_homestatus_does_not_list_reads_its_room(self):
        devices = by_id(self.devices_json("erin")["devices"])
        self.assertEqual(devices["v1"]["readings"], {"temperature": 20, "setpoint": 25})
        self.assertIsNone(devices["v1"]["reachable"])  # its own status stays unknown
        self.assertEqual(devices["g1"]["readings"], {})  # a relay reads no room


class StatusInPartsTest(RealAccountCase):

    def serve_status(self, name, status=200, home=ALICES_HOME):
        self.fake.serve_fixture("/api/homestatus?home_id=" + home, name, status, times=9)

    def test_errors_and_data_in_one_answer(self):
        self.serve_status("home_status_error_and_data.json")
        answer = self.devices_json()
        devices = by_id(answer["devices"])
        self.assertIs(devices["12:34:56:00:f1:62"]["reachable"], False)  # the camera named
        for listed in ("12:34:56:00:01:ae", "12:34:56:03:a5:54", "12:34:56:03:a0:ac"):
            self.assertIs(devices[listed]["reachable"], True)
        self.assertEqual(devices["12:34:56:00:01:ae"]["battery"], "high")
        self.assertEqual(devices["12:34:56:03:a5:54"]["readings"],
                         {"temperature": 24.5, "setpoint": 7})
        self.assertIs(devices["12:34:56:00:fa:d0"]["reachable"], True)  # reached: it bridges
        self.assertEqual(answer["homes_without_status"], [])
        page = self.page()
        self.assertIn("In home MYHOME, Netatmo says Hall (Indoor Camera) does not answer: "
                      "offline", page)
        self.assertNotIn("Home MYHOME does not answer", page)

    def test_an_empty_status_is_no_status(self):
        self.serve_status("home_status_empty.json")
        answer = self.devices_json()
        self.assertEqual([(p["home"], p["reason"]) for p in answer["homes_without_status"]],
                         [("MYHOME", "no_status")])
        home = [d for d in answer["devices"] if d["in_homesdata"] and d["home"] == "MYHOME"]
        unknown = [d for d in home if d["reachable"] is None]
        self.assertEqual((len(home), len(unknown)), (51, 41))
        self.assertIn("The status of home MYHOME is unknown", self.page())

    def test_an_invalid_id_answer_is_a_failed_status(self):
        self.serve_status("home_status_error_invalid_id.json", status=400)
        answer = self.devices_json()
        [problem] = answer["homes_without_status"]
        self.assertEqual(problem["reason"], "failed")
        self.assertIn("code 21: Invalid id", problem["message"])
        self.assertEqual(len(answer["devices"]), 73)

    def test_a_large_account_whose_gateway_does_not_answer(self):
        self.serve_status("home_multi_status_error_disconnected.json",
                          home="aaaaaaaaaaabbbbbbbbbbccc")
        answer = self.devices_json("dave")
        [problem] = answer["homes_without_status"]
        self.assertEqual((problem["home_id"], problem["reason"]),
                         ("aaaaaaaaaaabbbbbbbbbbccc", "not_answering"))
        devices = by_id(answer["devices"])
        self.assertIs(devices["aa:aa:aa:aa:aa:aa"]["reachable"], False)
        offline = [d for d in answer["devices"] if d["reachable"] is False]
        self.assertGreater(len(offline), 1)  # and what it bridges

    def test_the_empty_status_is_named_by_once(self):
        self.fake.serve_fixture("/api/homestatus", "home_status_empty.json", times=2)
        run = OnceRun(self)
        Browser().follow(run.wait_for_login_url(), approve_as="alice")
        status, out, err = run.finish()
        self.assertEqual(status, 0, err)
        self.assertIn("The status of home MYHOME is unknown", out)


class ProductLinesTest(RealAccountCase, TokenFileCase):
    """Netatmo's backends fail one endpoint at a time: what answered is listed."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.users["erin"] = hand_made_account()
        self.fake.rate_limits = None

    def test_a_mongo_error_on_the_stations_as_400_and_as_500(self):
        browser, _ = self.login("alice")
        for status in (400, 500):
            with self.subTest(status=status):
                self.fake.serve_fixture("/api/getstationsdata",
                                        "public_data_error_mongo.json", status)
                answer = self.devices_json(browser=browser)
                [failed] = answer["failed"]
                self.assertEqual(failed["endpoint"], "getstationsdata")
                self.assertEqual(failed["product_line"], "weather stations")
                self.assertIn("Netatmo answered %d, code 0: failed to connect" % status,
                              failed["message"])
                self.assertIn("MongoError", failed["message"])
                # The 51 home devices and 5 coaches that did answer are listed.
                self.assertEqual(len(answer["devices"]), 56)
                self.fake.serve_fixture("/api/getstationsdata",
                                        "public_data_error_mongo.json", status)
                page = self.page()
                self.assertIn("Weather stations could not be listed now "
                              "(/api/getstationsdata): Netatmo answered %d" % status, page)
                self.assertIn("56 devices", page)

    def test_an_answer_without_a_body(self):
        browser, _ = self.login("alice")
        self.fake.serve_fixture("/api/getstationsdata", "status_ok.json")
        answer = self.devices_json(browser=browser)
        self.assertEqual([f["endpoint"] for f in answer["failed"]], ["getstationsdata"])
        self.assertIn("without a body", answer["failed"][0]["message"])
        self.assertEqual(len(answer["devices"]), 56)

    def test_once_exits_5_on_a_partial_list_and_4_when_every_line_fails(self):
        TokenFileCase.browser_login(self)
        self.fake.serve_fixture("/api/getstationsdata", "public_data_error_mongo.json", 500)
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   "--json").finish()
        self.assertEqual(status, 5, err)
        answer = json.loads(out)
        self.assertEqual(len(answer["devices"]), 56)
        self.assertEqual([f["endpoint"] for f in answer["failed"]], ["getstationsdata"])
        self.assertEqual(len(err.strip().splitlines()), 1)
        self.assertIn("Weather stations could not be listed now", err)
        for path in LINES:
            self.fake.serve_fixture(path, "public_data_error_mongo.json", 500)
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser").finish()
        self.assertEqual((status, out), (4, ""), err)
        self.assertIn("MongoError", err)

    def test_what_netatmo_said_is_escaped_on_the_page_and_in_json(self):
        browser, _ = self.login("alice")
        said = {"error": {"code": 0, "message": "<script>x</script>" + TERMINAL_ATTACK}}
        self.fake.fail("/api/gethomecoachsdata", ("status", 500, said))
        [failed] = self.devices_json(browser=browser)["failed"]
        self.assertNotRegex(failed["message"], "[\x00-\x1f\x7f-\x9f]")
        self.assertIn("<script>x</script>\\x1b]0;pwned", failed["message"])
        self.fake.fail("/api/gethomecoachsdata", ("status", 500, said))
        page = browser.get(self.url + "/devices").text
        self.assertNotIn("<script>x", page)
        self.assertIn("Home coaches could not be listed now (/api/gethomecoachsdata): Netatmo "
                      "answered 500, code 0: &lt;script&gt;x&lt;/script&gt;", page)

    def test_a_failing_homesdata_keeps_the_home_ids_for_the_next_page(self):
        browser, _ = self.login("dave")  # two homes with modules
        self.fake.fail("/api/homesdata", "500_html")
        self.assertEqual(len(self.devices_json(browser=browser)["failed"]), 1)
        self.fake.latency = 0.3
        started = time.time()
        self.assertEqual(len(self.devices_json(browser=browser)["devices"]), 139)
        self.assertLess(time.time() - started, 0.55)  # one round of calls, not two

    def test_every_line_failing_is_the_page_of_a_netatmo_failure(self):
        browser, _ = self.login("alice")
        for path in LINES:
            self.fake.serve_fixture(path, "public_data_error_mongo.json", 500)
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 502)
        self.assertIn("MongoError", response.text)


class ProductNamesTest(RealAccountCase):

    def test_every_documented_type_has_a_name_and_a_maker(self):
        import netatmo_stdlib
        for code, maker in sorted(SECTION_6.items()):
            with self.subTest(code=code):
                row = netatmo_stdlib.device("x", None, code, None)
                self.assertNotEqual(row["product"], code)
                self.assertEqual(row["maker"], maker)
        unknown = netatmo_stdlib.device("x", None, "XYZ9", None)
        self.assertEqual((unknown["product"], unknown["maker"]), ("XYZ9", None))

    def test_names_on_the_real_account(self):
        devices = self.devices_json()["devices"]
        raw = [d["type"] for d in devices if d["product"] == d["type"]]
        self.assertEqual(raw, [])  # the 14 shown as raw codes before have names now
        products = {d["type"]: (d["maker"], d["product"]) for d in devices}
        self.assertEqual(products["NAPlug"], ("Netatmo", "Relay"))  # names kept
        self.assertEqual(products["NLG"], ("Legrand", "Gateway"))
        self.assertEqual(products["NBG"], ("Bubendorff", "Gateway"))
        self.assertEqual(products["NLE"], ("Legrand", "Connected ecometer"))


class AgreementTest(RealAccountCase, TokenFileCase):
    """The page and /devices.json agree; --once --json prints /devices.json's document."""

    def setUp(self):
        TokenFileCase.setUp(self)
        self.fake.rate_limits = None

    def faults(self):
        self.fake.serve_fixture("/api/getstationsdata", "public_data_error_mongo.json", 500)
        self.fake.serve_fixture("/api/homestatus", "home_status_error_and_data.json")

    def test_the_three_outputs_agree(self):
        TokenFileCase.browser_login(self)
        self.faults()
        status, out, err = OnceRun(self, "--token-file", self.path, "--no-browser",
                                   "--json").finish()
        self.assertEqual(status, 5, err)
        once = json.loads(out)
        browser, _ = self.login("alice")
        self.faults()
        document = self.devices_json(browser=browser)
        for answer in (once, document):
            answer.pop("fetched_at")
        self.assertEqual(once, document)
        self.faults()
        page = self.page()
        rows = re.findall(r'<tr><td>(.*?)</td><td class="(\w+)">.*?<td class="id wide">'
                          r'(.*?)</td></tr>', page)
        self.assertEqual([(d["name"] or "(unnamed)", {True: "online", False: "offline",
                                                       None: "unknown"}[d["reachable"]],
                           d["id"]) for d in document["devices"]], rows)
        for failure in document["failed"]:
            self.assertIn(failure["message"], page)
        for problem in document["homes_without_status"]:
            self.assertIn(problem["message"], page)
