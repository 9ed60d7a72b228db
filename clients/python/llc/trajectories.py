"""LLC trajectories in the SDK: checkpoints in requests, λ̂(t) curves and stage boundaries in results.

    est = client.submit(None, "train.jsonl", checkpoints=[(100, "/ckpts/step100"), (1000, "/ckpts/step1000")],
                        restrictions=["full=all", "h0=head:0.0"], step_size=1e-3, nbeta=30)
    result = client.wait(est.id)
    result.to_dataframe()          # one row per checkpoint × restriction
    result.plot_trajectories("llc_over_training.png")
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from google.protobuf import json_format

from llc.v1 import llc_pb2 as pb


def checkpoint(value: Any) -> pb.Checkpoint:
    """A pb.Checkpoint from (step, source), 'STEP=SOURCE', or a dict of Checkpoint fields. A source that
    looks like a path (/, ./, ~, or an existing directory) is a local directory, else a hub revision."""
    from llc.requests import _looks_local

    if isinstance(value, pb.Checkpoint):
        return value
    if isinstance(value, Mapping):
        return json_format.ParseDict(dict(value), pb.Checkpoint())
    if isinstance(value, str):
        step, eq, source = value.partition("=")
        if not eq:
            raise ValueError(f"checkpoint {value!r}: write STEP=SOURCE, e.g. 1000=/ckpts/step1000 or 1000=step1000")
        value = (step, source)
    try:
        step, source = value
        step = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint {value!r}: give (step, source) with an integer step") from None
    if _looks_local(source):
        return pb.Checkpoint(step=step, local_path=os.path.abspath(os.path.expanduser(source)))
    return pb.Checkpoint(step=step, revision=source)


def add_checkpoints(spec: pb.EstimateSpec, checkpoints: Iterable[Any] | None, calibrate_at_step: int | None,
                    use_cache: bool | None) -> None:
    spec.checkpoints.extend(checkpoint(c) for c in checkpoints or ())
    if calibrate_at_step is not None:
        spec.calibrate_at_step = int(calibrate_at_step)
    if use_cache is not None:
        spec.use_cache = bool(use_cache)


@dataclass
class CheckpointResult:
    step: int
    name: str
    status: str  # succeeded | partial | failed | skipped
    message: str
    identity: str  # commit:<repo>@<sha> | sha256:<hash of config.json + weights>
    restrictions: list[Any]  # llc.results.RestrictionResult
    cached_restrictions: list[str]
    provenance: dict[str, Any]
    warnings: list[str]

    @classmethod
    def from_proto(cls, m: pb.CheckpointResult) -> "CheckpointResult":
        from llc.results import RestrictionResult

        return cls(m.step, m.name, m.status, m.message, m.identity,
                   [RestrictionResult.from_proto(r) for r in m.restrictions], list(m.cached_restrictions),
                   json_format.MessageToDict(m.provenance), list(m.warnings))


@dataclass
class Trajectory:
    restriction: str
    points: list[dict[str, Any]]  # step, llc_mean, llc_std, llc_sem, llc_half_width, cached
    boundaries: list[dict[str, Any]] = field(default_factory=list)  # step, step_low, step_high, confidence, ...

    @classmethod
    def from_proto(cls, m: pb.Trajectory) -> "Trajectory":
        from llc.results import _proto_fields

        return cls(m.restriction, [_proto_fields(p) for p in m.points], [_proto_fields(b) for b in m.boundaries])

    @property
    def steps(self) -> list[int]:
        return [p["step"] for p in self.points]

    @property
    def llc(self) -> list[float]:
        return [p["llc_mean"] for p in self.points]


def rows(result: Any) -> list[dict[str, Any]]:
    """One row per checkpoint × restriction."""
    out = []
    for c in result.checkpoints:
        by_name = {r.name: r for r in c.restrictions}
        for t in result.trajectories:
            r = by_name.get(t.restriction)
            p = next((p for p in t.points if p["step"] == c.step), {})
            out.append({
                "step": c.step, "checkpoint": c.name, "restriction": t.restriction, "status": c.status,
                "llc_mean": p.get("llc_mean", float("nan")), "llc_std": p.get("llc_std", float("nan")),
                "llc_sem": p.get("llc_sem", float("nan")), "llc_half_width": p.get("llc_half_width", float("nan")),
                "chains": len(r.llc_per_chain) if r is not None else 0,
                "rhat": r.diagnostics.rhat if r is not None else float("nan"),
                "mala_acceptance": r.diagnostics.mala_acceptance if r is not None else float("nan"),
                "cached": t.restriction in c.cached_restrictions,
                "boundary_after": any(b["step_low"] == c.step for b in t.boundaries),
                "identity": c.identity,
            })
    return out


def table(result: Any) -> str:
    lines = [f"{'step':>10}  {'restriction':<16} {'llc_mean':>10} {'± sem':>8}  status"]
    for row in rows(result):
        flag = " (cached)" if row["cached"] else ""
        lines.append(f"{row['step']:>10}  {row['restriction']:<16} {row['llc_mean']:>10.4g} {row['llc_sem']:>8.2g}  "
                     f"{row['status']}{flag}")
    for t in result.trajectories:
        for b in t.boundaries:
            lines.append(f"stage boundary [{t.restriction}]: step ≈ {b['step']} (between {b['step_low']} and "
                         f"{b['step_high']}), confidence {b['confidence']:.3f}, slope {b['slope_before']:.3g} → "
                         f"{b['slope_after']:.3g} per decade")
    cal = result.calibration_checkpoint or {}
    if cal.get("step") is not None:
        lines.append(f"sampler settings calibrated at checkpoint {cal.get('name')} (step {cal['step']:g}) and reused")
    lines += [f"warning: {w}" for w in result.warnings]
    return "\n".join(lines)
