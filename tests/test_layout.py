"""tests/check_map.py (make test runs it on arc.c, as a stage of its own)
against small C files whose map is right or wrong; no hub needed."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import check_map  # noqa: E402

MAP = """/* demo
 *
 * Sections, in order (grep -n '^/\\* ==== ' demo.c):
 *   base   limits
 *   json   reader,
 *          writer
 *   main   main()
 */
"""


def source(banners, head=MAP):
    return head + "".join("\n/* ==== %s: duty ==== */\nint x_%s;\n" % (t, t)
                          for t in banners)


class CheckMapTest(unittest.TestCase):
    def test_agreeing_map(self):
        self.assertEqual(check_map.problems(source(["base", "json", "main"])), [])

    def test_banner_missing_from_map(self):
        found = check_map.problems(source(["base", "json", "mcp", "main"]))
        self.assertEqual(len(found), 1, found)
        self.assertIn("`mcp`", found[0])
        self.assertIn("missing from the map", found[0])

    def test_map_entry_without_banner(self):
        found = check_map.problems(source(["base", "main"]))
        self.assertEqual(len(found), 1, found)
        self.assertIn("`json`", found[0])

    def test_order_differs(self):
        found = check_map.problems(source(["json", "base", "main"]))
        self.assertEqual(len(found), 1, found)
        self.assertIn("order", found[0])

    def test_no_map(self):
        found = check_map.problems(source(["base"], head="/* demo */\n"))
        self.assertEqual(len(found), 1, found)
        self.assertIn("no section map", found[0])


if __name__ == "__main__":
    unittest.main()
