"""The precision audit, intervals on every number, and quick subsets (issue 11).

Expected values are worked out by hand in the comments. The end-to-end runs use the test
doubles (tests/doubles): the fake aclruntime runs the ONNX the fake ATC wrapped, so against
the fp32 reference it agrees exactly, unless it is told to perturb its output
(``FAKE_ACL_PERTURB``: fp16 rounding, or a bias on one class).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

import numpy as np
import pytest

from harness import audit, results
from harness.audit import Auditor, audit_indices, audit_summary
from harness.data.filelist import VideoEntry, stratified_subset
from harness.progress import Progress
from harness.run import execute, format_table, main, parse_args
from harness.stages import VideoResult
from pipeline_support import run_args, shared_inputs, use_fake_aclruntime, worker_pythonpath

LN2 = math.log(2.0)


# ---------------------------------------------------------------- which videos

def test_audit_indices_are_spread_evenly_and_deterministic():
    # 10 entries, 3 audited: the middle of each third: int(1.67), int(5.0), int(8.33)
    assert audit_indices(list(range(10)), 3) == [1, 5, 8]
    assert audit_indices([40, 41, 42, 43], 2) == [41, 43]       # list indices, not positions
    assert audit_indices(list(range(3)), 8) == [0, 1, 2]
    assert audit_indices(list(range(3)), 0) == []


def test_the_default_audits_reduced_precision_only():
    assert audit.default_videos("om", "npu") == 16
    assert audit.default_videos("onnxruntime", "gpu") == 16
    assert audit.default_videos("onnxruntime", "cpu") == 0


# ---------------------------------------------------------------- what it reports

def _pair(tmp_path, index: int, device_logits, reference_logits, label: int = 0) -> None:
    entry = VideoEntry(index, f"v{index}.mp4", label)
    auditor = Auditor(tmp_path, [entry])
    auditor.reference(index, {"logits": np.asarray(reference_logits, np.float32)}, None)
    auditor.device(VideoResult(index, entry.path, label, "ok", scores=np.zeros(3, np.float32),
                               device="npu:0", logits=np.asarray(device_logits, np.float32)))


def test_the_audit_summary_by_hand(tmp_path):
    # video 0: device views [ln2, 0, 0] -> probs [1/2, 1/4, 1/4]; reference [0, ln2, 0] ->
    # [1/4, 1/2, 1/4]: top-1 0 vs 1, |Δprob| [1/4, 1/4, 0] (max 1/4, mean 1/6), |Δlogit| ln2,
    # cosine 0. Video 1: the same logits on both sides: agreement, no difference, cosine 1.
    _pair(tmp_path, 0, [[LN2, 0, 0]] * 2, [[0, LN2, 0]] * 2, label=1)
    _pair(tmp_path, 1, [[1, 2, 3], [3, 2, 1]], [[1, 2, 3], [3, 2, 1]])
    got = audit_summary(tmp_path, [0, 1, 5], "ref", 0.99, 0.01, ["a", "b", "c"],
                        {5: "the device did not score it (empty)"})
    assert (got["videos_requested"], got["videos_audited"]) == (3, 2)
    assert got["top1_agreement"] == 0.5     # (with 3 classes every top-5 set is all of them)
    assert got["max_abs_prob_diff"] == pytest.approx(0.25, abs=1e-6)
    assert got["mean_abs_prob_diff"] == pytest.approx((1 / 6 + 0) / 2, abs=1e-6)
    assert got["max_abs_logit_diff"] == pytest.approx(LN2, abs=1e-6)
    assert got["cosine_similarity_min"] == pytest.approx(0.0, abs=1e-9)
    assert got["cosine_similarity_mean"] == pytest.approx(0.5, abs=1e-6)
    # Wilson 1/2 at 95%: center 0.5, half 1.96 * sqrt(.25/2 + 1.96^2/16) / (1 + 1.96^2/2) = 0.4056
    assert got["top1_agreement_ci95"] == pytest.approx((0.0945, 0.9055), abs=1e-4)
    assert got["top1_differs"] == [{"index": 0, "path": "v0.mp4", "label": "b", "device": "a",
                                    "reference": "b"}]
    assert got["not_audited"] == [{"index": 5, "why": "the device did not score it (empty)"}]
    assert got["passed"] is False and len(got["warnings"]) == 2
    assert "50.0% (1/2), below 99.0%" in got["warnings"][0] and "0.25" in got["warnings"][1]


def test_the_top5_set_agreement_by_hand(tmp_path):
    # 7 classes. Video 0: the device ranks 0 > 1 > ... > 6 (top 5: {0..4}), the reference the
    # other way round (top 5: {2..6}): the sets differ. Video 1: both rank 3 first and the
    # same five on top, in another order: the sets agree. Video 2: identical. -> 2/3.
    down, up = [6, 5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6]
    _pair(tmp_path, 0, [down] * 2, [up] * 2)
    _pair(tmp_path, 1, [[4, 3, 2, 9, 1, 0, -1]] * 2, [[1, 2, 3, 9, 4, 0, -1]] * 2, label=3)
    _pair(tmp_path, 2, [up] * 2, [up] * 2)
    got = audit_summary(tmp_path, [0, 1, 2], "ref", 0.0, 1.0, [], {})
    assert got["top5_set_agreement"] == pytest.approx(2 / 3)
    assert got["top1_agreement"] == pytest.approx(2 / 3)        # video 0's top-1 differs too


def test_a_pair_is_written_only_when_both_answers_came(tmp_path):
    entry = VideoEntry(3, "v3.mp4", 0)
    auditor = Auditor(tmp_path, [entry])
    auditor.device(VideoResult(3, "v3.mp4", 0, "ok", scores=np.zeros(3, np.float32), device="d",
                               logits=np.zeros((2, 3), np.float32)))
    assert audit.recorded_indices(tmp_path) == set()
    auditor.reference(3, None, "TaskFailed: boom")
    assert audit.recorded_indices(tmp_path) == set() and "boom" in auditor.incomplete[3]


# ---------------------------------------------------------------- intervals and subsets

def test_summary_and_progress_carry_wilson_intervals():
    import pyarrow as pa

    # 10 videos, 8 right: Wilson (0.4902, 0.9433) (Newcombe 1998); all 10 in the top-5 (wrong
    # ones rank their label second): (0.7225, 1.0)
    rows, progress = [], Progress(10, 0, enabled=False)
    for i in range(10):
        scores = np.full(4, 0.1, np.float32)
        scores[i % 4] = 0.5
        label = i % 4 if i < 8 else (i + 1) % 4
        scores[label] = max(scores[label], 0.3)
        rows.append({"index": i, "path": f"v{i}", "label": label, "status": "ok", "error": None,
                     "message": None, "scores": scores.tolist(), "top5": None, "device": "cpu:0",
                     "node": "n", "finished_at": 0.0})
        progress.update(VideoResult(i, f"v{i}", label, "ok", scores=scores))
    summary = results.summarize(pa.Table.from_pylist(rows, schema=results.SCHEMA), wall_s=1.0,
                                processed=10, backend="x", artifact={})
    assert summary["ci95"]["top1"] == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert summary["ci95"]["top5"] == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert "Wilson" in summary["ci95"]["method"]
    assert progress.postfix() == "failed=0 top1=80.0% [49.0, 94.3]"
    assert "80.00%  (95% CI 49.02% - 94.33%)" in format_table(summary)


def _entries(counts: dict[int, int]) -> list[VideoEntry]:
    out = []
    for label, n in counts.items():
        out += [VideoEntry(len(out) + k, f"c{label}/{k}.mp4", label) for k in range(n)]
    return out


def test_a_subset_is_stratified_and_deterministic():
    entries = _entries({0: 5, 1: 3, 2: 1})
    # 7 of them: a full round (3), class 2 is then empty, two more rounds of 2: 3 / 3 / 1
    got = stratified_subset(entries, 7, seed=4)
    assert sorted(Counter(e.label for e in got).values()) == [1, 3, 3]
    assert [e.index for e in got] == sorted(e.index for e in got)            # list order
    assert stratified_subset(entries, 7, seed=4) == got                       # same seed
    big = _entries({c: 30 for c in range(7)})
    counts = Counter(e.label for e in stratified_subset(big, 50, seed=1))
    assert sum(counts.values()) == 50 and max(counts.values()) - min(counts.values()) <= 1
    seeds = {tuple(e.index for e in stratified_subset(big, 50, seed=s)) for s in range(4)}
    assert len(seeds) > 1                                                     # the seed matters
    assert len(stratified_subset(entries, 100)) == 9                          # all there is


# ---------------------------------------------------------------- end to end, on the doubles

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def perturb(tmp_path_factory):
    return tmp_path_factory.mktemp("perturb") / "perturb.json"


@pytest.fixture(scope="module")
def cluster(inputs, perturb):
    import ray

    ray.init(address="local", num_cpus=4, resources={"NPU": 2}, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath(),
                                       "FAKE_ACL_PERTURB": str(perturb)}})
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def fake_ascend_tools(inputs, perturb, monkeypatch):
    monkeypatch.setenv("PATH", f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ACL_PERTURB", str(perturb))
    use_fake_aclruntime()
    perturb.write_text("{}")


def test_npus_2_with_audit_8_reports_it_everywhere(inputs, cluster, tmp_path, capsys):
    code = main(run_args(inputs, tmp_path, "--npus", "2", "--audit", "8", "--strict",
                         ann=inputs.good_list))
    out = capsys.readouterr().out
    assert code == 0
    got = json.loads((tmp_path / "summary.json").read_text())["audit"]
    assert (got["videos_requested"], got["videos_audited"]) == (8, 8)
    assert got["top1_agreement"] == 1.0 and got["top5_set_agreement"] == 1.0
    assert got["max_abs_prob_diff"] < 1e-6 and got["cosine_similarity_min"] > 0.999999
    assert got["passed"] is True and "onnxruntime fp32" in got["reference"]
    assert "top-1 agreement" in out and "100.00%" in out
    page = (tmp_path / "report.html").read_text()
    assert "Precision audit" in page and "8 of 8 videos also scored" in page


def test_a_biased_chip_is_flagged_and_strict_exits_1(inputs, cluster, perturb, tmp_path, capsys):
    perturb.write_text(json.dumps({"bias": [3, 8.0]}))          # class 3 wins everywhere
    code = main(run_args(inputs, tmp_path, "--npus", "2", "--audit", "8", "--strict",
                         ann=inputs.good_list))
    err = capsys.readouterr().err
    got = json.loads((tmp_path / "summary.json").read_text())["audit"]
    assert code == 1 and "warning: audit: top-1 agreement" in err and "(--strict)" in err
    assert got["passed"] is False and got["top1_agreement"] < 0.99
    assert {d["device"] for d in got["top1_differs"]} == {3}                # all class 3
    assert "top-1 agreement" in (tmp_path / "report.html").read_text()


def test_an_fp16_chip_shows_its_rounding(inputs, cluster, perturb, tmp_path):
    perturb.write_text(json.dumps({"fp16": True}))
    summary = execute(parse_args(run_args(inputs, tmp_path, "--npus", "2", "--audit", "8",
                                          "--cfg-options", "harness.run.audit_max_prob_diff=1e-7",
                                          ann=inputs.good_list)))
    got = summary["audit"]
    assert got["videos_audited"] == 8
    assert 0 < got["max_abs_logit_diff"] < 0.05 and 0 < got["max_abs_prob_diff"]
    assert got["passed"] is False and "max |Δprob|" in got["warnings"][-1]


def test_a_resumed_run_audits_the_same_videos_and_only_rescores_those(inputs, tmp_path):
    args = run_args(inputs, tmp_path, "--npus", "1", "--no-ray", "--audit", "3", ann=inputs.good_list)
    first = execute(parse_args(args))
    paired = audit.recorded_indices(tmp_path)
    assert len(paired) == 3 and first["audit"]["videos_audited"] == 3
    for part in (tmp_path / audit.AUDIT_DIR).glob("*.parquet"):   # as if the pairs were lost
        part.unlink()
    again = execute(parse_args(args))
    assert audit.recorded_indices(tmp_path) == paired and again["videos_this_run"] == 3
    assert again["audit"]["top1_agreement"] == 1.0


def test_an_om_without_its_onnx_says_so_and_skips(inputs, tmp_path, caplog):
    lone = tmp_path / "lone.om"
    lone.write_bytes(next((inputs.root / "build").glob("*/model.om")).read_bytes())
    argv = ["--config", str(run_args(inputs, tmp_path)[1]), "--om", str(lone), "--npus", "1",
            "--no-ray", "--ann-file", str(inputs.good_list), "--data-prefix", str(inputs.videos),
            "--work-dir", str(tmp_path / "w"), "--no-progress"]
    with caplog.at_level(logging.WARNING):
        summary = execute(parse_args(argv))
    assert "audit skipped" in caplog.text and "skipped" in summary["audit"]
    assert "audit" in format_table(summary)


def test_a_subset_run_says_it_is_one(inputs, tmp_path):
    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray",
                                          "--subset", "4", "--seed", "2", ann=inputs.good_list)))
    assert summary["videos_total"] == 4 and summary["subset"]["videos"] == 4
    assert "subset" in format_table(summary) and "A subset: 4 of" in (tmp_path / "report.html").read_text()


def test_a_reference_that_cannot_start_skips_the_audit_not_the_run(inputs, cluster, tmp_path,
                                                                   monkeypatch):
    from harness import cluster as cluster_mod
    from harness.errors import DeviceError

    def cannot(*args, **kwargs):
        raise DeviceError("the audit's reference actor did not start: Get timed out")

    monkeypatch.setattr(cluster_mod, "start_reference", cannot)
    summary = execute(parse_args(run_args(inputs, tmp_path, "--npus", "2", "--audit", "4",
                                          ann=inputs.good_list)))
    assert summary["videos_ok"] == 8
    assert summary["audit"] == {"skipped": "the audit's reference actor did not start: Get timed out"}
    assert "skipped" in format_table(summary)


def test_a_cpu_run_in_fp32_has_nothing_to_audit_and_says_so(inputs, tmp_path, capsys):
    # issue 19: --cpus with onnxruntime fp32 runs the reference itself; auditing it would
    # compare the model with itself and always say "ok"
    code = main(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", "--audit", "4",
                         ann=inputs.good_list))
    out = capsys.readouterr().out
    assert code == 0
    why = ("nothing to audit: the device model is already the fp32 reference on a CPU (an audit"
           " would compare it with itself)")
    assert json.loads((tmp_path / "summary.json").read_text())["audit"] == {"skipped": why}
    assert f"audit                skipped: {why}" in out and "verdict" not in out
    assert f"Audit skipped: {why}" in (tmp_path / "report.html").read_text()
    assert not (tmp_path / audit.AUDIT_DIR).exists()
    # the same model on a GPU is audited against it (TF32 or fp16 there)
    from harness.backends import ModelSpec

    spec = ModelSpec.from_artifact(inputs.artifact.directory, "onnxruntime")
    assert audit.reference_spec(spec, "gpu")[0] == spec
