"""The README's promises: the spec reference is current, and the first screen's commands exist."""
from __future__ import annotations

import re
from pathlib import Path

from nnctl.reference import BEGIN, END, reference

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_reference_section_is_generated_and_current():
    start, end = README.index(BEGIN), README.index(END) + len(END)
    assert README[start:end] + "\n" == reference(), "run: python -m nnctl.reference, and paste it into README.md"


def test_first_screen_commands():
    first = README[:1500]
    assert 'pip install -e ".[dev]" && nnctl train configs/digits.yaml' in first
    assert re.search(r"^pytest\b", first, re.M)
    assert (ROOT / "configs" / "digits.yaml").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and re.search(r"^pytest$", ci, re.M)
