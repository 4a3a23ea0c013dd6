"""A comparison's verdict for people: the HTML report, one self-contained file a person can open
anywhere (``render_html(verdict, trace_a, trace_b)`` returns the page, ``write_html(path, ...)``
writes it), and the text ``tracespec diff`` prints (``render_text(verdict)``). Importing this
package imports no framework.
"""

from tracespec.report.render import render_html, write_html
from tracespec.report.text import render_text

__all__ = ["render_html", "render_text", "write_html"]
