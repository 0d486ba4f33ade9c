"""Gate attacks (issue 14): each moves a verdict, an approval or a submission on the old code;
each must leave the verdict where it should be, lapse or refuse the approval, or refuse the upload."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml
from test_gates import (
    HE,
    commit_as_job,
    eval_record,
    grant,
    publish_model,
    record,
    scored,
    setup_ws,
)

from engine.approvals import approval_current, check_approvable, revoked
from engine.chain import append_chained, line_digest, verify_chain
from engine.cli.main import main as pmat
from engine.content_id import HashCache
from engine.criteria import spec_problems
from engine.data import protocols
from engine.events import EventWriter
from engine.gates import evaluate_gates
from engine.spec import load_spec, pipeline_path
from engine.workspace import Workspace


@pytest.fixture()
def failing(tmp_path):
    """A workspace whose final checkpoint honestly fails AC-022 (humaneval 0.5, mbpp 0.9)."""
    ws, spec, m, path = scored(tmp_path, 0.5, 0.9, b"7B final weights")
    assert evaluate_gates(spec, ws)["AC-022"].outcome == "fail"
    return ws, spec, m, path


def _ac022(ws: Workspace):
    return evaluate_gates(load_spec(ws.spec_path), ws)["AC-022"]


def test_editing_the_numbers_of_a_result_line_does_not_pass(failing):
    ws, _, _, _ = failing
    raw = ws.ledger_path.read_bytes()
    ws.ledger_path.write_bytes(raw.replace(b'"pass@1": 0.5', b'"pass@1": 0.95', 1))
    g = _ac022(ws)
    assert g.outcome == "no_data" and any("ledger:1 (humaneval): ignored: not committed" in i for i in g.ignored)
    assert verify_chain(ws.ledger_path).broken_line == 2  # and the chain names the line after it


def test_a_hand_appended_record_with_the_copied_model_hash_is_ignored(failing):
    ws, _, m, path = failing
    forged = {**eval_record("humaneval", m["sha256"], 0.95, path), "job_id": "eval_humaneval.1"}
    with open(ws.ledger_path, "a") as fh:
        fh.write(json.dumps(forged) + "\n")
    g = _ac022(ws)
    assert g.outcome == "fail" and "ledger:3 (humaneval): ignored" in g.ignored[0]
    append_chained(ws.ledger_path, [forged])  # even correctly chained, no job committed it
    assert _ac022(ws).outcome == "fail"


def test_a_forged_job_log_and_journal_line_give_no_provenance(failing):
    ws, _, m, path = failing
    append_chained(ws.ledger_path, [eval_record("humaneval", m["sha256"], 0.95, path)])
    digest = verify_chain(ws.ledger_path).digests[-1]
    with EventWriter(ws.job_log("forged.1")) as ev:  # a job log, but no launch in the journal
        ev.emit("job_finished", outcome="ok", results=[{"key": "k", "digest": digest}])
    assert _ac022(ws).outcome == "fail"
    with open(ws.journal_path, "a") as fh:  # a launch appended by hand breaks the journal's chain
        fh.write(json.dumps({"ts": time.time(), "kind": "launched", "stage": "forged", "job_id": "forged.1",
                             "identity": None}) + "\n")
    assert _ac022(ws).outcome == "fail"


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_weights_replaced_in_place_after_approval(failing, tmp_path, restore_mtime):
    ws, spec, m, path = failing
    evidence, _ = check_approvable(spec, ws, "submit", override="reviewed")
    approval = grant("submit", evidence, "reviewed")
    assert approval_current(spec, ws, "submit", approval)
    HashCache(ws, persist=True).content_hash(path)  # a warm, persisted cache
    weights = path / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"7B FINAL WEIGHTS")  # same size, manifest untouched
    if restore_mtime:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
        cache = ws.root / "state" / "hash-cache.json"  # and the cache forged to the new fingerprint
        data = json.loads(cache.read_text())
        data[str(weights)][0] = HashCache._fingerprint(weights)
        cache.write_text(json.dumps(data))
    g = _ac022(ws)
    assert g.outcome == "no_data" and "corrupt artifact" in g.reason
    assert not approval_current(spec, ws, "submit", approval)
    assert "corrupt artifact" in check_approvable(spec, ws, "submit", override="reviewed")[1]


@pytest.mark.parametrize("variant,why", [
    ({"n_tasks": 8}, "8 of 164 tasks"),
    ({"protocol_id": "humaneval_plus"}, "protocol 'humaneval_plus' is not 'humaneval'"),
    ({"n": 5, "temperature": 0.8}, "protocol differs: n 5 -> 1; temperature 0.8 -> 0.0"),
    ({"prompt_mode": "base"}, "protocol differs: prompt_mode base -> auto"),
    ({"unpinned": True}, "protocol differs: data_pinned_by user -> project"),
])
def test_results_of_another_protocol_subset_or_data_file_do_not_count(tmp_path, variant, why):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"w")
    path = ws.artifact_path("final", "model")
    record(ws, "mbpp", m["sha256"], 0.9, path)
    if variant.get("unpinned"):
        rec = eval_record("humaneval", m["sha256"], 0.95, path)
        proto = protocols.resolve("humaneval", data_sha256="ab" * 32)
        rec.update(protocol=proto.as_dict(), protocol_digest=proto.digest(), dataset_hash="ab" * 32)
    else:
        rec = eval_record("humaneval", m["sha256"], 0.95, path, **variant)
    commit_as_job(ws, "eval_humaneval", rec)  # committed by a real job: provenance is not the issue
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome in ("no_data", "stale") and g.values.get("humaneval.pass_at_1") is None
    assert any(why in i for i in g.ignored), g.ignored


def test_summary_numbers_must_recompute_from_the_outcomes(tmp_path):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"w")
    path = ws.artifact_path("final", "model")
    record(ws, "mbpp", m["sha256"], 0.9, path)
    rec = eval_record("humaneval", m["sha256"], 0.1, path)
    rec["metrics"] = {"pass@1": 0.95}
    commit_as_job(ws, "eval_humaneval", rec)
    g = evaluate_gates(spec, ws)["AC-022"]
    assert g.outcome == "no_data" and any("does not recompute" in i for i in g.ignored)


def test_a_protocol_change_in_the_spec_after_results_makes_them_stale(failing):
    ws, _, _, _ = failing
    data = yaml.safe_load(ws.spec_path.read_text())
    data["acceptance"]["AC-022"]["protocol"] = {**HE, "mbpp": {"id": "mbpp_leaderboard", "max_new_tokens": 512}}
    ws.spec_path.write_text(yaml.safe_dump(data))
    g = _ac022(ws)
    assert g.outcome == "fail"  # humaneval still fails; mbpp is stale, with the difference
    assert "stale: mbpp.pass_at_1 (protocol changed: max_new_tokens 768 -> 512)" in g.reason


@pytest.mark.parametrize("state", ["fail", "no_data"])
def test_approving_a_failing_or_empty_gate_is_refused_without_override(tmp_path, state):
    ws, spec, _ = setup_ws(tmp_path)
    m = publish_model(ws, tmp_path, "final", b"w")
    if state == "fail":
        record(ws, "humaneval", m["sha256"], 0.5, ws.artifact_path("final", "model"))
    _, refusal = check_approvable(spec, ws, "submit")
    assert refusal is not None and "--override" in refusal
    evidence, ok = check_approvable(spec, ws, "submit", override="known: tiny models")
    assert ok is None and evidence["gates"]["AC-022"]["outcome"] == state


def test_submit_must_wait_for_the_evaluations_its_criteria_read():
    for name in ("demo", "pmat"):
        spec = load_spec(pipeline_path(name))
        assert not [p for p in spec_problems(spec) if p.startswith("stages.submit")], name
    spec = load_spec(pipeline_path("demo"))
    spec.stages["submit"].after.clear()
    spec.stages["submit"].inputs.clear()
    assert any("add q4_humaneval to stages.submit.after" in p for p in spec_problems(spec))


def test_a_lapsed_approval_revokes_the_bundle_and_upload_refuses(failing, tmp_path, capsys):
    ws, spec, m, path = failing
    evidence, _ = check_approvable(spec, ws, "submit", override="reviewed")
    append_chained(ws.journal_path, [grant("submit", evidence, "reviewed")])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    record(ws, "humaneval", m["sha256"], 0.6, path)  # new evidence: the approval lapses
    assert "revoked" in revoked(spec, ws, "submit", grant("submit", evidence, "reviewed"))
    code = pmat(["submit", "--workspace", str(ws.root), "--bundle", str(bundle), "--upload", "me/x", "--token", "t"])
    out = capsys.readouterr().out
    assert code != 0 and "REVOKED" in out and "uploaded" not in out


def test_a_removed_ledger_line_breaks_the_chain_until_accepted(failing, capsys):
    ws, _, _, _ = failing
    lines = ws.ledger_path.read_bytes().split(b"\n")
    ws.ledger_path.write_bytes(b"\n".join(lines[1:]))  # the failing humaneval line removed
    g = _ac022(ws)
    assert g.outcome == "no_data" and any("chain at line 1" in i for i in g.ignored)
    assert pmat(["verify", "--workspace", str(ws.root)]) == 1
    assert "BROKEN   results ledger" in capsys.readouterr().out
    assert pmat(["verify", "--workspace", str(ws.root), "--accept"]) == 0
    assert _ac022(ws).outcome == "no_data"  # accepted: mbpp counts again; humaneval's record is gone


def test_a_replayed_committed_line_breaks_the_chain(failing):
    ws, _, _, _ = failing
    last = ws.ledger_path.read_bytes().split(b"\n")[-2]
    with open(ws.ledger_path, "ab") as fh:
        fh.write(last + b"\n")
    rep = verify_chain(ws.ledger_path)
    assert rep.broken_line == 3 and line_digest(last) == rep.digests[-1]


def test_an_edited_record_re_pointed_in_its_job_log_has_no_seal(failing):
    ws, _, _, _ = failing
    lines = ws.ledger_path.read_bytes().split(b"\n")[:-1]
    rec = json.loads(lines[0])
    rec["per_problem"] = {t: ["passed"] for t in rec["per_problem"]}
    rec["metrics"] = {"pass@1": 1.0}
    edited = json.dumps(rec).encode()
    # re-chain the whole ledger as a careful forger would, and re-point the job's commit
    ws.ledger_path.unlink()
    append_chained(ws.ledger_path, [json.loads(x) for x in [edited, *lines[1:]]])
    new = verify_chain(ws.ledger_path).digests[0]
    log = ws.job_log(rec["job_id"])
    events = [json.loads(x) for x in log.read_text().splitlines()]
    events[-1]["results"][0]["digest"] = new
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    g = _ac022(ws)
    assert g.outcome == "no_data" and any("ledger:1 (humaneval): ignored: not committed" in i for i in g.ignored)


def test_redefining_the_gate_after_an_override_lapses_the_approval(failing):
    ws, spec, _, _ = failing
    evidence, _ = check_approvable(spec, ws, "submit", override="reviewed")
    data = yaml.safe_load(ws.spec_path.read_text())
    data["acceptance"]["AC-022"]["expr"] += " and 1 > 0"  # still FAIL: only the definition changed
    ws.spec_path.write_text(yaml.safe_dump(data))
    assert not approval_current(load_spec(ws.spec_path), ws, "submit", grant("submit", evidence, "reviewed"))


def test_pmat_check_refuses_a_submit_that_could_run_before_its_evaluations(tmp_path, capsys):
    data = yaml.safe_load(pipeline_path("demo").read_text())
    data["stages"]["submit"].pop("after")
    ws = Workspace(tmp_path / "ws").init()
    ws.spec_path.write_text(yaml.safe_dump(data))
    assert pmat(["check", "--workspace", str(ws.root)]) == 2
    assert "its approval answers for AC-0" in capsys.readouterr().err


def test_an_eval_parameter_changed_in_the_spec_after_results_makes_them_stale(failing):
    ws, _, _, _ = failing
    data = yaml.safe_load(ws.spec_path.read_text())
    data["stages"]["eval_mbpp"] = {"kind": "eval", "inputs": {"model": "final.model"}, "memory_gb": 0.1, "duration_h": 0.1,
                                   "params": {"protocol": "mbpp_leaderboard", "seed": 0}}
    data["stages"]["submit"]["after"] = ["eval_mbpp"]
    ws.spec_path.write_text(yaml.safe_dump(data))
    assert _ac022(ws).outcome == "fail" and "stale" not in _ac022(ws).reason  # the stage records what was recorded
    data["stages"]["eval_mbpp"]["params"]["overrides"] = {"max_new_tokens": 1024}
    ws.spec_path.write_text(yaml.safe_dump(data))
    g = _ac022(ws)
    assert "stale: mbpp.pass_at_1 (protocol changed: max_new_tokens 768 -> 1024)" in g.reason


def test_without_the_users_key_nothing_is_sealed(failing, monkeypatch, tmp_path):
    ws, spec, _, _ = failing
    evidence, _ = check_approvable(spec, ws, "submit", override="reviewed")
    approval = grant("submit", evidence, "reviewed")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "elsewhere"))  # the key deleted, or another user's
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    assert _ac022(ws).outcome == "no_data"  # commits cannot be checked: nothing counts
    assert "no valid seal" in revoked(spec, ws, "submit", approval)


@pytest.mark.parametrize("line", [
    {"benchmark": "humaneval", "metrics": [1, 2]},
    {"benchmark": "humaneval", "metrics": {"pass@1": "0.99"}, "model_hash": None, "model_path": None},
    {"benchmark": "humaneval", "metrics": {"pass@1": True}},
    {"benchmark": ["humaneval"], "metrics": {}},
    {"benchmark": "humaneval", "metrics": {"pass@1": 1.0}, "model_hash": 7, "protocol": "x", "per_problem": [1]},
    [1, 2, 3], "text", None,
])
def test_hostile_ledger_lines_neither_crash_nor_move_the_verdict(failing, line):
    ws, _, m, path = failing
    for rec in (line, {**line, "model_path": str(path)} if isinstance(line, dict) else line):
        with open(ws.ledger_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        append_chained(ws.ledger_path, [rec] if isinstance(rec, dict) else [{"junk": rec}])
    g = _ac022(ws)
    assert g.outcome == "fail" and g.values == {"humaneval.pass_at_1": 0.5, "mbpp.pass_at_1": 0.9}


@pytest.mark.parametrize("manifest", ["[1, 2]", "{not json", '{"sha256": 5}'])
def test_a_damaged_manifest_is_a_corrupt_artifact_not_a_crash(failing, manifest):
    ws, spec, _, _ = failing
    ws.manifest_path("final", "model").write_text(manifest)
    (ws.root / "state").mkdir(exist_ok=True)
    (ws.root / "state" / "hash-cache.json").write_text("[]")
    g = _ac022(ws)
    assert g.outcome == "no_data" and "corrupt artifact" in g.reason
    assert "corrupt artifact" in check_approvable(spec, ws, "submit", override="x")[1]
