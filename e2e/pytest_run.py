"""Runs pytest and refuses to pass when no test ran (pytest's exit code 5)."""

import sys

import pytest

NO_TESTS_COLLECTED = 5


def main(argv: list[str]) -> int:
    code = int(pytest.main(argv))
    if code == NO_TESTS_COLLECTED:
        print("pytest collected no tests: failing, a run that tests nothing must not pass")
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
