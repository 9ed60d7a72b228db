"""LLC trajectories without a cluster: the spec, unit keys, the result document, the cache plan, progress,
and the wire (service.convert → llc.results)."""
from __future__ import annotations

import json
import math

import pytest

from cluster.contract.errors import InvalidField
from cluster.contract.spec import JobSpec
from testbeds.tiny import make_tiny_lm
from cluster.trajectory import CACHED_UNITS_ENV, assemble, merge_cached, unit_keys
from llc.requests import estimate_spec
from llc.results import EstimateResult
from llc.trajectories import checkpoint
from service import convert, unit_cache
from service import job_progress as progress
from service.store import open_store


def spec_dict(ckpts, data, **extra):
    return {"job_id": "t1", "model": {}, "dataset": {"files": [str(data)], "context_length": 16},
            "sampler": {"chains": 2, "draws": 10, "step_size": 1e-3, "nbeta": 10.0, "burn_in": 0},
            "restrictions": [{"name": "full"}, {"name": "l0", "weights": [{"kind": "layer", "layer": 0}]}],
            "checkpoints": [{"step": s, "local_path": str(p)} for s, p in ckpts], **extra}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("traj_ckpts")
    return [(s, make_tiny_lm(root / f"s{s}", "gpt2", seed=i)) for i, s in enumerate((1, 10, 100))]


def test_spec_checks(ckpts, text_jsonl):
    spec = JobSpec.from_dict(spec_dict(ckpts, text_jsonl, calibrate_at_step=10))
    assert spec.calibration_index() == 1 and spec.at_checkpoint(2).model.local_path == str(ckpts[2][1])
    assert JobSpec.from_dict(spec_dict(ckpts, text_jsonl)).calibration_index() == 2  # the last by default
    with pytest.raises(InvalidField, match="unique"):
        JobSpec.from_dict(spec_dict([ckpts[0], ckpts[0]], text_jsonl))
    with pytest.raises(InvalidField, match="calibrate_at_step"):
        JobSpec.from_dict(spec_dict(ckpts, text_jsonl, calibrate_at_step=7))
    bad = spec_dict(ckpts, text_jsonl)
    bad["checkpoints"].append({"step": 5, "revision": "step5"})
    with pytest.raises(InvalidField, match="model.hub_id"):
        JobSpec.from_dict(bad)
    bad["model"] = {"hub_id": "org/m"}
    assert JobSpec.from_dict(bad).at_checkpoint(3).model.revision == "step5"


def test_unit_keys_follow_what_determines_a_result(ckpts, text_jsonl, tmp_path):
    keys, info = unit_keys(JobSpec.from_dict(spec_dict(ckpts, text_jsonl)))
    assert len(keys) == 6 and len(set(keys.values())) == 6 and not info["errors"]
    assert all(v.startswith("sha256:") for v in info["checkpoints"].values())
    again, _ = unit_keys(JobSpec.from_dict(spec_dict(ckpts[:2], text_jsonl)))
    assert again == {k: v for k, v in keys.items() if k[0] in (1, 10)}  # a subset keeps its keys
    seeded = spec_dict(ckpts, text_jsonl)
    seeded["sampler"]["seed"] = 5
    assert not set(unit_keys(JobSpec.from_dict(seeded))[0].values()) & set(keys.values())
    renamed = spec_dict(ckpts, text_jsonl)
    renamed["restrictions"][0]["name"] = "everything"  # the name is a label: same weights, same key
    assert unit_keys(JobSpec.from_dict(renamed))[0][(1, "everything")] == keys[(1, "full")]
    gone = spec_dict([(7, tmp_path / "missing")] + list(ckpts), text_jsonl)
    k2, info2 = unit_keys(JobSpec.from_dict(gone))
    assert (7, "full") not in k2 and info2["errors"] and k2[(1, "full")] == keys[(1, "full")]


def restriction_doc(name, llc, sem=0.1):
    chains = [{"chain": c, "seed": c, "llc": llc, "status": "succeeded", "loss_trace": [1.0], "init_trace": [],
               "mala_acceptance": 0.9, "frac_below_init": 0.0, "steps": 10, "message": "", "attempts": 1, "extra": {}}
              for c in range(2)]
    return {"name": name, "llc_mean": llc, "llc_std": sem * math.sqrt(2), "llc_per_chain": [llc, llc], "init_loss": 1.0,
            "diagnostics": {"llc_sem": sem, "llc_half_width": 2 * sem, "diverged_chains": [], "failed_chains": []},
            "warnings": [], "chains": chains, "moved_tensors": [], "moved_elements": 10, "config": {}}


def checkpoint_doc(step, status="succeeded", names=("full", "l0"), identity=""):
    return {"step": step, "name": f"step{step}", "source": {}, "status": status, "message": "",
            "identity": identity, "restrictions": [restriction_doc(n, step ** 0.5) for n in names] if status ==
            "succeeded" else [], "cached_restrictions": [], "provenance": {}, "warnings": []}


def test_result_document_over_the_wire_to_the_sdk(ckpts, text_jsonl):
    spec = JobSpec.from_dict(spec_dict(ckpts, text_jsonl))
    doc = assemble(spec, [checkpoint_doc(100), checkpoint_doc(1), checkpoint_doc(10, "failed")], {"x": 1},
                   calibration={"step": 100, "name": "step100"})
    assert [c["step"] for c in doc["checkpoints"]] == [1, 10, 100]
    assert [p["step"] for p in doc["trajectories"][0]["points"]] == [1, 10, 100]
    assert math.isnan(doc["trajectories"][0]["points"][1]["llc_mean"])
    result = EstimateResult.from_proto(convert.result_from_dict(json.loads(json.dumps(doc))))
    assert result.is_trajectory and result.calibration_checkpoint["step"] == 100
    rows = result.rows()
    assert [(r["step"], r["restriction"]) for r in rows] == [(1, "full"), (1, "l0"), (10, "full"), (10, "l0"),
                                                             (100, "full"), (100, "l0")]
    assert rows[4]["llc_mean"] == pytest.approx(10.0) and rows[4]["llc_sem"] == pytest.approx(0.1)
    assert "step10 (step 10) failed" in result.table()
    assert result.to_dataframe().shape[0] == 6


def test_cache_plan_answer_and_merge(ckpts, text_jsonl, tmp_path):
    store = open_store(str(tmp_path / "jobs.sqlite"))
    sd = spec_dict(ckpts, text_jsonl)
    plan = unit_cache.plan(store, sd)
    assert not plan.hits and not plan.complete and plan.env() == {}
    spec = JobSpec.from_dict(sd)
    ids = plan.info["checkpoints"]
    driver_doc = assemble(spec, [checkpoint_doc(s, identity=ids[s]) for s, _ in ckpts], {})
    done = unit_cache.complete_result(store, "t1", sd, driver_doc, plan)
    assert done["cache"]["cached_units"] == [] and len(done["cache"]["computed_units"]) == 6
    # Everything stored: a second plan answers it all, and the answer needs no driver.
    plan2 = unit_cache.plan(store, sd)
    assert plan2.complete and json.loads(plan2.env()[CACHED_UNITS_ENV]) == {"1": ["full", "l0"], "10": ["full", "l0"],
                                                                          "100": ["full", "l0"]}
    answer = unit_cache.answer(sd, plan2)
    assert answer["provenance"]["answered_from_cache"] and len(answer["cache"]["cached_units"]) == 6
    assert [p["llc_mean"] for p in answer["trajectories"][0]["points"]] == pytest.approx([1.0, 10 ** 0.5, 10.0])
    # use_cache false: nothing is read.
    assert not unit_cache.plan(store, {**sd, "use_cache": False}).hits
    # A checkpoint whose identity the driver saw differently (changed meanwhile) is not stored.
    other = spec_dict(ckpts[:1], text_jsonl)
    other["sampler"]["seed"] = 9
    p3 = unit_cache.plan(store, other)
    unit_cache.complete_result(store, "t2", other, assemble(JobSpec.from_dict(other),
                                                            [checkpoint_doc(1, identity="sha256:other")], {}), p3)
    assert not unit_cache.plan(store, other).hits
    # Merging keeps the driver's own result over a stored one.
    merged = merge_cached(spec, assemble(spec, [checkpoint_doc(1, names=("full",), identity=ids[1])], {}),
                          plan2.hits, plan2.info)
    c1 = next(c for c in merged["checkpoints"] if c["step"] == 1)
    assert c1["cached_restrictions"] == ["l0"] and [r["name"] for r in c1["restrictions"]] == ["full", "l0"]


def test_progress_per_checkpoint(ckpts, text_jsonl):
    sd = spec_dict(ckpts, text_jsonl)
    prog = progress.initial(sd)
    assert prog["chains_total"] == 12
    progress.apply(prog, {"type": "started", "checkpoints": [{"step": 1, "units": 0, "cached": ["full", "l0"]},
                                                             {"step": 10, "units": 4, "cached": []}]})
    assert prog["chains_total"] == 4 and [c["chains_total"] for c in prog["checkpoints"]] == [0, 4]
    for chain in range(2):
        progress.apply(prog, {"type": "chain", "restriction": "full", "chain": chain, "status": "succeeded",
                              "llc": 1.0, "checkpoint_step": 10})
    assert prog["checkpoints"][1]["chains_finished"] == 2 and prog["chains_finished"] == 2
    msg = convert.progress_to_proto(prog)
    assert [(c.step, c.chains_total, c.chains_finished, c.cached_restrictions) for c in msg.checkpoints] == [
        (1, 0, 0, 2), (10, 4, 2, 0)]


def test_sdk_builds_trajectory_requests(tmp_path):
    (tmp_path / "c1").mkdir()
    spec = estimate_spec(None, str(tmp_path / "d.jsonl"), checkpoints=[(1, str(tmp_path / "c1")), "20=step20"],
                         calibrate_at_step=20, use_cache=False)
    assert spec.checkpoints[0].local_path == str(tmp_path / "c1") and spec.checkpoints[1].revision == "step20"
    assert spec.calibrate_at_step == 20 and spec.HasField("use_cache") and not spec.use_cache
    with pytest.raises(ValueError, match="STEP=SOURCE"):
        checkpoint("step20")


def test_hub_checkpoints_are_keyed_by_their_commits(hub, monkeypatch, tmp_path, text_jsonl):
    """Revisions of one hub repository resolve to commits through huggingface_hub (the local stand-in of
    tests/fixtures/hub.py); an unknown revision has no key and says why."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    sd = spec_dict([], text_jsonl, model={"hub_id": "tiny/lm"})
    sd["checkpoints"] = [{"step": 1, "revision": "step1"}, {"step": 2, "revision": "main"},
                         {"step": 3, "revision": "no-such-branch"}]
    keys, info = unit_keys(JobSpec.from_dict(sd))
    commits = hub.commits["tiny/lm"]
    assert info["checkpoints"] == {1: f"commit:tiny/lm@{commits['step1']}", 2: f"commit:tiny/lm@{commits['main']}"}
    assert sorted(keys) == [(1, "full"), (1, "l0"), (2, "full"), (2, "l0")]
    assert any("step3" in e and "no-such-branch" in e for e in info["errors"])


def test_submission_checks_each_checkpoint_directory(make_server, ckpts, text_jsonl, tmp_path):
    """At CreateEstimate, before Ray: a checkpoint outside the allowed roots, without config.json, or a
    repeated step is refused with the checkpoint's field."""
    from llc import Client
    from llc.errors import LLCError

    server = make_server(allowed_roots=(str(ckpts[0][1].parent), str(text_jsonl.parent)))
    empty = ckpts[0][1].parent / "no-config"
    empty.mkdir(exist_ok=True)
    cases = [
        ([(1, str(ckpts[0][1])), (2, str(empty))], "NOT_FOUND", "checkpoints[1].local_path"),
        ([(1, str(ckpts[0][1])), (2, str(tmp_path))], "PERMISSION_DENIED", "checkpoints[1].local_path"),
        ([(1, str(ckpts[0][1])), (1, str(ckpts[1][1]))], "INVALID_ARGUMENT", "unique"),
    ]
    with Client(server.address, client_id="traj-checks") as client:
        for checkpoints, code, words in cases:
            with pytest.raises(LLCError) as err:
                client.submit(None, str(text_jsonl), checkpoints=checkpoints, step_size=1e-3, nbeta=10.0)
            assert err.value.code == code and words in str(err.value), (code, str(err.value))
