"""The house rules a reader relies on: every app module and every shared test helper says first what it is for."""

import ast
import re

import pytest

from tests.support.processes import ROOT

HELPERS = [
    *(ROOT / "app").rglob("*.py"),
    *(ROOT / "tests" / "support").glob("*.py"),
    *(ROOT / "tests").rglob("conftest.py"),
    ROOT / "tests" / "feishu" / "emulator.py",
]


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in HELPERS))
def test_every_module_opens_with_a_line_on_what_it_is_for(module):
    docstring = ast.get_docstring(ast.parse((ROOT / module).read_text()))
    assert docstring and docstring.splitlines()[0].strip(), f"{module} has no opening docstring"


DOCS = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "bench").glob("*.md")]


@pytest.mark.parametrize("doc", sorted(str(p.relative_to(ROOT)) for p in DOCS))
def test_the_docs_link_only_inside_the_repository(doc):
    targets = re.findall(r"\]\(([^)\s]+)", (ROOT / doc).read_text())
    outside = [target for target in targets if "://" in target or target.startswith("//")]
    assert outside == [], f"{doc} links outside the repository: {outside}"
