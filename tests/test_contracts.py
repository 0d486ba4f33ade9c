"""Contracts: the schema is enforced and a binding to a missing test is caught."""

from __future__ import annotations

import pytest
import yaml

from engine.contracts import ContractError, check_bindings, load_contracts


def write(tmp_path, data, name="c1"):
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))


def contract(tests):
    return {"id": "c1", "title": "t", "references": ["r"], "equations": [{"id": "EQ-1", "text": "x = y"}],
            "obligations": [{"id": "C-001", "kind": "equality", "statement": "s", "tests": tests}]}


def test_shipped_contracts_cover_the_required_subjects():
    ids = {c.id for c in load_contracts()}
    assert ids >= {"pass-at-k", "lora-algebra", "ties-sign-resolution", "merge-weight-norm", "preference-pairs",
                   "dpo-alignment", "decontamination", "chunked-logprobs", "q4k-quantization",
                   "tokenizer-preservation", "pruning-quality", "leaderboard-gate"}


def test_missing_test_binding_is_reported(tmp_path):
    write(tmp_path, contract(["tests/test_contracts.py::test_missing_test_binding_is_reported",
                              "tests/test_contracts.py::test_that_does_not_exist"]))
    rep = check_bindings(load_contracts(tmp_path))
    assert rep.missing == [("C-001", "tests/test_contracts.py::test_that_does_not_exist")] and rep.bound == 0
    write(tmp_path, contract(["tests/test_contracts.py::test_missing_test_binding_is_reported"]))
    rep = check_bindings(load_contracts(tmp_path))
    assert rep.missing == [] and rep.coverage == 1.0


def test_schema_errors_name_file_and_key(tmp_path):
    bad = contract([])
    bad["obligations"][0]["kind"] = "vibes"
    write(tmp_path, bad)
    with pytest.raises(ContractError, match=r"c1.yaml: obligations.0.kind"):
        load_contracts(tmp_path)
    write(tmp_path, contract([]), name="other")
    (tmp_path / "c1.yaml").unlink()
    with pytest.raises(ContractError, match="does not match the file name"):
        load_contracts(tmp_path)
