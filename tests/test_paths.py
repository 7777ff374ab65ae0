"""app/paths.py names every file under DATA_DIR once: each is inside it, distinct, documented, and nobody else
builds one."""

import ast
import re
from pathlib import Path

import pytest

from app import paths
from app.claims import ClaimJournal
from app.paths import DataDir
from tests.support.processes import ROOT

FIXED = (
    "tasks_db",
    "claims_db",
    "claims_owners",
    "replenish_lock",
    "scheduler_lock",
    "replenish_history",
    "broker",
    "broker_queue",
    "broker_processed",
    "broker_control",
    "service_log",
)


def every_path(data: DataDir) -> list[Path]:
    return [
        *(getattr(data, name) for name in FIXED),
        data.index_db("tblA"),
        data.index_db("tblB"),
        data.outbox_db("tblA"),
        data.outbox_lock("tblA"),
        data.worker_log(1),
        data.worker_log(2),
        paths.claim_owner_lock(data.claims_db, "123-abc"),
    ]


def test_every_name_is_under_data_dir_and_distinct(tmp_path):
    data = DataDir(tmp_path / "data")
    found = every_path(data)
    assert all(path.is_relative_to(data.root) and path != data.root for path in found)
    assert len(set(found)) == len(found)


def documented(name: str) -> str:
    """The docstring writes a name with a table id or a number in it as a template."""
    name = re.sub(r"^(index|outbox)-tbl\w+\.(db|lock)$", r"\1-<table id>.\2", name)
    return re.sub(r"^worker-\d+\.log$", "worker-<n>.log", name)


def test_every_name_is_in_the_module_docstring(tmp_path):
    data = DataDir(tmp_path)
    for path in every_path(data):
        top = path.relative_to(data.root).parts[0]
        assert documented(top) in paths.__doc__, top


def test_the_claim_journal_keeps_its_owner_lock_where_paths_says(tmp_path):
    data = DataDir(tmp_path)
    journal = ClaimJournal(data.claims_db)
    journal.open()
    try:
        assert list(data.claims_owners.iterdir()) == [paths.claim_owner_lock(data.claims_db, journal.owner)]
    finally:
        journal.close()
    assert list(data.claims_owners.iterdir()) == []


NAMES = {"tasks.db", "claims.db", "replenish.lock", "scheduler.lock", "replenish-history.json", "broker", "service.log"}
PREFIXES = (paths.READY_PROBE_PREFIX, paths.DOCTOR_PROBE_PREFIX, "index-", "outbox-", "worker-", "claims-owners")


def _joins(tree: ast.AST) -> list[ast.BinOp]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)]


def _names_a_file(node: ast.expr) -> bool:
    """A string (or f-string) operand that is, or begins like, one of DATA_DIR's names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in NAMES or node.value.startswith(PREFIXES)
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value).startswith(PREFIXES)
    return False


@pytest.mark.parametrize(
    "module", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py") if p.name != "paths.py")
)
def test_no_module_but_paths_builds_a_data_dir_path(module):
    source = (ROOT / module).read_text()
    tree = ast.parse(source)
    built = [
        ast.get_source_segment(source, node)
        for node in _joins(tree)
        if "data_dir" in (ast.get_source_segment(source, node.left) or "") or _names_a_file(node.right)
    ]
    assert built == [], f"{module} builds a path under DATA_DIR itself: use app/paths.py"
    probes = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PREFIXES[:2]
    ]
    assert probes == [], f"{module} names a probe file itself: use app/paths.py"


def test_the_scan_catches_a_join():
    """The scan above is only worth its passes if it fails on the code it forbids."""
    for line in ('settings.data_dir / "x"', 'folder / "tasks.db"', 'root / f"index-{table}.db"', 'd / ".ready-x"'):
        node = _joins(ast.parse(line))[0]
        assert "data_dir" in ast.unparse(node.left) or _names_a_file(node.right), line
