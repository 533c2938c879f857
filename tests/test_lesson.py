"""The file reads as the lesson (issue 19): the flow first, each step marked, a map.

A learner and a reviewer read netatmo_stdlib.py from the top: steps (a) to (e) come
first, in the order they happen, each line that does a step marked one way; the
README's grep lists those lines and nothing else; the docstring maps the banners.
"""

import io
import os
import re
import tokenize
import unittest

import netatmo_stdlib
from tests.support import ROOT

PROGRAM = os.path.join(ROOT, "netatmo_stdlib.py")


def source():
    with open(PROGRAM, encoding="utf-8") as f:
        return f.read()


def readme_grep():
    """Return the pattern of the README's grep for step (b), with {} for the letter."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        match = re.search(r'grep -n "([^"]*\(b\)[^"]*)" netatmo_stdlib\.py', f.read())
    assert match, "the README shows no grep for the steps"
    return match.group(1).replace("(b)", "({})")


def marker_lines():
    """Return {line number: the step letters its comment marks}, from the comments."""
    pattern = readme_grep()
    marks = {}
    for token in tokenize.generate_tokens(io.StringIO(source()).readline):
        if token.type == tokenize.COMMENT:
            for letter in "abcde":
                if pattern.format(letter) in token.string:
                    marks.setdefault(token.start[0], []).append(letter)
    return marks


class MarkersTest(unittest.TestCase):

    def test_the_readme_grep_lists_only_the_lines_that_do_each_step(self):
        pattern = readme_grep()
        lines = source().splitlines()
        marks = marker_lines()
        for letter in "abcde":
            with self.subTest(step=letter):
                found = [n + 1 for n, line in enumerate(lines) if pattern.format(letter) in line]
                self.assertTrue(found)
                # Each hit is a comment on a line of code: no docstring, no name like
                # status_word(d), no prose about the step.
                self.assertEqual(found, [n for n, ls in sorted(marks.items()) if letter in ls])
                for number in found:
                    code = lines[number - 1].split("#", 1)[0]
                    self.assertTrue(code.strip(), "line %d marks no code" % number)
                    self.assertEqual(marks[number], [letter])

    def test_a_reader_meets_the_steps_in_order_within_600_lines(self):
        marks = marker_lines()
        order = [letter for _, letters in sorted(marks.items()) for letter in letters]
        self.assertEqual(order, sorted(order))
        self.assertEqual(sorted(set(order)), list("abcde"))
        self.assertLessEqual(max(marks), 600)
        lines = source().splitlines()
        for what, text in (("the authorize URL", '"/oauth2/authorize?"'),
                           ("the state's check", "logins.state(nonce).encode())"),
                           ("the token POST", 'post_form("/oauth2/token", form, told)'),
                           ("the Bearer header", '{"Authorization": "Bearer " + access_token}')):
            with self.subTest(what=what):
                number = min(n + 1 for n, line in enumerate(lines) if text in line)
                self.assertLessEqual(number, 600)
                self.assertIn(number, marks)

    def test_the_docstring_maps_the_banners(self):
        banners = [re.sub(r" -+$| =+$", "", line[7:]) for line in source().splitlines()
                   if re.match(r"^# (----|====) ", line)]
        doc = netatmo_stdlib.__doc__.split("The map of the file", 1)[1]
        mapped = []
        for line in doc.splitlines()[1:]:
            if line.startswith("Part "):
                mapped.append(line.strip())
            elif line.startswith("    "):
                mapped.append(re.split(r"\s{2,}", line.strip())[0])
            elif mapped and not line.strip():
                break
        self.assertEqual(banners, mapped)
        self.assertEqual(banners[:7], ["Part 1, the flow", "(a) Receive the authorization "
                                       "request", "(b) Redirect to Netatmo",
                                       "(c) Receive the code", "(d) Exchange it for a token",
                                       "(e) Retrieve and output the devices",
                                       "Part 2, what makes it hold"])


class HandlerTest(unittest.TestCase):

    def test_the_flows_routes_call_their_step_directly(self):
        routes = netatmo_stdlib.Handler.routes
        self.assertIs(routes["/login"]["GET"], netatmo_stdlib.login)
        self.assertIs(routes["/authenticate"]["GET"], netatmo_stdlib.authenticate)
        self.assertIs(routes["/devices"]["GET"], netatmo_stdlib.show_devices)
        self.assertIs(routes["/devices.json"]["GET"], netatmo_stdlib.devices_json)
        lines = source().splitlines()
        part2 = lines.index([line for line in lines if line.startswith("# ==== Part 2")][0])
        for step in ("login", "authorize_url", "authenticate", "exchange_code",
                     "start_session", "show_devices", "fetch_device_list"):
            with self.subTest(step=step):
                [number] = [n for n, line in enumerate(lines)
                            if line.startswith("def %s(" % step)]
                self.assertLess(number, part2)
                self.assertFalse(hasattr(netatmo_stdlib.Handler, step))
