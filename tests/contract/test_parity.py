"""Parity of the wire contract and the domain: no proto field can be dropped silently.

Request side: an EstimateSpec with every field set survives proto → JobSpec → proto unchanged.
Result side: every value the engine's result document carries reaches the SDK's result object.
"""
from __future__ import annotations

import math

import pytest

from cluster.contract.spec import JobSpec
from llc.results import EstimateResult
from llc.v1 import llc_pb2 as pb
from service import convert


def unset_fields(msg, path: str = "spec") -> list[str]:
    """Paths of fields left unset anywhere in `msg` (a oneof counts as set when one member is)."""
    missing = []
    for f in msg.DESCRIPTOR.fields:
        where = f"{path}.{f.name}"
        oneof = f.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:  # a real oneof (proto3 `optional` makes 1-field ones)
            if msg.WhichOneof(oneof.name) is None:
                missing.append(where)
            continue
        if f.is_repeated:
            items = getattr(msg, f.name)
            if not len(items):
                missing.append(where)
            elif f.message_type is not None:
                missing += [m for i, item in enumerate(items) for m in unset_fields(item, f"{where}[{i}]")]
        elif f.message_type is not None:
            if not msg.HasField(f.name):
                missing.append(where)
            else:
                missing += unset_fields(getattr(msg, f.name), where)
        elif f.has_presence:
            if not msg.HasField(f.name):
                missing.append(where)
        elif getattr(msg, f.name) == f.default_value:
            missing.append(where)
    return missing


HUB_DATASET = dict(hub_id="org/data", config="en", split="validation", revision="r1", text_column="body",
                   context_length=48, max_examples=100, shuffle_seed=7, packing=False)
FILES_DATASET = dict(files=["/d/a.jsonl"], file_format="jsonl", input_ids_column="ids", text_column="text",
                     split="train", context_length=32, max_examples=50, shuffle_seed=3, packing=True)


def spec_variant(model: pb.ModelRef, data: dict, restriction_data: dict, compute: dict) -> pb.EstimateSpec:
    return pb.EstimateSpec(
        model=model, dataset=pb.DatasetRef(**data),
        restrictions=[pb.Restriction(name="h", dataset=pb.DatasetRef(**restriction_data), weights=[
            pb.WeightSelector(kind=pb.SELECTOR_KIND_HEAD, pattern="*attn*", layer=1, head=2)])],
        sampler=pb.SamplerSettings(
            step_size=2e-4, nbeta=31.0, gamma=50.0, method=pb.SAMPLER_METHOD_RMSPROP_SGLD, chains=3, burn_in=5,
            draws=40, steps_between_draws=2, seed=11, init_loss=pb.INIT_LOSS_MODE_PAIRED, init_loss_batches=3,
            dtype=pb.DTYPE_BFLOAT16, rmsprop_alpha=0.9, rmsprop_eps=0.05, mala=True, fetch_every=10,
            calibration_budget=0.25),
        compute=pb.ComputeSettings(cpus_per_chain=2.0, max_chain_retries=3, timeout_s=600.0, **compute),
        batch_size=4)


# Fields that exclude each other (model source, hub vs local dataset) are covered across the variants.
VARIANTS = [
    spec_variant(pb.ModelRef(hub_id="org/model", revision="step10", dtype=pb.DTYPE_BFLOAT16, trust_remote_code=True),
                 HUB_DATASET, FILES_DATASET,
                 dict(gpus_per_chain=0.5, ranks_per_chain=1, zero_stage=3, lean_memory=True, chains_per_worker=1)),
    spec_variant(pb.ModelRef(local_path="/models/m", dtype=pb.DTYPE_AUTO), FILES_DATASET, HUB_DATASET,
                 dict(gpus_per_chain=0.0, ranks_per_chain=2, zero_stage=3, lean_memory=False, chains_per_worker=1)),
]

# An LLC trajectory (cluster/trajectory.py): checkpoints of both sources, calibration step, cache opt-out.
TRAJECTORY = spec_variant(pb.ModelRef(hub_id="org/model", dtype=pb.DTYPE_BFLOAT16), FILES_DATASET, HUB_DATASET,
                          dict(gpus_per_chain=0.0, ranks_per_chain=1, zero_stage=3, lean_memory=False, chains_per_worker=4))
TRAJECTORY.checkpoints.extend([pb.Checkpoint(step=100, revision="step100", name="early"),
                               pb.Checkpoint(step=2000, local_path="/ckpts/step2000", name="late")])
TRAJECTORY.calibrate_at_step = 100
TRAJECTORY.use_cache = False


def test_a_trajectory_spec_survives_proto_to_job_spec_and_back():
    job = JobSpec.from_dict(convert.spec_to_dict(TRAJECTORY, "est-1"))
    assert [c.step for c in job.checkpoints] == [100, 2000] and job.calibration_index() == 0 and not job.use_cache
    assert convert.spec_from_dict(job.to_dict()) == TRAJECTORY


# Observables (cluster/observables.py): every field of the request part set.
OBSERVED = spec_variant(pb.ModelRef(hub_id="org/model", dtype=pb.DTYPE_FLOAT32), HUB_DATASET, FILES_DATASET,
                        dict(gpus_per_chain=0.0, ranks_per_chain=1, zero_stage=3, lean_memory=False, chains_per_worker=4))
OBSERVED.observables.CopyFrom(pb.Observables(
    datasets=[pb.ObservableDataset(name="code", dataset=pb.DatasetRef(**FILES_DATASET)),
              pb.ObservableDataset(name="legal", dataset=pb.DatasetRef(**HUB_DATASET))],
    granularity=pb.GRANULARITY_TOKEN, every=3, max_examples=8, include_sampling=False))


def test_an_observables_spec_survives_proto_to_job_spec_and_back():
    job = JobSpec.from_dict(convert.spec_to_dict(OBSERVED, "est-1"))
    assert job.observables.names() == ["code", "legal"] and job.observables.granularity == "token"
    assert convert.spec_from_dict(job.to_dict()) == OBSERVED


def test_the_variants_set_every_field_between_them():
    never_set = set.intersection(*(set(unset_fields(v)) for v in [*VARIANTS, TRAJECTORY, OBSERVED]))
    assert not never_set, f"new proto fields: set them in a VARIANTS spec: {sorted(never_set)}"


@pytest.mark.parametrize("spec", VARIANTS, ids=["hub", "local"])
def test_a_spec_survives_proto_to_job_spec_and_back(spec):
    job = JobSpec.from_dict(convert.spec_to_dict(spec, "est-1"))
    assert convert.spec_from_dict(job.to_dict()) == spec


def engine_result_document() -> dict:
    """A result document as the driver builds it, from the engine's own types."""
    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.result import ChainResult, LLCResult

    def chain(i: int, status: str = "succeeded") -> ChainResult:
        llc = math.nan if status != "succeeded" else 3.0 + i
        trace = [1.0 + 0.01 * (i + k) for k in range(6)]
        return ChainResult(chain=i, seed=100 + i, llc=llc, status=status, loss_trace=trace,
                           init_trace=[], mala_acceptance=0.9, frac_below_init=0.1, steps=12, message="", attempts=1)

    chains = [chain(0), chain(1), chain(2), chain(3, "diverged"), chain(4, "failed")]
    result = LLCResult.from_chains(chains, SamplerConfig(chains=5, draws=6, step_size=1e-4, nbeta=12.5, burn_in=3), init_loss=0.95, moving_elements=10)
    doc = result.to_dict()
    doc.update(name="full", moved_tensors=[{"name": "w", "shape": [2, 5], "elements": 10}], moved_elements=10)
    return {"job_id": "est-1", "restrictions": [doc], "provenance": {"model": {"hub_id": "org/model"}},
            "warnings": ["w"]}


def _same(a, b) -> bool:
    """Equal values, where the engine's None (not computed) and the wire's NaN are the same absence."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() <= b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


# Keys of the engine's document that the wire carries under another shape, each with the reason.
RESHAPED = {
    "init_trace": "paired-mode L_m(w*) per draw, folded into llc; empty here",
    "extra": "driver-side details (node, failures), not part of the result contract",
    "moving_elements": "the same number as moved_elements",
    "llc_sem": "diagnostics.llc_sem, checked below",
    "llc_interval": "llc_mean ± diagnostics.llc_half_width, checked below",
    "init_loss_offset": "diagnostics.init_loss_offset and init_loss_offset_se, checked below",
    "calibration": "None without pilots; tests/engine/test_calibration.py follow it to the SDK",
}


def _strip(d):
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in RESHAPED}
    if isinstance(d, list):
        return [_strip(v) for v in d]
    return d


def test_every_engine_result_value_reaches_the_sdk():
    doc = engine_result_document()
    doc["restrictions"][0]["diagnostics"]["init_loss_offset"] = {"offset": 0.25, "se": 0.125}
    sdk = EstimateResult.from_proto(convert.result_from_dict(doc))
    engine, sdk_r = doc["restrictions"][0], sdk.restrictions[0]
    sdk_view = {**vars(sdk_r), "loss_traces": sdk_r.loss_traces, "diagnostics": vars(sdk_r.diagnostics),
                "chains": [{**vars(c), "status": c.state.lower()} for c in sdk_r.chains]}
    flat = _strip(engine)
    missing = [k for k, v in flat.items() if k not in sdk_view or not _same(v, sdk_view[k])]
    assert not missing, {k: (flat[k], sdk_view.get(k, "<absent>")) for k in missing}
    d = sdk_r.diagnostics
    assert _same(engine["llc_sem"], d.llc_sem)
    assert _same(engine["llc_interval"], [sdk_r.llc_mean - d.llc_half_width, sdk_r.llc_mean + d.llc_half_width])
    assert (d.init_loss_offset, d.init_loss_offset_se) == (0.25, 0.125)
    assert d.failed_chains == [4] and d.diverged_chains == [3]


@pytest.mark.parametrize("message, sdk_type", [(pb.Diagnostics, "Diagnostics"), (pb.Chain, "Chain")])
def test_sdk_result_types_have_every_proto_field(message, sdk_type):
    import dataclasses

    from llc import results

    assert {f.name for f in dataclasses.fields(getattr(results, sdk_type))} == set(message.DESCRIPTOR.fields_by_name)
