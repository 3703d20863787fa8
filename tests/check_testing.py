"""Shared by the tests of the lessons' exercise checks (``tests/test_lessonNN_checks.py``)."""

from helpers.checks import WRONG


def assert_wrong(verdict, *phrases):
    """The check said *wrong*, and its message contains every one of ``phrases``."""
    assert verdict.status == WRONG, verdict
    for phrase in phrases:
        assert phrase in verdict.message, verdict.message


def placeholder(*args):
    """A learner's answer not written yet: the function stub the generator leaves."""
    raise NotImplementedError
