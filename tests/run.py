"""Run the suite with unittest and end with one line: N passed, N failed, N skipped.

    python3 tests/run.py                       # every test, its classes in parallel
    python3 tests/run.py tests.test_flow ...   # only these, in this process
    python3 tests/run.py --failfast NAMES      # stop at the first failure (mutations)

The tests wait on sockets and child processes far more than they compute, so the
whole suite runs its test classes in child processes, TEST_JOBS at a time (default:
the number of cores and one more; TEST_JOBS=1 runs them one after the other). Each
class prints one line, and its whole output if it failed.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$", re.M)
# unittest's own lines, left out of a passing class's report
NOISE = re.compile(r"^([.sFEx]*|-{70}|Ran \d+ tests? in .*|OK( \(.*\))?|\d+ passed, .*)$")


def main(argv):
    """Run the tests named in argv (default: all); return the exit status.

    Ctrl-C is a KeyboardInterrupt here, and a default signal in every child, even
    when the suite was started in the background, where a shell ignores SIGINT for
    it and its children: the tests that press Ctrl-C would wait for ever."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    failfast = "--failfast" in argv
    argv = [a for a in argv if a != "--failfast"]
    sys.path.insert(0, ROOT)
    loader = unittest.defaultTestLoader
    if argv:
        return run_here(loader.loadTestsFromNames(argv), failfast)
    classes = []
    for test in tests_of(loader.discover(HERE, pattern="test_*.py", top_level_dir=ROOT)):
        name = test.id().rsplit(".", 1)[0]
        if name not in classes:
            classes.append(name)
    return run_in_parallel(classes, int(os.environ.get("TEST_JOBS", 0))
                           or (os.cpu_count() or 1) + 1)


def tests_of(suite):
    """Yield the single tests of a suite of suites, in order."""
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            for test in tests_of(item):
                yield test
        else:
            yield item


def run_here(suite, failfast):
    """Run a suite in this process; print the summary line; return the exit status."""
    result = unittest.TextTestRunner(verbosity=1, failfast=failfast).run(suite)
    # A test whose subtests failed counts once.
    failed = len({getattr(test, "test_case", test).id()
                  for test, _ in result.failures + result.errors})
    failed += len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 0 if failed == 0 and result.testsRun > 0 else 1


def each_at_once(items, jobs, work):
    """Call work(item) for every item, in `jobs` threads; return when all are done.

    The items are taken in order; work runs in the threads (tests/mutations.py too).
    """
    pending = list(items)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not pending:
                    return
                item = pending.pop(0)
            work(item)

    workers = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def run_in_parallel(classes, jobs):
    """Run each test class in a child process, jobs at a time; sum up; return the status."""
    totals = [0, 0, 0]
    lock = threading.Lock()
    started = time.time()

    def run_class(name):
        begun = time.time()
        child = subprocess.run([sys.executable, os.path.abspath(__file__), name],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, encoding="utf-8", errors="replace")
        found = SUMMARY.findall(child.stdout)
        counts = [int(n) for n in found[-1]] if found else [0, 1, 0]  # it crashed
        failed = counts[1] > 0 or child.returncode != 0
        report = child.stdout.strip() if failed else "\n".join(
            "    " + line.strip() for line in child.stdout.splitlines()
            if not NOISE.match(line.strip()))
        with lock:
            for i in range(3):
                totals[i] += counts[i]
            if failed and counts[1] == 0:
                totals[1] += 1
            print("%s %s (%d tests, %.1f s)%s" % ("FAILED" if failed else "ok    ", name,
                                                  sum(counts), time.time() - begun,
                                                  "\n" + report if report.strip() else ""),
                  flush=True)

    each_at_once(classes, jobs, run_class)
    print("%d test classes in %.0f s, %d at a time" % (len(classes), time.time() - started,
                                                       jobs))
    print("%d passed, %d failed, %d skipped" % tuple(totals))
    return 0 if totals[1] == 0 and sum(totals) > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
