"""Run the whole suite with unittest and end with one line: N passed, N failed."""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
    """Run the tests named in argv (default: all); return the exit status.

    --failfast stops at the first failure (tests/mutations.py wants only that one).
    """
    failfast = "--failfast" in argv
    argv = [a for a in argv if a != "--failfast"]
    root = os.path.dirname(HERE)
    sys.path.insert(0, root)
    loader = unittest.defaultTestLoader
    suite = loader.loadTestsFromNames(argv) if argv else \
        loader.discover(HERE, pattern="test_*.py", top_level_dir=root)
    result = unittest.TextTestRunner(verbosity=1, failfast=failfast).run(suite)
    # A test whose subtests failed counts once.
    failed = len({getattr(test, "test_case", test).id()
                  for test, _ in result.failures + result.errors})
    failed += len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
