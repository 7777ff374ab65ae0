"""The house rules a reader relies on: every app module and every shared test helper says first what it is for."""

import ast

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
