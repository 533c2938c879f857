"""Step (e): the devices, fetched concurrently, merged, escaped; scopes not granted."""

import threading
import time
import unittest

import netatmo_stdlib
from tests.fake_netatmo import default_users
from tests.support import AppTestCase, Browser


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
        self.assertEqual(set(answer), {"devices", "not_granted", "fetched_at"})
        self.assertEqual(answer["not_granted"], [])
        for d in answer["devices"]:
            self.assertEqual(set(d), {"id", "name", "type", "product", "home", "reachable"})

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
        # Unknown type codes are shown as the code.
        self.assertEqual(devices["12:34:56:80:00:c3:69:3d"]["product"], "Z3V")
        self.assertEqual(devices["12:34:56:26:69:0c"]["product"], "Home Coach")
        self.assertIs(devices["12:34:56:26:69:0c"]["reachable"], False)
        self.assertIsNone(devices["12:34:56:00:01:ae"]["reachable"])  # unknown

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
        self.assertEqual(error.status, 502)
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
        cases = [("500_html", 502), ("non_json", 502), ("no_body", 502), ("reset", 502),
                 ("rate_limit", 429)]
        for kind, status in cases:
            for path in ("/api/homesdata", "/api/getstationsdata", "/api/gethomecoachsdata"):
                with self.subTest(kind=kind, path=path):
                    # A GET that a kept-alive connection loses is sent again, once:
                    # the reset hits both tries.
                    self.fake.fail(path, kind, times=2 if kind == "reset" else 1)
                    response = browser.get(self.url + "/devices")
                    self.fake.clear_faults()
                    self.assertEqual(response.status, status)
                    self.assertIn("Netatmo", response.text)
                    self.assertEqual(browser.get(self.url + "/devices").status, 200)
        json_error = (self.fake.fail("/api/homesdata", "500_html"),
                      browser.get(self.url + "/devices.json"))[1]
        self.assertEqual(json_error.status, 502)
        self.assertEqual(json_error.json()["error"], "netatmo_failed")
        self.assertNoTraceback()

    def test_rate_limit_page_says_to_try_later(self):
        browser, _ = self.login("alice")
        self.fake.fail("/api/homesdata", "rate_limit")
        response = browser.get(self.url + "/devices")
        self.assertEqual(response.status, 429)
        self.assertIn("limit was reached", response.text)
        self.assertIn("Try again later", response.text)
        self.assertTrue(response.headers["Retry-After"].isdigit())

    def test_the_fakes_own_rate_limit_is_reached_like_netatmos(self):
        browser, _ = self.login("alice")  # 3 calls
        statuses = [browser.get(self.url + "/devices.json").status for _ in range(17)]
        self.assertEqual(statuses[:15], [200] * 15)  # 48 calls in all: within 50 per 10 s
        self.assertEqual(statuses[16], 429)


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
