"""LLC over training: one job over many checkpoints (docs/trajectories.md).

A JobSpec with `checkpoints` is a trajectory: the same restrictions and sampler
settings at every checkpoint. The driver (`run_trajectory`) runs the checkpoints one
after another, the calibration checkpoint first; each checkpoint's (restriction, chain)
units go to a chain pool whose workers load that checkpoint once for all of its units.
Automatic settings (step size, nβ, burn-in) are calibrated on the calibration checkpoint
only and the resolved numbers are reused for every other one. A checkpoint that cannot be
loaded or whose chains keep failing is marked failed with its error; the others go on.

The cache (service/runner.py asks the store): each (checkpoint, restriction) has a key
(`unit_keys`) over what determines its result: the checkpoint's commit or content hash,
the dataset's source identity, the restriction's weights, the sampler settings (seed and
chains included), batch size, dtype and the engine's versions. The front end sends the
driver the units it answers from the store (LLC_CACHED_UNITS); the driver skips them and
the front end merges them back (`assemble`).

Torch-free at import (the front end uses `unit_keys` and `assemble`).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from cluster.contract.errors import Cancelled, DeadlineExceeded, LLCError
from cluster.contract.spec import DatasetRef, JobSpec

log = logging.getLogger(__name__)

CACHED_UNITS_ENV = "LLC_CACHED_UNITS"  # {"<step>": [restriction name, ...]} the driver skips
CACHE_FORMAT = 1  # bump when what a unit's result means changes (a new engine estimate, say)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "special_tokens_map.json")
_CHUNK = 1 << 20


# ----------------------------------------------------------------- identities and cache keys
def _hash_files(paths: list[Path], h: Any) -> None:
    for p in paths:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)


def checkpoint_identity(spec: JobSpec, index: int) -> str:
    """'sha256:<hex>' (config.json + weights of a local directory, cluster.hub.content_hash) or
    'commit:<repo>@<sha>' (a hub revision resolved to its commit). Raises the hub's domain errors."""
    from cluster.hub import content_hash, resolve_commit

    cp = spec.checkpoints[index]
    if cp.local_path:
        return "sha256:" + content_hash(cp.local_path)
    return f"commit:{spec.model.hub_id}@{resolve_commit(spec.model.hub_id, cp.revision, 'model')}"


def tokenizer_identity(spec: JobSpec, index: int) -> str:
    """Hash of a local checkpoint's tokenizer files (they turn the dataset into tokens); '' for hub ones
    (the commit covers them)."""
    cp = spec.checkpoints[index]
    if not cp.local_path:
        return ""
    files = sorted((Path(cp.local_path) / n for n in TOKENIZER_FILES if (Path(cp.local_path) / n).is_file()),
                   key=lambda p: p.name)
    h = hashlib.sha256()
    _hash_files(files, h)
    return h.hexdigest()


def dataset_identity(ref: DatasetRef) -> str:
    """The dataset's source: its reference plus the bytes of local files, or the hub commit."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(ref), sort_keys=True).encode())
    if ref.files:
        paths = sorted({Path(m) for f in ref.files for m in (sorted(glob.glob(f)) if glob.has_magic(f) else [f])})
        _hash_files(paths, h)
    else:
        from cluster.hub import resolve_commit

        h.update(resolve_commit(ref.hub_id, ref.revision or None, "dataset").encode())
    return h.hexdigest()


def engine_version() -> dict[str, str]:
    from cluster.result_document import library_versions

    v = library_versions()
    return {"cache_format": str(CACHE_FORMAT), **{k: v[k] for k in ("torch", "transformers", "llc")}}


def unit_keys(spec: JobSpec) -> tuple[dict[tuple[int, str], str], dict[str, Any]]:
    """Cache key of every (checkpoint step, restriction name) whose inputs can be identified here, and
    what was identified ({"checkpoints": {step: identity}, "errors": [...]}). A checkpoint or dataset
    that cannot be identified (hub unreachable, files unreadable) has no key: it is computed."""
    info: dict[str, Any] = {"checkpoints": {}, "errors": []}
    datasets: dict[str, str | None] = {}

    def data_id(ref: DatasetRef) -> str | None:
        k = json.dumps(dataclasses.asdict(ref), sort_keys=True)
        if k not in datasets:
            try:
                datasets[k] = dataset_identity(ref)
            except (LLCError, OSError) as exc:
                datasets[k] = None
                info["errors"].append(f"dataset {ref.hub_id or ref.files[:1]}: {exc}")
        return datasets[k]

    ids: dict[int, str | None] = {}
    for i, cp in enumerate(spec.checkpoints):
        try:
            ids[i] = checkpoint_identity(spec, i) + "|tok:" + tokenizer_identity(spec, i)
            info["checkpoints"][cp.step] = ids[i].split("|")[0]
        except (LLCError, OSError) as exc:
            ids[i] = None
            info["errors"].append(f"checkpoint {cp.label}: {exc}")
    sampler = spec.sampler.to_dict()
    cal = None
    if spec.sampler.auto_fields:  # settings chosen at the calibration checkpoint: they depend on it
        cal = ids.get(spec.calibration_index())
        if cal is None:
            return {}, info
    versions = engine_version()
    keys: dict[tuple[int, str], str] = {}
    for i, cp in enumerate(spec.checkpoints):
        if ids[i] is None:
            continue
        for r in spec.restrictions:
            d = data_id(r.dataset or spec.dataset)
            if d is None:
                continue
            doc = {"checkpoint": ids[i], "dataset": d, "weights": [dataclasses.asdict(w) for w in r.weights],
                   "sampler": sampler, "batch_size": spec.batch_size, "dtype": spec.model.dtype,
                   "lean_memory": spec.compute.lean_memory, "ranks": spec.compute.ranks, "calibrated_on": cal,
                   "engine": versions}
            keys[(cp.step, r.name)] = hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
    return keys, info


# ----------------------------------------------------------------- the result
def _point(step: int, r: dict[str, Any] | None, cached: bool) -> dict[str, Any]:
    if r is None:
        return {"step": step, "llc_mean": math.nan, "llc_std": math.nan, "llc_sem": math.nan,
                "llc_half_width": math.nan, "chains": 0, "cached": False}
    diag = r.get("diagnostics") or {}
    ok = [x for x in r.get("llc_per_chain") or [] if isinstance(x, (int, float)) and math.isfinite(x)]
    sem = diag.get("llc_sem")
    if not isinstance(sem, (int, float)) or not math.isfinite(sem):
        std = r.get("llc_std")
        sem = std / math.sqrt(len(ok)) if isinstance(std, (int, float)) and len(ok) > 1 else math.nan
    num = lambda x: float(x) if isinstance(x, (int, float)) else math.nan  # noqa: E731
    return {"step": step, "llc_mean": num(r.get("llc_mean")), "llc_std": num(r.get("llc_std")), "llc_sem": float(sem),
            "llc_half_width": num(diag.get("llc_half_width")), "chains": len(ok), "cached": cached}


def assemble(spec: JobSpec, checkpoints: list[dict[str, Any]], provenance: dict[str, Any],
             warnings: list[str] | None = None, calibration: dict[str, Any] | None = None,
             cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """The trajectory's result document from its per-checkpoint documents (sorted by step here):
    per restriction λ̂(t) with its uncertainty at every step, and the stage boundaries on each curve."""
    from cluster.stages import DEFAULTS, find_boundaries

    checkpoints = sorted(checkpoints, key=lambda c: c["step"])
    trajectories = []
    for r in spec.restrictions:
        points = []
        for c in checkpoints:
            entry = next((x for x in c.get("restrictions") or [] if x.get("name") == r.name), None)
            points.append(_point(c["step"], entry, r.name in (c.get("cached_restrictions") or [])))
        good = [p for p in points if math.isfinite(p["llc_mean"])]
        boundaries = find_boundaries([p["step"] for p in good], [p["llc_mean"] for p in good],
                                     [p["llc_sem"] for p in good])
        trajectories.append({"restriction": r.name, "points": points, "boundaries": boundaries})
    failed = [c for c in checkpoints if c.get("status") == "failed"]
    warnings = list(warnings or [])
    warnings += [f"checkpoint {c['name']} (step {c['step']}) failed: {c.get('message', '')}" for c in failed]
    return {
        "job_id": spec.job_id,
        "restrictions": [],  # per checkpoint in `checkpoints`
        "checkpoints": checkpoints,
        "trajectories": trajectories,
        "stage_detection": dict(DEFAULTS),
        "calibration_checkpoint": calibration or {},
        "cache": cache or {"used": False, "cached_units": [], "computed_units": []},
        "provenance": provenance,
        "warnings": warnings,
    }


def merge_cached(spec: JobSpec, doc: dict[str, Any], cached: dict[tuple[int, str], dict[str, Any]],
                 cache_info: dict[str, Any]) -> dict[str, Any]:
    """`doc` (the driver's trajectory result, without the cached units) with the cached restriction
    results put back in their checkpoints, re-assembled."""
    by_step = {c["step"]: c for c in doc.get("checkpoints") or []}
    for i, cp in enumerate(spec.checkpoints):
        mine = {name: r for (step, name), r in cached.items() if step == cp.step}
        if not mine:
            continue
        c = by_step.setdefault(cp.step, _checkpoint_stub(spec, i, "succeeded", ""))
        have = {r.get("name") for r in c.get("restrictions") or []}
        mine = {name: r for name, r in mine.items() if name not in have}  # the driver's own result wins
        if not mine:
            continue
        c["restrictions"] = [*(c.get("restrictions") or []), *({**r, "name": name} for name, r in mine.items())]
        order = [r.name for r in spec.restrictions]
        c["restrictions"].sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
        c["cached_restrictions"] = sorted(set(c.get("cached_restrictions") or []) | set(mine))
        if c.get("status") == "skipped":
            c["status"] = "succeeded"
        if c.get("identity") in (None, "") and cache_info.get("checkpoints", {}).get(cp.step):
            c["identity"] = cache_info["checkpoints"][cp.step]
    cached_units = sorted([c["step"], n] for c in by_step.values() for n in c.get("cached_restrictions") or [])
    computed = [[c["step"], r["name"]] for c in by_step.values() for r in c.get("restrictions") or []
                if r["name"] not in (c.get("cached_restrictions") or [])]
    return assemble(spec, list(by_step.values()), doc.get("provenance") or {}, doc.get("warnings"),
                    doc.get("calibration_checkpoint"),
                    {"used": True, "cached_units": cached_units, "computed_units": sorted(computed),
                     "errors": cache_info.get("errors", [])})


def _checkpoint_stub(spec: JobSpec, index: int, status: str, message: str) -> dict[str, Any]:
    cp = spec.checkpoints[index]
    source = {"local_path": cp.local_path} if cp.local_path else {"hub_id": spec.model.hub_id, "revision": cp.revision}
    return {"step": cp.step, "name": cp.label, "source": source, "status": status, "message": message,
            "identity": "", "restrictions": [], "cached_restrictions": [], "provenance": {}, "warnings": []}


# ----------------------------------------------------------------- the driver's loop
class _CheckpointEvents:
    """The events of one checkpoint's pool, tagged with the checkpoint; its `started` is the job's."""

    def __init__(self, events: Any, step: int, name: str, first: bool):
        self.events, self.step, self.name, self.first = events, step, name, first

    def emit(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        if type_ == "started" or (type_ == "preview" and not self.first):
            return None
        return self.events.emit(type_, checkpoint_step=self.step, checkpoint=self.name, **fields)


def cached_units_from_env() -> dict[int, set[str]]:
    text = os.environ.get(CACHED_UNITS_ENV, "")
    if not text:
        return {}
    try:
        data = json.loads(text)
        return {int(step): {str(n) for n in names} for step, names in data.items()}
    except (ValueError, TypeError, AttributeError):
        log.warning("ignoring a malformed %s", CACHED_UNITS_ENV)
        return {}


def run_trajectory(spec: JobSpec, events: Any, stop: threading.Event, holder: dict[str, Any] | None = None,
                   skip: dict[int, set[str]] | None = None) -> dict[str, Any]:
    """Every checkpoint's units, the calibration checkpoint first; returns the trajectory's result document.
    `holder["job"]` is the running checkpoint's driver.Job (so a cancel can shut its pool down)."""
    from cluster.driver import Job
    from cluster.result_document import base_provenance, utc_now

    skip = skip if skip is not None else cached_units_from_env()
    holder = holder if holder is not None else {}
    cal = spec.calibration_index()
    order = [cal] + sorted((i for i in range(len(spec.checkpoints)) if i != cal), key=lambda i: spec.checkpoints[i].step)
    todo = {i: [r for r in spec.restrictions if r.name not in skip.get(spec.checkpoints[i].step, set())]
            for i in order}
    if spec.sampler.auto_fields and any(todo.values()):
        todo[cal] = list(spec.restrictions)  # the shared settings are calibrated here: run it whole
    chains = spec.sampler.chains
    provenance = base_provenance(spec, utc_now())
    events.emit("started", chains_total=sum(len(v) for v in todo.values()) * chains,
                restrictions=[r.name for r in spec.restrictions], provenance=provenance,
                checkpoints=[{"step": cp.step, "name": cp.label, "units": len(todo[i]) * chains,
                              "cached": sorted(skip.get(cp.step, set()))} for i, cp in enumerate(spec.checkpoints)])
    deadline = time.monotonic() + spec.compute.timeout_s if spec.compute.timeout_s > 0 else None
    settings: dict[str, dict[str, Any]] = {}  # by restriction name: the shared resolved sampler settings
    calibrations: dict[str, dict[str, Any]] = {}
    calibrated_at: dict[str, Any] = {}
    docs: list[dict[str, Any]] = []
    first = True
    for i in order:
        cp = spec.checkpoints[i]
        if not todo[i]:
            docs.append(_checkpoint_stub(spec, i, "skipped", "every restriction is answered from the cache"))
            continue
        if stop.is_set():
            raise Cancelled("the job was cancelled; its chains were stopped")
        sub = spec.at_checkpoint(i, todo[i])
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"the job ran longer than compute.timeout_s={spec.compute.timeout_s:g} s and "
                                       "was stopped; raise compute.timeout_s, or give fewer checkpoints or chains")
            sub.compute = dataclasses.replace(sub.compute, timeout_s=left)
        job = Job(sub, _CheckpointEvents(events, cp.step, cp.label, first), stop)
        job.preset_settings = {k: settings[r.name] for k, r in enumerate(sub.restrictions) if r.name in settings}
        job.preset_calibrations = {k: {**calibrations[r.name], "calibrated_at": calibrated_at}
                                   for k, r in enumerate(sub.restrictions) if r.name in calibrations}
        holder["job"] = job
        status, message = "succeeded", ""
        try:
            doc = job.run()
        except (Cancelled, DeadlineExceeded):
            raise
        except LLCError as exc:
            # The driver's ChainsFailed carries what finished; a load error (NotFound...) nothing.
            partial = getattr(exc, "partial", None)
            doc = partial if partial is not None else (job.document() if job.pool is not None and job.pool.results
                                                       else {"restrictions": [], "provenance": {}, "warnings": []})
            status, message = ("partial" if doc.get("restrictions") else "failed"), f"{exc.code}: {exc.message}"
            log.warning("checkpoint %s failed: %s", cp.label, message)
        finally:
            if job.pool is not None:
                job.pool.shutdown()
        first = False
        pool = job.pool
        if (spec.sampler.auto_fields and pool is not None and not settings and pool.settings
                and len(pool.settings) == len(sub.restrictions)):  # the first checkpoint that calibrated
            settings = {sub.restrictions[k].name: s for k, s in pool.settings.items()}
            calibrations = {sub.restrictions[k].name: c for k, c in pool.calibrations.items()}
            calibrated_at = {"step": cp.step, "name": cp.label}
        entry = _checkpoint_stub(spec, i, status, message)
        prov = {k: v for k, v in (doc.get("provenance") or {}).items() if k not in ("spec", "versions")}
        model = prov.get("model") or {}
        if model.get("content_hash"):
            entry["identity"] = "sha256:" + model["content_hash"]
        elif model.get("commit"):
            entry["identity"] = f"commit:{spec.model.hub_id}@{model['commit']}"
        entry.update(restrictions=doc.get("restrictions") or [], provenance=prov, warnings=doc.get("warnings") or [])
        docs.append(entry)
    if not calibrated_at and spec.sampler.auto_fields:
        calibrated_at = {"step": None, "name": "", "note": "no checkpoint was calibrated (all failed or cached)"}
    elif not spec.sampler.auto_fields:
        calibrated_at = {"step": None, "name": "", "note": "explicit sampler settings: nothing was calibrated"}
    if all(d["status"] == "failed" for d in docs if d["status"] != "skipped") and any(
            d["status"] == "failed" for d in docs):
        from cluster.contract.errors import FailedPrecondition

        first_failed = next(d for d in docs if d["status"] == "failed")
        raise FailedPrecondition(f"every checkpoint failed, e.g. {first_failed['name']}: {first_failed['message']}")
    computed = sorted([d["step"], r["name"]] for d in docs for r in d["restrictions"])
    return assemble(spec, docs, provenance, calibration=calibrated_at,
                    cache={"used": bool(skip), "cached_units": sorted([s, n] for s, ns in skip.items() for n in ns),
                           "computed_units": computed})
