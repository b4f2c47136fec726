"""Run the Python integration suite and print one summary line.

unittest's own summary ("OK" / "FAILED (failures=1)") is not the
"N passed, M failed" line CI reads, so this wraps it.
"""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py")
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
import hubtest  # noqa: E402  (imported by the tests; holds their findings)
for report in hubtest.SANITIZER_REPORTS:
    print("SANITIZER REPORT in a hub log:\n" + report)
failed += len(hubtest.SANITIZER_REPORTS)
skipped = len(result.skipped)
passed = result.testsRun - failed - skipped
print(f"integration: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed else 0)
