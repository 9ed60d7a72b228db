"""The trajectory unit cache, on the front end's side (docs/trajectories.md#cache).

Where the lookup happens: here, in the front end, before the job is submitted. The keys
(cluster.trajectory.unit_keys) need only the spec, the checkpoints' commits or content
hashes (cluster.hub: huggingface_hub or hashlib, no torch) and the datasets' source
identity, so the front end can tell which (checkpoint, restriction) units it already has
without starting anything on Ray: a job whose every unit is stored finishes here, without
a driver; otherwise the driver is told which units to skip (LLC_CACHED_UNITS) and the
front end merges the stored results into the driver's result. Succeeded units of a
finished job are stored under their keys when its result arrives; units whose checkpoint
the driver saw with another identity than the key's (the directory changed meanwhile) are not.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from cluster.contract.spec import JobSpec
from cluster.trajectory import CACHED_UNITS_ENV, merge_cached, unit_keys
from service.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class CachePlan:
    keys: dict[tuple[int, str], str]  # (step, restriction) -> unit key
    hits: dict[tuple[int, str], dict[str, Any]]  # (step, restriction) -> stored restriction result
    info: dict[str, Any] = field(default_factory=dict)  # identities found, errors

    @property
    def complete(self) -> bool:
        return bool(self.keys) and len(self.hits) == len(self.keys) and len(self.keys) == self.units

    units: int = 0

    def env(self) -> dict[str, str]:
        """What the driver skips."""
        skip: dict[str, list[str]] = {}
        for step, name in sorted(self.hits):
            skip.setdefault(str(step), []).append(name)
        return {CACHED_UNITS_ENV: json.dumps(skip)} if skip else {}


def plan(store: JobStore, spec_dict: dict[str, Any]) -> CachePlan | None:
    """The cache's answer for a trajectory job (None: not a trajectory). With use_cache false nothing
    is read (every unit is computed), but the job's results are still stored for later jobs."""
    if not spec_dict.get("checkpoints"):
        return None
    spec = JobSpec.from_dict(spec_dict)
    keys, info = unit_keys(spec)
    stored = store.cached_units(keys.values()) if keys and spec.use_cache else {}
    hits = {unit: stored[k] for unit, k in keys.items() if k in stored}
    return CachePlan(keys=keys, hits=hits, info=info, units=len(spec.checkpoints) * len(spec.restrictions))


def answer(spec_dict: dict[str, Any], cache: CachePlan) -> dict[str, Any]:
    """The result of a job whose every unit is stored: no driver ran."""
    from cluster.result_document import base_provenance, utc_now

    spec = JobSpec.from_dict(spec_dict)
    provenance = {**base_provenance(spec, utc_now()), "answered_from_cache": True}
    calibration = {"step": None, "name": "", "note": "every unit was answered from the cache; see each "
                   "checkpoint's restrictions' calibration for where their settings came from"}
    return merge_cached(spec, {"checkpoints": [], "provenance": provenance, "calibration_checkpoint": calibration},
                        cache.hits, cache.info)


def complete_result(store: JobStore, job_id: str, spec_dict: dict[str, Any], doc: dict[str, Any],
                    cache: CachePlan | None) -> dict[str, Any]:
    """The driver's trajectory result with the cached units merged in; stores its new units."""
    if cache is None:
        return doc
    spec = JobSpec.from_dict(spec_dict)
    new: dict[str, dict[str, Any]] = {}
    for c in doc.get("checkpoints") or []:
        identity = cache.info.get("checkpoints", {}).get(c["step"])
        if c.get("status") != "succeeded" or not identity or c.get("identity") != identity:
            continue
        for r in c.get("restrictions") or []:
            key = cache.keys.get((c["step"], r.get("name")))
            if key and _storable(r):
                new[key] = r
    if new:
        added = store.put_cached_units(job_id, new)
        log.info("job %s: %d units stored in the cache", job_id, added)
    return merge_cached(spec, doc, cache.hits, cache.info)


def _storable(r: dict[str, Any]) -> bool:
    """Only whole, finite results are reused: a failed or diverged chain is worth a new try."""
    diag = r.get("diagnostics") or {}
    chains = r.get("chains") or []
    return bool(chains) and not diag.get("failed_chains") and not diag.get("diverged_chains") and all(
        c.get("status") == "succeeded" for c in chains) and isinstance(r.get("llc_mean"), (int, float)) and \
        math.isfinite(r["llc_mean"])
