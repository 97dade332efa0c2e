"""How every command's ``--help`` lays out its description and epilog.

argparse either wraps all of that text (examples lose their columns) or none of it (long
descriptions run past the terminal's edge). This formatter wraps prose paragraphs to the
terminal's width and leaves alone any paragraph with an indented line: examples, and the
lists written as they should appear.
"""

from __future__ import annotations

import argparse
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wrap prose paragraphs (separated by blank lines); keep indented ones as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        laid_out = [self._lay_out(paragraph, width, indent) for paragraph in paragraphs]
        return "\n\n".join(laid_out)

    @staticmethod
    def _lay_out(paragraph: str, width: int, indent: str) -> str:
        lines = paragraph.splitlines()
        if any(line[:1].isspace() for line in lines) or lines[0].endswith(":"):
            # An example block or a heading over one: its layout is the point.
            return "\n".join(indent + line for line in lines)
        return textwrap.fill(
            " ".join(line.strip() for line in lines),
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
