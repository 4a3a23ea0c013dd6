"""The HTML report of a comparison: one self-contained file a person can open anywhere.

``render_report(verdict, trace_a, trace_b)`` returns the page; ``write_report(path, ...)`` writes
it. Importing this package imports no framework.
"""

from tracespec.report.render import render_report, write_report

__all__ = ["render_report", "write_report"]
