"""Testing with tracespec: :func:`assert_matches` and the pytest plugin's ``tracespec_golden``
fixture (``tracespec.testing.pytest_plugin``); the shared adapter suite lives in ``adapter_tests``."""

from tracespec.testing.matching import TraceMismatch, assert_matches

__all__ = ["TraceMismatch", "assert_matches"]
