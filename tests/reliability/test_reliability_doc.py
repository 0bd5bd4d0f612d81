"""docs/reliability.md is generated from the registry the tests run, and every row has a test."""

from __future__ import annotations

import importlib.util
import pathlib

import reliability_table as table

REPO = pathlib.Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_reliability_doc", REPO / "tools" / "gen_reliability_doc.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_doc_matches_the_registry():
    gen = _generator()
    want = gen.render(table)
    doc = REPO / "docs" / "reliability.md"
    assert doc.exists(), "docs/reliability.md is missing: run tools/gen_reliability_doc.py"
    assert doc.read_text() == want, (
        "docs/reliability.md differs from the test registry: run tools/gen_reliability_doc.py"
    )


def test_every_row_has_a_test():
    import test_reliability_bad_inputs as bad
    import test_reliability_crash as crash
    import test_reliability_resources as disk
    import test_reliability_safe_loading as safe

    assert set(bad.SETUPS) == {c.id for c in table.BAD_INPUTS}
    assert {**crash.FAULT_TESTS, **disk.FAULT_TESTS}.keys() == {f.id for f in table.FAULTS}
    assert set(safe.AUDIT_TESTS) == {a.id for a in table.AUDITS}
    for group in (table.BAD_INPUTS, table.FAULTS, table.AUDITS):
        ids = [r.id for r in group]
        assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"


def test_the_table_is_big_enough():
    """The issue asks for at least 20 kinds of bad input across stores, configs, checkpoints, CLI."""
    cats = {c.category for c in table.BAD_INPUTS}
    assert len(table.BAD_INPUTS) >= 20
    assert {"data store", "config", "checkpoint", "CLI argument", "output"} <= cats
