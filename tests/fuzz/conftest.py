"""Reports of a fuzz run: per op, its cases by outcome and its seconds; for a failure, the one line that reruns
exactly the failing case (hypothesis's blob) from the repository root."""
import re

import pytest
from fuzzing import CASES, OUTCOMES, RUNNING, SEED

SECONDS, REPROS = {}, []


def repro_line(nodeid: str, failure_text: str) -> str:
    blob = re.search(r"@reproduce_failure\('[^']+', b'([^']+)'\)", failure_text)
    if blob is None:  # no blob (not a hypothesis failure): the seeded run itself finds the case again
        return f"SPECDEC_FUZZ_SEED={SEED} SPECDEC_FUZZ_CASES={CASES} .venv/bin/python -m pytest -q '{nodeid}'"
    return f"SPECDEC_FUZZ_BLOB='{blob.group(1)}' .venv/bin/python -m pytest -q '{nodeid}'"


def pytest_runtest_setup(item):
    RUNNING["test"] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when != "call":
        return
    SECONDS[item.nodeid] = report.duration
    if report.failed:
        line = repro_line(item.nodeid, report.longreprtext)
        report.sections.append(("fuzz repro", line))
        REPROS.append(line)


def pytest_terminal_summary(terminalreporter):
    if not any(OUTCOMES.get(nodeid) for nodeid in SECONDS):  # no fuzz test ran
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz: seed {SEED}, up to {CASES} cases per op")
    write(f"{'op':<52} {'cases':>7} {'valid':>7} {'non-finite':>10} {'error':>7} {'seconds':>8}")
    for nodeid, seconds in SECONDS.items():
        counts = OUTCOMES.get(nodeid)
        if not counts:  # a plain test (test_fuzz_finds.py)
            continue
        write(f"{nodeid.split('::')[-1]:<52} {sum(counts.values()):>7} {counts['valid']:>7} "
              f"{counts['non-finite']:>10} {counts['error']:>7} {seconds:>8.1f}")
    for line in REPROS:
        write(f"repro: {line}")
