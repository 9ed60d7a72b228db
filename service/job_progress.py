"""An estimate's progress, folded from its driver's events (stored as JSON with the job)."""
from __future__ import annotations

import math
from typing import Any

from cluster.contract.sampler import SamplerConfig

FINISHED = ("succeeded", "diverged", "failed")


def initial(spec: dict[str, Any]) -> dict[str, Any]:
    sampler = SamplerConfig.from_dict(spec.get("sampler") or {})
    names = [r.get("name", "full") for r in spec.get("restrictions") or [{"name": "full"}]]
    checkpoints = max(1, len(spec.get("checkpoints") or []))  # a trajectory: until its driver says what is cached
    units = len(names) * sampler.chains * checkpoints
    return {"chains_total": units, "chains_finished": 0, "steps_done": 0, "steps_total": units * sampler.total_steps,
            "steps_per_chain": sampler.total_steps, "fraction": 0.0, "units": {},
            "restrictions": [{"restriction": n, "chains_total": sampler.chains * checkpoints, "chains_finished": 0,
                              "llc_running": None} for n in names]}


def apply(progress: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Updates `progress` (in place, and returns it) with one `progress` or `chain` event."""
    kind = event.get("type")
    if kind == "started" and event.get("checkpoints"):
        _trajectory_started(progress, event["checkpoints"])
        return progress
    if kind not in ("progress", "chain"):
        return progress
    key = f"{event.get('restriction', '')}|{event.get('chain', 0)}"
    if "checkpoint_step" in event:  # a trajectory's unit: (checkpoint, restriction, chain)
        key = f"{event['checkpoint_step']}/{key}"
    unit = progress["units"].setdefault(key, {"step": 0, "llc": None, "done": False,
                                              "restriction": event.get("restriction", ""),
                                              "checkpoint_step": event.get("checkpoint_step")})
    if kind == "progress":
        unit["step"] = max(unit["step"], int(event.get("step") or 0))
        unit["llc"] = event.get("llc_running")
        if event.get("total_steps"):  # the chain's own length: an automatic burn-in is known only once calibrated
            unit["total"] = int(event["total_steps"])
    elif event.get("status") in FINISHED:
        unit["done"] = True
        unit["step"] = unit.get("total", progress["steps_per_chain"])
        if event.get("llc") is not None:
            unit["llc"] = event["llc"]
    _summarise(progress)
    return progress


def _trajectory_started(progress: dict[str, Any], checkpoints: list[dict[str, Any]]) -> None:
    """The driver's `started` of a trajectory: units per checkpoint (cached ones are not run)."""
    chains = progress["restrictions"][0]["chains_total"] // max(1, len(checkpoints)) if progress["restrictions"] else 0
    progress["checkpoints"] = [{"step": int(c["step"]), "chains_total": int(c.get("units", 0)), "chains_finished": 0,
                                "cached_restrictions": len(c.get("cached") or [])} for c in checkpoints]
    total = sum(c["chains_total"] for c in progress["checkpoints"])
    progress.update(chains_total=total, steps_total=total * progress["steps_per_chain"])
    for r in progress["restrictions"]:
        r["chains_total"] = sum(chains for c in checkpoints if r["restriction"] not in (c.get("cached") or []))
    _summarise(progress)


def finish(progress: dict[str, Any]) -> dict[str, Any]:
    """A succeeded estimate is complete whatever events a restart missed."""
    progress.update(chains_finished=progress["chains_total"], steps_done=progress["steps_total"], fraction=1.0)
    for r in progress["restrictions"]:
        r["chains_finished"] = r["chains_total"]
    for c in progress.get("checkpoints", []):
        c["chains_finished"] = c["chains_total"]
    return progress


def _summarise(progress: dict[str, Any]) -> None:
    units = progress["units"]
    per_chain = progress["steps_per_chain"]
    # Chains that reported their length count with it, the others with the spec's (so the total only
    # grows when a calibrated burn-in is longer, and the steps done never go back).
    progress["steps_total"] = (sum(u.get("total", per_chain) for u in units.values())
                               + max(0, progress["chains_total"] - len(units)) * per_chain)
    progress["steps_done"] = min(progress["steps_total"], sum(u["step"] for u in units.values()))
    progress["chains_finished"] = sum(u["done"] for u in units.values())
    total = progress["steps_total"]
    progress["fraction"] = progress["steps_done"] / total if total else 0.0
    for c in progress.get("checkpoints", []):
        c["chains_finished"] = sum(u["done"] for u in units.values() if u.get("checkpoint_step") == c["step"])
    for r in progress["restrictions"]:
        mine = [u for k, u in units.items() if u.get("restriction", k.rsplit("|", 1)[0]) == r["restriction"]]
        r["chains_finished"] = sum(u["done"] for u in mine)
        llcs = [u["llc"] for u in mine if isinstance(u["llc"], (int, float)) and math.isfinite(u["llc"])]
        r["llc_running"] = sum(llcs) / len(llcs) if llcs else None
