"""Step (e): the devices, fetched concurrently, merged, escaped; scopes not granted."""

import json
import os
import threading
import time
import unittest

import netatmo_stdlib
from tests.fake_netatmo import default_users
from tests.support import HERE, AppTestCase, Browser


def by_id(devices):
    """Return the device list of /devices.json as a dict keyed by id."""
    return {d["id"]: d for d in devices}


class DeviceListTest(AppTestCase):

    def test_devices_json_shape(self):
        browser, _ = self.login("alice")
        response = browser.get(self.url + "/devices.json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.headers["Content-Type"], "application/json; charset=utf-8")
        answer = response.json()
        self.assertEqual(set(answer), {"devices", "not_granted", "homes_without_status",
                                       "failed", "fetched_at"})
        self.assertEqual(answer["not_granted"], [])
        self.assertEqual(answer["homes_without_status"], [])
        self.assertEqual(answer["failed"], [])
        for d in answer["devices"]:
            self.assertEqual(set(d), {"id", "name", "type", "product", "maker",
                                      "in_homesdata", "home", "reachable", "last_seen",
                                      "battery_percent", "battery", "signal", "firmware",
                                      "room", "readings"})

    def test_real_account_merges_to_one_row_per_device(self):
        browser, _ = self.login("alice")
        devices = browser.get(self.url + "/devices.json").json()["devices"]
        ids = [d["id"] for d in devices]
        self.assertEqual(len(ids), len(set(ids)))
        # 51 home modules + 7 stations with 17 modules + 5 coaches, less the 6 devices
        # listed both in homesdata and getstationsdata, less one module under 2 stations.
        self.assertEqual(len(devices), 73)
        devices = by_id(devices)
        # The station in homesdata keeps its name there, and gains reachability.
        self.assertEqual(devices["12:34:56:80:bb:26"]["name"], "Villa")
        self.assertIs(devices["12:34:56:80:bb:26"]["reachable"], True)
        self.assertEqual(devices["12:34:56:80:bb:26"]["product"], "Weather Station")
        # Stray spaces inside ids are dropped.
        self.assertIn("12:34:56:36:fd:3c", devices)
        self.assertEqual(devices["12:34:56:36:fd:3c"]["name"], "Valley Road")
        self.assertIn("12:34:56:36:e6:c0", devices)
        # A module listed under two stations: one row, its missing name filled in.
        self.assertEqual(devices["12:34:56:32:db:06"]["name"], "Ute")
        # Modules of a station belong to the station's home.
        self.assertEqual(devices["12:34:56:80:1c:42"]["home"], "MYHOME")
        # No name anywhere: null in JSON.
        self.assertIsNone(devices["00:11:22:33:00:11:45:fe"]["name"])
        # Every type Netatmo documents has its name; an unknown one is shown as the code.
        self.assertEqual(devices["12:34:56:80:00:c3:69:3d"]["product"],
                         "Zigbee 3 roller shutter")
        self.assertEqual(devices["12:34:56:26:69:0c"]["product"], "Home Coach")
        self.assertIs(devices["12:34:56:26:69:0c"]["reachable"], False)
        self.assertIs(devices["12:34:56:00:01:ae"]["reachable"], True)  # from homestatus
        self.assertIsNone(devices["12:34:56:00:16:0e"]["reachable"])  # unknown

    def test_html_page_lists_every_device_with_unnamed_ones_marked(self):
        browser, hops = self.login("alice")
        page = hops[-1].text
        self.assertIn("73 devices, fetched", page)
        self.assertEqual(page.count("<tr><td>"), 73)
        self.assertIn("(unnamed)", page)
        self.assertIn("<td>Écocompteur</td>", page)

    def test_hostile_device_names_are_escaped(self):
        browser, hops = self.login("bob")
        page = hops[-1].text
        self.assertNotIn("<script>alert", page)
        self.assertNotIn("<img src=x", page)
        self.assertNotIn("<b>Bob", page)
        self.assertIn("&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;", page)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", page)
        self.assertIn("&lt;b&gt;Bob&#x27;s &quot;home&quot;&lt;/b&gt; &amp; co", page)
        self.assertIn("Küche ☃ 温度", page)
        self.assertEqual(hops[-1].headers["Content-Type"], "text/html; charset=utf-8")
        devices = by_id(browser.get(self.url + "/devices.json").json()["devices"])
        self.assertEqual(devices["04:00:00:00:00:02"]["name"], "Küche ☃ 温度")
        self.assertEqual(devices["70:ee:50:00:00:04"]["product"], "XYZ9")
        # The station of homesdata and of getstationsdata ("70 :ee: 50...") is one row.
        self.assertEqual(devices["70:ee:50:00:00:05"]["name"], "Bob's station")
        self.assertEqual(devices["70:ee:50:00:00:05"]["home"], "<b>Bob's \"home\"</b> & co")
        self.assertEqual(len(devices), 6)

    def test_every_column_and_every_message_from_netatmo_is_escaped(self):
        self.fake.odd_scopes = ["<b>odd</b>"]
        browser, _ = self.login("alice")
        self.fake.fail("/api/gethomecoachsdata", ("body", {"devices": [{
            "_id": "<u>id</u>", "type": "<i>T</i>", "station_name": "<s>n</s>",
            "home_name": "<q>h</q>"}]}))
        page = browser.get(self.url + "/devices").text
        for tag, text in (("u", "id"), ("i", "T"), ("s", "n"), ("q", "h")):
            self.assertNotIn("<%s>%s" % (tag, text), page)
        # The type column, and the product column that shows an unknown type's code.
        self.assertEqual(page.count("&lt;i&gt;T&lt;/i&gt;"), 2)
        self.assertIn("&lt;u&gt;id&lt;/u&gt;", page)
        home = browser.get(self.url + "/").text
        self.assertNotIn("<b>odd", home)
        self.assertIn("&lt;b&gt;odd&lt;/b&gt;", home)
        self.fake.fail("/api/homesdata", ("status", 500, {"error": {
            "code": 0, "message": "<img src=x onerror=alert(1)>"}}))
        error = browser.get(self.url + "/devices")
        self.assertEqual(error.status, 200)  # a partial list, the failure named
        self.assertNotIn("<img", error.text)
        self.assertIn("&lt;img src=x onerror=alert(1)&gt;", error.text)

    def test_account_without_homes_and_with_unreachable_stations(self):
        browser, _ = self.login("carol")
        devices = by_id(browser.get(self.url + "/devices.json").json()["devices"])
        self.assertEqual(len(devices), 9)  # 2 stations and their 7 modules
        self.assertIs(devices["12:34:56:00:aa:01"]["reachable"], False)

    def test_every_endpoint_gets_the_bearer_token_and_calls_overlap(self):
        browser, hops = self.login("alice")
        for path in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
            [call] = self.fake.requests_to(path)
            self.assertRegex(call.headers["Authorization"], r"^Bearer [0-9a-f]{24}\|[0-9a-f]{32}$")
            self.assertEqual(call.query, {})
        # Each call takes 0.3 s; one after the other the page would take 0.9 s.
        self.fake.latency = 0.3
        started = time.time()
        self.assertEqual(browser.get(self.url + "/devices").status, 200)
        self.assertLess(time.time() - started, 0.75)

    def test_scope_not_granted_by_the_person_is_said_not_failed(self):
        self.fake.withheld_scopes = {"read_homecoach"}
        browser, hops = self.login("alice")
        self.assertIn("Not granted: home coaches", hops[-1].text)
        self.assertEqual(self.fake.requests_to("/api/gethomecoachsdata"), [])
        answer = browser.get(self.url + "/devices.json").json()
        self.assertEqual(answer["not_granted"], ["read_homecoach"])
        self.assertEqual(len(answer["devices"]), 68)

    def test_code_13_from_an_endpoint_is_not_granted_not_an_error(self):
        browser, _ = self.login("alice")
        self.fake.revoke_scope("read_station")
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 200)
        self.assertIn("Not granted: weather stations", response.text)
        self.assertIn("Villa", response.text)  # homesdata still answers

    def test_code_13_on_every_endpoint_at_once(self):
        browser, _ = self.login("alice")
        for scope in ("read_station", "read_thermostat", "read_homecoach"):
            self.fake.revoke_scope(scope)
        response = browser.get(self.url + "/devices.json")
        self.assertEqual(response.status, 200)
        answer = response.json()
        self.assertEqual(answer["devices"], [])
        self.assertEqual(answer["not_granted"],
                         ["read_thermostat", "read_station", "read_homecoach"])

    def test_token_answer_without_scope_falls_back_to_the_requested_scopes(self):
        self.fake.scope_format = "none"
        self.fake.withheld_scopes = {"read_homecoach"}
        browser, hops = self.login("alice")
        self.assertIn("Not granted: home coaches", hops[-1].text)

    def test_token_answer_with_scope_as_a_string(self):
        self.fake.scope_format = "string"
        browser, hops = self.login("alice")
        self.assertIn("73 devices, fetched", hops[-1].text)

    def test_only_the_configured_scopes_are_asked_and_called(self):
        server = self.start_app(scopes="read_station")
        url = "http://127.0.0.1:%d" % server.server_address[1]
        hops = Browser().follow(url + "/login", approve_as="alice")
        self.assertEqual(hops[-1].status, 200)
        self.assertEqual(self.fake.requests_to("/api/homesdata"), [])
        self.assertNotIn("Not granted", hops[-1].text)

    def test_devices_without_session(self):
        response = Browser().get(self.url + "/devices")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.location, "/login")
        response = Browser().get(self.url + "/devices.json")
        self.assertEqual(response.status, 401)
        self.assertEqual(response.json()["error"], "not_authenticated")

    def test_netatmo_faults_on_a_device_endpoint_keep_the_session(self):
        browser, _ = self.login("alice")
        self.fake.rate_limits = None  # 30 pages in a row would reach the real limit
        paths = ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata")
        cases = [("500_html", 502), ("non_json", 502), ("no_body", 502), ("reset", 502),
                 ("rate_limit", 429)]
        for kind, status in cases:
            for path in paths:  # one product line fails: the others are listed
                with self.subTest(kind=kind, path=path):
                    # A GET that a kept-alive connection loses is sent again, once:
                    # the reset hits both tries.
                    self.fake.fail(path, kind, times=2 if kind == "reset" else 1)
                    response = browser.get(self.url + "/devices")
                    self.fake.clear_faults()
                    self.assertEqual(response.status, 200)
                    self.assertIn("could not be listed now (%s)" % path, response.text)
                    self.assertIn("Netatmo", response.text)
            with self.subTest(kind=kind, path="all three"):  # every line fails: the page
                for path in paths:
                    self.fake.fail(path, kind, times=2 if kind == "reset" else 1)
                response = browser.get(self.url + "/devices")
                self.fake.clear_faults()
                self.assertEqual(response.status, status)
                self.assertIn("Netatmo", response.text)
                self.assertEqual(browser.get(self.url + "/devices").status, 200)
        for path in paths:
            self.fake.fail(path, "500_html")
        json_error = browser.get(self.url + "/devices.json")
        self.assertEqual(json_error.status, 502)
        self.assertEqual(json_error.json()["error"], "netatmo_failed")
        self.assertNoTraceback()

    def test_rate_limit_page_says_to_try_later(self):
        browser, _ = self.login("alice")
        for path in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
            self.fake.fail(path, "rate_limit")  # the limit is the user's: every line
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 429)
        self.assertIn("limit was reached", response.text)
        self.assertIn("Try again later", response.text)
        self.assertTrue(response.headers["Retry-After"].isdigit())

    def test_the_fakes_own_rate_limit_is_reached_like_netatmos(self):
        browser, _ = self.login("alice")  # 3 calls
        self.assertEqual(len(self.fake.requests_to("/api/homestatus")), 1)  # 4 calls a page
        answers = [browser.get(self.url + "/devices.json") for _ in range(17)]
        statuses = [answer.status for answer in answers]
        self.assertEqual(statuses[:11], [200] * 11)  # 48 calls in all: within 50 per 10 s
        self.assertEqual([a.json()["failed"] for a in answers[:11]], [[]] * 11)
        # The 12th page's calls are the 49th to the 52nd: two get through, at most.
        self.assertTrue(statuses[11] == 429 or answers[11].json()["failed"])
        self.assertEqual(statuses[12:], [429] * 5)


class CacheTest(AppTestCase):
    """The device list is kept for --cache-seconds (30 by default) per session."""

    cache_seconds = 30

    def api_calls(self):
        return sum(len(self.fake.requests_to(p)) for p in
                   ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"))

    def test_the_page_again_within_the_window_asks_netatmo_nothing(self):
        browser, hops = self.login("alice")
        self.assertEqual(self.api_calls(), 3)
        self.assertIn("fetched from Netatmo at 20", hops[-1].text)
        for _ in range(5):
            self.assertEqual(browser.get(self.url + "/devices").status, 200)
        answer = browser.get(self.url + "/devices.json").json()
        self.assertEqual(len(answer["devices"]), 73)
        self.assertAlmostEqual(answer["fetched_at"], time.time(), delta=60)
        self.assertEqual(self.api_calls(), 3)

    def test_fetch_again_now_asks_netatmo(self):
        browser, hops = self.login("alice")
        self.assertIn('<form method="post" action="/devices">', hops[-1].text)
        response = browser.post(self.url + "/devices")
        self.assertEqual(response.status, 303)
        self.assertEqual(response.location, "/devices")
        self.assertEqual(browser.get(self.url + "/devices").status, 200)
        self.assertEqual(self.api_calls(), 6)

    def test_the_list_is_fetched_again_after_the_window(self):
        server = self.start_app(cache_seconds=1.0)
        url = "http://127.0.0.1:%d" % server.server_address[1]
        browser = Browser()
        self.assertEqual(browser.follow(url + "/login", approve_as="alice")[-1].status, 200)
        self.assertEqual(browser.get(url + "/devices").status, 200)
        self.assertEqual(self.api_calls(), 3)  # within the window: from the cache
        [session] = server.sessions.sessions.values()
        time.sleep(max(0, session.device_list.fetched_at + 1 - time.time()))  # the clock
        self.assertEqual(browser.get(url + "/devices").status, 200)
        self.assertEqual(self.api_calls(), 6)

    def test_concurrent_pages_share_one_fetch(self):
        browser, _ = self.login("alice")
        browser.post(self.url + "/devices")
        self.fake.latency = 0.2
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(
            browser.get(self.url + "/devices").status)) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(statuses, [200] * 10)
        self.assertEqual(self.api_calls(), 6)

    def test_token_refresh_keeps_the_list_logout_drops_it(self):
        browser, _ = self.login("alice")
        browser.post(self.url + "/refresh")
        browser.get(self.url + "/devices")
        self.assertEqual(self.api_calls(), 3)
        browser.post(self.url + "/logout")
        self.login("alice", browser)
        self.assertEqual(self.api_calls(), 6)
        self.assertEqual(len(self.server.sessions.sessions), 1)

    def test_sessions_do_not_share_a_cache(self):
        alice, _ = self.login("alice")
        carol, hops = self.login("carol")
        self.assertIn("MyRemoteStation", hops[-1].text)
        self.assertNotIn("MyRemoteStation", alice.get(self.url + "/devices").text)


class DevicesOfTest(unittest.TestCase):
    """The merge on its own, on bodies that real accounts produced."""

    def test_empty_and_missing_bodies(self):
        self.assertEqual(netatmo_stdlib.devices_of({}), [])
        self.assertEqual(netatmo_stdlib.devices_of({"homesdata": {"homes": []}}), [])
        self.assertEqual(netatmo_stdlib.devices_of({"homesdata": {"homes": None},
                                                    "getstationsdata": {"devices": None}}), [])

    def test_device_without_type_or_id(self):
        bodies = {"homesdata": {"homes": [{"name": "H", "modules": [
            {"id": "a"}, {"type": "NAPlug"}, "not a module", {"id": "b", "type": None}]}]}}
        rows = netatmo_stdlib.devices_of(bodies)
        self.assertEqual([(r["id"], r["type"], r["product"]) for r in rows],
                         [("a", "", "unknown"), ("b", "", "unknown")])

    def test_large_account(self):
        users = default_users()
        rows = netatmo_stdlib.devices_of({"homesdata": users["dave"]["/api/homesdata"]})
        self.assertEqual(len(rows), 139)
        self.assertEqual(sum(1 for r in rows if r["name"] is None), 23)

    def test_odd_values_where_strings_belong(self):
        bodies = {"homesdata": {"homes": [{"id": ["x"], "name": {"a": 1}, "modules": [
            {"id": 12345, "type": 7, "name": ["n"], "reachable": "yes"}]}]},
                  "getstationsdata": {"devices": [{"_id": "s", "home_id": {"y": 1},
                                                   "modules": "none"}]}}
        rows = netatmo_stdlib.devices_of(bodies)
        self.assertEqual([r["id"] for r in rows], ["12345", "s"])
        self.assertIsNone(rows[0]["reachable"])
        self.assertEqual(rows[0]["product"], "7")


def fixture_body(name):
    """Return the body of a recorded answer in tests/fixtures."""
    with open(os.path.join(HERE, "fixtures", name), encoding="utf-8") as f:
        return json.load(f)["body"]


class StatusTest(AppTestCase):
    """Whether each device works and what it reads (issue 11), from real-shaped answers."""

    def devices(self, user="alice"):
        browser, _ = self.login(user)
        return browser, by_id(browser.get(self.url + "/devices.json").json()["devices"])

    def test_weather_stations_modules_and_coaches_from_their_own_answers(self):
        _, devices = self.devices("carol")  # no homes: every status is a station's
        station = devices["12:34:56:37:11:ca"]  # getstationsdata.json's first station
        self.assertEqual(
            {k: station[k] for k in ("reachable", "last_seen", "battery", "battery_percent",
                                     "signal", "firmware", "room", "readings")},
            {"reachable": True, "last_seen": 1559413181, "battery": None,
             "battery_percent": None, "signal": "full", "firmware": "137", "room": None,
             "readings": {"temperature": 24.6, "humidity": 36, "co2": 749, "noise": 37,
                          "pressure": 1017.3}})
        outdoor = devices["12:34:56:36:fc:de"]
        self.assertEqual((outdoor["last_seen"], outdoor["battery_percent"], outdoor["battery"],
                          outdoor["signal"], outdoor["firmware"], outdoor["readings"]),
                         (1559413157, 87, "full", "full", "46",
                          {"temperature": 28.6, "humidity": 24}))
        self.assertEqual((devices["12:34:56:07:bb:0e"]["battery"],
                          devices["12:34:56:07:bb:0e"]["signal"]), ("high", "medium"))  # 79, 84
        self.assertEqual(devices["12:34:56:03:1b:e4"]["readings"],
                         {"wind_strength": 4, "wind_angle": 217, "gust_strength": 9,
                          "gust_angle": 206})
        self.assertEqual(devices["12:34:56:05:51:20"]["readings"], {"rain": 0, "rain_24h": 0})
        remote = devices["12:34:56:00:aa:01"]  # unreachable, without dashboard_data
        self.assertEqual((remote["reachable"], remote["last_seen"], remote["readings"]),
                         (False, 1554506294, {}))
        gauge = devices["12:34:56:00:aa:03"]
        self.assertEqual((gauge["battery_percent"], gauge["battery"], gauge["last_seen"]),
                         (3, "very_low", 1537259554))
        self.assertEqual(devices["12:34:56:00:aa:02"]["battery"], "low")  # 17 %
        _, devices = self.devices("alice")
        coach = devices["12:34:56:3e:c5:46"]  # gethomecoachsdata.json
        self.assertEqual((coach["signal"], coach["last_seen"], coach["readings"]["health_index"],
                          coach["readings"]["co2"]), ("high", 1572073818, 1, 494))
        self.assertEqual(devices["12:34:56:26:69:0c"]["reachable"], False)

    def test_home_devices_from_homestatus_with_their_rooms(self):
        _, devices = self.devices("alice")
        thermostat = devices["12:34:56:00:01:ae"]  # homestatus.json, room Livingroom
        self.assertEqual(
            {k: thermostat[k] for k in ("reachable", "last_seen", "battery", "battery_percent",
                                        "signal", "firmware", "room", "readings")},
            {"reachable": True, "last_seen": None, "battery": "high", "battery_percent": None,
             "signal": "full", "firmware": "65", "room": "Livingroom",
             "readings": {"temperature": 19.8, "setpoint": 12}})
        valve = devices["12:34:56:03:a5:54"]  # its room, Entrada: 24.5 °C, set to 7
        self.assertEqual((valve["room"], valve["readings"], valve["battery"]),
                         ("Entrada", {"temperature": 24.5, "setpoint": 7}, "full"))
        relay = devices["12:34:56:00:fa:d0"]  # a gateway: no reachable; Wi-Fi 42, radio 107
        self.assertEqual((relay["reachable"], relay["signal"], relay["firmware"]),
                         (True, "full", "174"))
        siren = devices["12:34:56:00:e3:9b"]
        self.assertEqual((siren["battery"], siren["last_seen"], siren["reachable"]),
                         ("low", 1644569790, True))
        self.assertIs(devices["12:34:56:00:86:99"]["reachable"], False)  # door tag
        self.assertEqual(devices["12:34:56:00:00:a1:4c:da"]["readings"], {"power": 476})
        self.assertEqual(devices["12:34:56:10:f1:66"]["signal"], "high")  # doorbell, Wi-Fi 66
        self.assertEqual(devices["10:20:30:bd:b8:1e"]["readings"],  # a Smarther's room
                         {"temperature": 22, "setpoint": 22, "humidity": 67})
        # Listed by homestatus and getstationsdata: the source heard from last wins.
        outdoor = devices["12:34:56:80:1c:42"]
        self.assertEqual((outdoor["reachable"], outdoor["last_seen"], outdoor["readings"]),
                         (True, 1702884800, {"temperature": 5.8, "humidity": 65}))
        ghost = devices["12:34:56:32:db:06"]  # under two stations, dead under the first
        self.assertEqual((ghost["reachable"], ghost["last_seen"]), (True, 1588481380))

    def test_a_home_whose_gateway_does_not_answer(self):
        # homestatus_disconnected.json: the relay of alice's first home does not answer.
        self.fake.fail("/api/homestatus", ("body", fixture_body(
            "homestatus_disconnected.json")), times=4)
        browser, devices = self.devices("alice")
        for offline in ("12:34:56:00:fa:d0", "12:34:56:00:01:ae", "12:34:56:03:a5:54",
                        "12:34:56:03:a0:ac"):  # the relay, and what it bridges
            row = devices[offline]
            self.assertEqual((row["reachable"], row["battery"], row["signal"], row["readings"]),
                             (False, None, None, {}))
        self.assertIsNone(devices["12:34:56:00:f1:62"]["reachable"])  # status unknown now
        self.assertIs(devices["12:34:56:37:11:ca"]["reachable"], True)  # a station's
        answer = browser.get(self.url + "/devices.json").json()
        [problem] = answer["homes_without_status"]
        self.assertEqual((problem["home_id"], problem["home"], problem["reason"]),
                         ("91763b24c43d3e344f424e8b", "MYHOME", "not_answering"))
        page = browser.get(self.url + "/devices").text
        self.assertIn("Home MYHOME does not answer: its gateway Thermostat is offline", page)
        self.assertEqual(len(answer["devices"]), 73)

    def test_a_silent_gateway_takes_offline_what_names_it_as_its_bridge(self):
        # Real homesdata lists a bridged module under its gateway's modules_bridged, or
        # only names the gateway in the module's own `bridge`: either counts.
        self.fake.fail("/api/homesdata", ("body", {"homes": [{"id": "h1", "name": "Cabin",
                       "modules": [{"id": "g1", "type": "NAPlug", "name": "Gateway"},
                                   {"id": "m1", "type": "NATherm1", "bridge": "g1"},
                                   {"id": "m2", "type": "NRV"}]}]}), times=2)
        self.fake.fail("/api/homestatus", ("body", {"errors": [{"code": 6, "id": "g1"}],
                                                    "home": {"id": "h1"}}), times=2)
        browser, _ = self.login("alice")
        devices = by_id(browser.get(self.url + "/devices.json").json()["devices"])
        self.assertEqual([devices[i]["reachable"] for i in ("g1", "m1", "m2")],
                         [False, False, None])

    def test_a_failing_homestatus_leaves_the_list_whole_and_names_the_home(self):
        browser, _ = self.login("alice")
        self.fake.rate_limits = None
        for kind, words in (("500_html", "Netatmo answered 500"), ("non_json", "not JSON"),
                            ("scope", "code 13"), ("rate_limit", "code 26"),
                            ("hang", "did not answer within 1 seconds")):
            with self.subTest(kind=kind):
                self.fake.fail("/api/homestatus", kind)
                response = browser.get(self.url + "/devices")
                self.fake.clear_faults()
                self.assertEqual(response.status, 200)
                self.assertIn("73 devices", response.text)
                self.assertIn("The status of home MYHOME is unknown: ", response.text)
                self.assertIn(words, response.text)
        self.fake.fail("/api/homestatus", "500_html")
        answer = browser.get(self.url + "/devices.json").json()
        self.assertEqual([(p["home"], p["reason"]) for p in answer["homes_without_status"]],
                         [("MYHOME", "failed")])
        devices = by_id(answer["devices"])
        self.assertIsNone(devices["12:34:56:00:01:ae"]["reachable"])  # unknown, still listed
        self.assertEqual(devices["12:34:56:00:01:ae"]["room"], "Livingroom")
        self.assertNoTraceback()

    def app_settings(self):
        return {"timeout": 1.0}  # for the homestatus that does not answer

    def test_no_homestatus_without_read_thermostat(self):
        self.fake.withheld_scopes = {"read_thermostat"}
        browser, devices = self.devices("alice")
        self.assertEqual(self.fake.requests_to("/api/homestatus"), [])
        self.assertEqual(self.fake.requests_to("/api/homesdata"), [])
        self.assertEqual(devices["12:34:56:37:11:ca"]["signal"], "full")  # stations still

    def test_calls_per_page_three_plus_one_per_home_all_at_once_after_the_first(self):
        browser, _ = self.login("dave")  # 2 homes with modules
        status_calls = self.fake.requests_to("/api/homestatus")
        self.assertEqual(sorted(r.query["home_id"] for r in status_calls),
                         ["aaaaaaaaaaabbbbbbbbbbccc", "eeeeeeeeeffffffffffaaaaa"])
        self.fake.latency = 0.3
        calls_before = len(self.fake.requests)
        started = time.time()
        self.assertEqual(browser.get(self.url + "/devices.json").status, 200)
        took = time.time() - started
        self.assertEqual(len(self.fake.requests) - calls_before, 3 + 2)
        self.assertLess(took, 0.55)  # one round of calls, not two (0.6 s)
        devices = browser.get(self.url + "/devices.json").json()["devices"]
        self.assertEqual(len(devices), 139)
        self.assertTrue(all(d["reachable"] is not None for d in devices))

    def test_the_page_says_what_is_offline_and_which_batteries_are_low(self):
        browser, hops = self.login("carol")
        page = hops[-1].text
        self.assertIn("<strong>3 offline</strong>: MyRemoteStation, Outdoor, Wind Gauge.", page)
        self.assertIn("<strong>2 batteries low or very low</strong>: Outdoor (low, 17 %), "
                      "Wind Gauge (very low, 3 %).", page)
        self.assertIn('<td class="offline">offline</td>', page)
        self.assertIn("very low (3\u00a0%)", page)  # no wrap in "3 %" (issue 25)
        self.assertIn("24.6\u00a0\u00b0C \u00b7 36\u00a0% \u00b7 749\u00a0ppm \u00b7 37\u00a0dB "
                      "\u00b7 1017.3\u00a0mbar", page)
        self.assertRegex(page, r"\d+ days ago<br><small>2019-06-01 18:19:41 UTC</small>")
        for column in ("Status", "Readings", "Last seen", "Battery", "Signal", "Room"):
            self.assertIn(">%s</th>" % column, page)

    def test_room_names_and_the_home_that_does_not_answer_are_escaped(self):
        browser, hops = self.login("bob")
        page = hops[-1].text
        self.assertNotIn("<script>alert('room')", page)
        self.assertIn("&lt;script&gt;alert(&#x27;room&#x27;)&lt;/script&gt;", page)
        self.assertIn("&lt;i&gt;Living&lt;/i&gt; &amp; &quot;dining&quot;", page)
        self.assertIn("Home &lt;b&gt;Bob&#x27;s &quot;home&quot;&lt;/b&gt; &amp; co does not "
                      "answer: its gateway &lt;script&gt;alert(&#x27;pwned&#x27;)", page)
        self.assertNotIn("<b>Bob", page)
        devices = by_id(browser.get(self.url + "/devices.json").json()["devices"])
        self.assertEqual(devices["04:00:00:00:00:02"]["room"],
                         "<script>alert('room')</script>")
        self.assertEqual([devices[i]["reachable"] for i in (
            "70:ee:50:00:00:01", "04:00:00:00:00:02", "04:00:00:00:00:03")], [False] * 3)


class StatusOfTest(unittest.TestCase):
    """The thresholds, on their own."""

    def test_signal_and_battery_thresholds(self):
        radio = [(v, netatmo_stdlib.level(v, netatmo_stdlib.RADIO_SIGNAL, "full"))
                 for v in (95, 90, 89, 80, 79, 70, 69, 60, 0, None, True, "80")]
        self.assertEqual([word for _, word in radio],
                         ["low", "low", "medium", "medium", "high", "high", "full", "full",
                          None, None, None, None])
        wifi = [netatmo_stdlib.level(v, netatmo_stdlib.WIFI_SIGNAL, "full")
                for v in (86, 85, 71, 70, 56, 55)]
        self.assertEqual(wifi, ["low", "medium", "medium", "high", "high", "full"])
        battery = [netatmo_stdlib.battery_of_percent(p) for p in (100, 80, 79, 50, 49, 25,
                                                                   24, 10, 9, 0, None)]
        self.assertEqual(battery, ["full", "full", "high", "high", "medium", "medium", "low",
                                   "low", "very_low", "very_low", None])
