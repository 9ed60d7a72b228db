"""llc.v1 messages ↔ the job spec (cluster.contract.spec) and result document (docs/architecture.md).

Unset optional fields are left out of the spec dict, so the engine's defaults apply.
"""
from __future__ import annotations

import math
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from llc import enums
from llc.v1 import llc_pb2 as pb

from service import observables
from service.states import JobState
from service.store import JobRecord, StoredEvent

DTYPES = enums.names(pb.Dtype)
SELECTOR_KINDS = enums.names(pb.SelectorKind)
METHODS = enums.names(pb.SamplerMethod)
INIT_LOSS = enums.names(pb.InitLossMode)
CHAIN_STATES = enums.values(pb.ChainState)
JOB_STATES = {JobState(name): number for name, number in enums.values(pb.EstimateState, upper=True).items()}
PROTO_JOB_STATES = {v: k for k, v in JOB_STATES.items()}
# The other way (spec → message echo), from the same descriptors.
DTYPE_VALUES, SELECTOR_KIND_VALUES = enums.values(pb.Dtype), enums.values(pb.SelectorKind)
METHOD_VALUES, INIT_LOSS_VALUES = enums.values(pb.SamplerMethod), enums.values(pb.InitLossMode)


def _enum(table: dict, value: int, out: dict, key: str, field: str) -> None:
    """Sets out[key] from an enum value; UNSPECIFIED leaves the default. Unknown numbers
    (a newer client) pass through as text so the spec check names the field."""
    if value == 0:
        return
    out[key] = table.get(value, f"<unknown enum value {value} of {field}>")


_COMPUTE_FIELDS = tuple(f.name for f in pb.ComputeSettings.DESCRIPTOR.fields)  # all optional scalars


def _optional(msg: Any, names: tuple[str, ...], out: dict) -> None:
    for name in names:
        if msg.HasField(name):
            out[name] = getattr(msg, name)


# ------------------------------------------------------------------ request → spec
def model_to_dict(m: pb.ModelRef) -> dict[str, Any]:
    out: dict[str, Any] = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
    source = m.WhichOneof("source")
    if source:
        out[source] = getattr(m, source)
    _enum(DTYPES, m.dtype, out, "dtype", "model.dtype")
    return out


def dataset_to_dict(d: pb.DatasetRef) -> dict[str, Any]:
    out: dict[str, Any] = {"hub_id": d.hub_id, "config": d.config, "revision": d.revision, "files": list(d.files),
                           "file_format": d.file_format, "input_ids_column": d.input_ids_column,
                           "max_examples": d.max_examples, "shuffle_seed": d.shuffle_seed}
    _optional(d, ("split", "text_column", "context_length", "packing"), out)
    return out


def restriction_to_dict(r: pb.Restriction) -> dict[str, Any]:
    weights = []
    for w in r.weights:
        sel: dict[str, Any] = {"pattern": w.pattern}
        _enum(SELECTOR_KINDS, w.kind, sel, "kind", "weights.kind")
        _optional(w, ("layer", "head"), sel)
        weights.append(sel)
    out: dict[str, Any] = {"name": r.name, "weights": weights}
    if r.HasField("dataset"):
        out["dataset"] = dataset_to_dict(r.dataset)
    return out


# SamplerSettings: its enum fields with their (number → name, name → number) tables; the rest are scalars.
_SAMPLER_ENUMS = {"method": (METHODS, METHOD_VALUES), "init_loss": (INIT_LOSS, INIT_LOSS_VALUES),
                  "dtype": (DTYPES, DTYPE_VALUES)}
_SAMPLER_SCALARS = tuple(f.name for f in pb.SamplerSettings.DESCRIPTOR.fields if f.name not in _SAMPLER_ENUMS)


def sampler_to_dict(s: pb.SamplerSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _optional(s, _SAMPLER_SCALARS, out)
    for name, (names, _) in _SAMPLER_ENUMS.items():
        _enum(names, getattr(s, name), out, name, f"sampler.{name}")
    return out


def spec_to_dict(spec: pb.EstimateSpec, job_id: str) -> dict[str, Any]:
    """The JobSpec dict for `spec` (validate it with JobSpec.from_dict)."""
    out: dict[str, Any] = {"job_id": job_id, "model": model_to_dict(spec.model), "dataset": dataset_to_dict(spec.dataset),
                           "sampler": sampler_to_dict(spec.sampler), "restrictions": [restriction_to_dict(r) for r in spec.restrictions]}
    compute: dict[str, Any] = {}
    _optional(spec.compute, _COMPUTE_FIELDS, compute)
    out["compute"] = compute
    if spec.HasField("batch_size"):
        out["batch_size"] = spec.batch_size
    if spec.checkpoints:  # a trajectory (cluster/trajectory.py)
        out["checkpoints"] = [{"step": c.step, "revision": c.revision, "local_path": c.local_path, "name": c.name}
                              for c in spec.checkpoints]
    if spec.HasField("calibrate_at_step"):
        out["calibrate_at_step"] = spec.calibrate_at_step
    if spec.HasField("use_cache"):
        out["use_cache"] = spec.use_cache
    if spec.HasField("observables"):  # service/observables.py
        out["observables"] = observables.to_dict(spec.observables, dataset_to_dict)
    return out


# ------------------------------------------------------------------ spec → message (echo)
def _set(msg: Any, data: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if name in data and data[name] is not None and data[name] != "auto":  # "auto" travels as unset
            setattr(msg, name, data[name])


def dataset_from_dict(d: dict[str, Any], msg: pb.DatasetRef) -> None:
    _set(msg, d, ("hub_id", "config", "split", "revision", "file_format", "text_column", "input_ids_column",
                  "context_length", "max_examples", "shuffle_seed", "packing"))
    msg.files.extend(d.get("files") or [])


def sampler_from_dict(s: dict[str, Any], msg: pb.SamplerSettings) -> pb.SamplerSettings:
    """SamplerConfig.to_dict() → SamplerSettings ("auto" travels as unset)."""
    _set(msg, s, _SAMPLER_SCALARS)
    for name, (_, values) in _SAMPLER_ENUMS.items():
        setattr(msg, name, values.get(s.get(name, ""), 0))
    return msg


def spec_from_dict(d: dict[str, Any]) -> pb.EstimateSpec:
    spec = pb.EstimateSpec()
    m = d.get("model") or {}
    _set(spec.model, m, ("revision", "trust_remote_code"))
    if m.get("hub_id"):
        spec.model.hub_id = m["hub_id"]
    elif m.get("local_path"):
        spec.model.local_path = m["local_path"]
    spec.model.dtype = DTYPE_VALUES.get(m.get("dtype", ""), 0)
    dataset_from_dict(d.get("dataset") or {}, spec.dataset)
    for r in d.get("restrictions") or []:
        rm = spec.restrictions.add(name=r.get("name", ""))
        for w in r.get("weights") or []:
            wm = rm.weights.add(kind=SELECTOR_KIND_VALUES.get(w.get("kind", "pattern"), 0), pattern=w.get("pattern", ""))
            if w.get("layer", -1) >= 0:
                wm.layer = w["layer"]
            if w.get("head", -1) >= 0:
                wm.head = w["head"]
        if r.get("dataset"):
            dataset_from_dict(r["dataset"], rm.dataset)
    sampler_from_dict(d.get("sampler") or {}, spec.sampler)
    _set(spec.compute, d.get("compute") or {}, _COMPUTE_FIELDS)
    if "batch_size" in d:
        spec.batch_size = d["batch_size"]
    for c in d.get("checkpoints") or []:
        cm = spec.checkpoints.add(step=c.get("step", 0), name=c.get("name", ""))
        if c.get("local_path"):
            cm.local_path = c["local_path"]
        else:
            cm.revision = c.get("revision", "")
    if d.get("checkpoints") and d.get("calibrate_at_step", -1) >= 0:
        spec.calibrate_at_step = d["calibrate_at_step"]
    if d.get("checkpoints") and "use_cache" in d:
        spec.use_cache = d["use_cache"]
    if d.get("observables"):
        observables.from_dict(d["observables"], spec.observables, dataset_from_dict)
    return spec


# ------------------------------------------------------------------ results
def _num(x: Any) -> float:
    """JSON null (a missing diagnostic) → NaN; proto doubles carry NaN fine."""
    return math.nan if x is None else float(x)


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    json_format.ParseDict(_jsonable(data), s)
    return s


def _jsonable(x: Any) -> Any:
    """Struct has no NaN/inf in JSON form; make them strings ('NaN') so provenance survives."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def chain_from_dict(c: dict[str, Any]) -> pb.Chain:
    return pb.Chain(chain=int(c.get("chain", 0)), seed=int(c.get("seed") or 0), llc=_num(c.get("llc")),
                    state=CHAIN_STATES.get(c.get("status", ""), pb.CHAIN_STATE_UNSPECIFIED),
                    loss_trace=[_num(x) for x in c.get("loss_trace") or []],
                    mala_acceptance=_num(c.get("mala_acceptance")), frac_below_init=_num(c.get("frac_below_init")),
                    steps=int(c.get("steps") or 0), message=c.get("message") or "", attempts=int(c.get("attempts") or 0),
                    gradient_noise=_num(c.get("gradient_noise")), equipartition=_num(c.get("equipartition")))


def restriction_result_from_dict(r: dict[str, Any]) -> pb.RestrictionResult:
    diag = r.get("diagnostics") or {}
    return pb.RestrictionResult(
        name=r.get("name", ""), llc_mean=_num(r.get("llc_mean")), llc_std=_num(r.get("llc_std")),
        llc_per_chain=[_num(x) for x in r.get("llc_per_chain") or []], init_loss=_num(r.get("init_loss")),
        diagnostics=pb.Diagnostics(rhat=_num(diag.get("rhat")), ess=_num(diag.get("ess")),
                                   mala_acceptance=_num(diag.get("mala_acceptance")),
                                   frac_below_init=_num(diag.get("frac_below_init")),
                                   diverged_chains=[int(i) for i in diag.get("diverged_chains") or []],
                                   failed_chains=[int(i) for i in diag.get("failed_chains") or []],
                                   init_loss_offset=_num((diag.get("init_loss_offset") or {}).get("offset")),
                                   init_loss_offset_se=_num((diag.get("init_loss_offset") or {}).get("se")),
                                   **{k: _num(diag.get(k)) for k in ("ess_tail", "trend_t", "llc_sem", "llc_half_width",
                                                                     "gradient_noise", "equipartition")}),
        warnings=list(r.get("warnings") or []), chains=[chain_from_dict(c) for c in r.get("chains") or []],
        moved_tensors=[pb.MovedTensor(name=t.get("name", ""), shape=list(t.get("shape") or []),
                                      elements=int(t.get("elements") or 0)) for t in r.get("moved_tensors") or []],
        moved_elements=int(r.get("moved_elements") or 0),
        sampler=sampler_from_dict(r.get("config") or {}, pb.SamplerSettings()),
        calibration=calibration_from_dict(r.get("calibration") or {}))


def calibration_from_dict(c: dict[str, Any]) -> pb.Calibration:
    """The engine's calibration record (cluster.engine.calibrate.choose + the nβ rule)."""
    rule, cost = c.get("nbeta_rule") or {}, c.get("cost") or {}
    return pb.Calibration(
        pilots=[pb.Pilot(step_size=_num(p.get("step_size")), llc=_num(p.get("llc")),
                         mala_acceptance=_num(p.get("mala_acceptance")), gradient_noise=_num(p.get("gradient_noise")),
                         trend_t=_num(p.get("trend_t")), verdict=p.get("verdict") or "", why=p.get("why") or "",
                         chosen=bool(p.get("chosen"))) for p in c.get("pilots") or []],
        step_size=_num(c.get("step_size")), step_size_reason=c.get("step_size_reason") or "",
        burn_in=int(c.get("burn_in") or 0), burn_in_reason=c.get("burn_in_reason") or "",
        nbeta=_num(c.get("nbeta")), nbeta_source=rule.get("source") or "", sample_size=int(rule.get("sample_size") or 0),
        pilot_steps=int(cost.get("pilot_steps") or 0), main_steps=int(cost.get("main_steps") or 0),
        cost_fraction=_num(cost.get("fraction")), discarded_draws=int(c.get("discarded_draws") or 0))


def result_from_dict(doc: dict[str, Any]) -> pb.EstimateResult:
    out = pb.EstimateResult(restrictions=[restriction_result_from_dict(r) for r in doc.get("restrictions") or []],
                            provenance=_struct(doc.get("provenance") or {}), warnings=list(doc.get("warnings") or []))
    if doc.get("checkpoints") is not None:
        trajectory_into(doc, out)
    if doc.get("observables"):
        out.observables.CopyFrom(observables.result_from_dict(doc["observables"]))
    return out


def trajectory_into(doc: dict[str, Any], out: pb.EstimateResult) -> None:
    """A trajectory's fields (cluster.trajectory.assemble) into the result message."""
    out.checkpoints.extend(pb.CheckpointResult(
        step=int(c.get("step") or 0), name=c.get("name") or "", status=c.get("status") or "",
        message=c.get("message") or "", identity=c.get("identity") or "",
        restrictions=[restriction_result_from_dict(r) for r in c.get("restrictions") or []],
        cached_restrictions=list(c.get("cached_restrictions") or []), provenance=_struct(c.get("provenance") or {}),
        warnings=list(c.get("warnings") or [])) for c in doc.get("checkpoints") or [])
    for t in doc.get("trajectories") or []:
        out.trajectories.add(
            restriction=t.get("restriction") or "",
            points=[pb.TrajectoryPoint(step=int(p["step"]), cached=bool(p.get("cached")),
                                       **{k: _num(p.get(k)) for k in ("llc_mean", "llc_std", "llc_sem", "llc_half_width")})
                    for p in t.get("points") or []],
            boundaries=[pb.StageBoundary(step=int(b["step"]), step_low=int(b["step_low"]), step_high=int(b["step_high"]),
                                         **{k: _num(b.get(k)) for k in ("confidence", "slope_before", "slope_after",
                                                                        "delta_chi2")})
                        for b in t.get("boundaries") or []])
    out.stage_detection.CopyFrom(_struct(doc.get("stage_detection") or {}))
    out.calibration_checkpoint.CopyFrom(_struct(doc.get("calibration_checkpoint") or {}))
    out.cached_units.extend(pb.CachedUnit(step=int(step), restriction=str(name))
                            for step, name in (doc.get("cache") or {}).get("cached_units") or [])


# ------------------------------------------------------------------ estimates and events
def timestamp(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def progress_to_proto(progress: dict[str, Any]) -> pb.EstimateProgress:
    return pb.EstimateProgress(
        chains_total=int(progress.get("chains_total", 0)), chains_finished=int(progress.get("chains_finished", 0)),
        steps_done=int(progress.get("steps_done", 0)), steps_total=int(progress.get("steps_total", 0)),
        fraction=float(progress.get("fraction", 0.0)),
        restrictions=[pb.RestrictionProgress(restriction=r["restriction"], chains_total=r["chains_total"],
                                             chains_finished=r["chains_finished"], llc_running=_num(r.get("llc_running")))
                      for r in progress.get("restrictions", [])],
        checkpoints=[pb.CheckpointProgress(step=int(c["step"]), chains_total=int(c.get("chains_total", 0)),
                                           chains_finished=int(c.get("chains_finished", 0)),
                                           cached_restrictions=int(c.get("cached_restrictions", 0)))
                     for c in progress.get("checkpoints", [])])


def estimate_to_proto(rec: JobRecord, with_result: bool = True) -> pb.Estimate:
    est = pb.Estimate(estimate_id=rec.id, request_id=rec.request_id, owner=rec.owner, state=JOB_STATES[rec.state],
                      spec=spec_from_dict(rec.spec), progress=progress_to_proto(rec.progress), last_seq=rec.last_seq,
                      ray_submission_id=rec.submission_id)
    for name, seconds in (("create_time", rec.created_at), ("start_time", rec.started_at), ("end_time", rec.ended_at)):
        ts = timestamp(seconds)
        if ts is not None:
            getattr(est, name).CopyFrom(ts)
    if with_result and rec.result_json:
        est.result.CopyFrom(result_from_dict(rec.result))
    if rec.error_code or rec.error_message:
        est.error.CopyFrom(pb.EstimateError(code=rec.error_code, message=rec.error_message))
    return est


def estimate_summary(rec: JobRecord) -> pb.Estimate:
    """ListEstimates' default view: what a table needs, bounded in size (no result; of the spec
    only the model reference and the restriction names)."""
    est = estimate_to_proto(rec, with_result=False)
    full = est.spec
    est.spec.CopyFrom(pb.EstimateSpec(model=full.model, restrictions=[pb.Restriction(name=r.name)
                                                                      for r in full.restrictions]))
    return est


def preview_from_dict(r: dict[str, Any]) -> pb.RestrictionPreview:
    return pb.RestrictionPreview(name=r.get("name", ""), elements=int(r.get("elements") or 0),
                                 tensors=[pb.MovedTensor(name=t.get("name", ""), shape=list(t.get("shape") or []),
                                                         elements=int(t.get("elements") or 0))
                                          for t in r.get("tensors") or []])


def event_to_proto(stored: StoredEvent) -> pb.WatchEstimateResponse | None:
    """A watch message for a driver event; None for `result`/`error`, which reach
    watchers as the terminal snapshot."""
    e = stored.event
    msg = pb.WatchEstimateResponse(seq=stored.seq)
    ts = timestamp(float(e.get("time") or 0))
    if ts is not None:
        msg.time.CopyFrom(ts)
    kind = e.get("type")
    if kind == "started":
        msg.started.CopyFrom(pb.StartedEvent(chains_total=int(e.get("chains_total") or 0),
                                             restrictions=list(e.get("restrictions") or [])))
    elif kind == "progress":
        msg.progress.CopyFrom(pb.ChainProgressEvent(restriction=e.get("restriction", ""), chain=int(e.get("chain", 0)),
                                                    step=int(e.get("step", 0)), total_steps=int(e.get("total_steps", 0)),
                                                    llc_running=_num(e.get("llc_running")),
                                                    checkpoint_step=int(e.get("checkpoint_step") or 0)))
    elif kind == "chain":
        msg.chain.CopyFrom(pb.ChainStatusEvent(restriction=e.get("restriction", ""), chain=int(e.get("chain", 0)),
                                               state=CHAIN_STATES.get(e.get("status", ""), 0), llc=_num(e.get("llc")),
                                               attempt=int(e.get("attempt") or 0), message=e.get("message") or "",
                                               checkpoint_step=int(e.get("checkpoint_step") or 0)))
    elif kind == "preview":
        msg.preview.restrictions.extend(preview_from_dict(r) for r in e.get("restrictions") or [])
    else:
        return None
    return msg
