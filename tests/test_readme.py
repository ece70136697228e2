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
    block = first[first.index("```bash"):]
    block = block[:block.index("```", 3)]
    lines = [line.split("#")[0].strip() for line in block.splitlines()[1:]]
    # from a fresh clone: the folder, the virtual environment inside the block, the light install, a run
    assert lines[0].startswith("git clone ") and lines[0].endswith("&& cd nnctl")
    assert lines[1] == "python3 -m venv .venv && . .venv/bin/activate"
    assert lines[2] == "pip install -e ."
    assert lines[3] == "nnctl train configs/digits.yaml"
    assert 'pip install -e ".[dev]" && nnctl train configs/digits.yaml' in first
    assert re.search(r"^pytest\b", first, re.M)
    # the time the README promises for the suite is a figure, not "a few minutes"
    assert "a few minutes" not in README and re.search(r"^pytest .*about [\d.]+ minutes", first, re.M)
    assert (ROOT / "configs" / "digits.yaml").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv" in ci and 'pip install -e ".[dev]"' in ci and re.search(r"^pytest$", ci, re.M)
