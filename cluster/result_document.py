"""The job's result document: per-restriction LLC results plus provenance.

Format (docs/architecture.md):
  {"job_id", "restrictions": [RestrictionResult...], "provenance": {...}, "warnings": [...]}
  RestrictionResult = LLCResult.to_dict() + {"name", "moved_tensors", "moved_elements"}
Each chain dict's `extra` says where it ran (`node_id`, `pid`) and how long it took.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import platform
from typing import Any

from cluster.contract.spec import JobSpec


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def library_versions() -> dict[str, str]:
    """Versions without importing the libraries (the driver stays light)."""
    out = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("transformers", "transformers"), ("ray", "ray"),
                      ("deepspeed", "deepspeed"), ("llc", "llc-service")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def base_provenance(spec: JobSpec, started_at: str) -> dict[str, Any]:
    """What is known before anything loads: the spec, library versions, seeds, start time."""
    return {
        "spec": spec.to_dict(),
        "versions": library_versions(),
        "seeds": {"sampler": spec.sampler.seed, "dataset_shuffle": spec.dataset.shuffle_seed},
        "started_at": started_at,
    }


def restriction_result(spec: JobSpec, index: int, chains: list[dict[str, Any]], init_loss: float | None,
                       preview: dict[str, Any] | None, settings: dict[str, Any] | None = None,
                       calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Combine one restriction's chain dicts (from any workers) into its result entry; `settings` are
    the sampler settings its chains ran with (spec.sampler with "auto" resolved), `calibration` how."""
    from cluster.engine.result import ChainResult, LLCResult  # numpy only, no torch
    from cluster.contract.sampler import SamplerConfig

    moved = preview or {"tensors": [], "elements": 0}
    if init_loss is None:  # paired mode: L(w*) is the mean of the draws' paired losses
        paired = [v for c in chains for v in c.get("init_trace") or []]
        init_loss = sum(paired) / len(paired) if paired else float("nan")
    combined = LLCResult.from_chains(
        [ChainResult.from_dict(c) for c in chains],
        SamplerConfig.from_dict(settings) if settings is not None else spec.sampler, init_loss,
        moving_elements=moved["elements"], calibration=calibration,
    )
    return {
        **combined.to_dict(),
        "name": spec.restrictions[index].name,
        "moved_tensors": moved["tensors"],
        "moved_elements": moved["elements"],
    }


def result_document(spec: JobSpec, results: dict[tuple[int, int], dict[str, Any]],
                    init_losses: list[float | None], previews: list[dict[str, Any]] | None,
                    provenance: dict[str, Any], warnings: list[str] | None = None,
                    settings: dict[int, dict[str, Any]] | None = None,
                    calibrations: dict[int, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The result of the job; restrictions without any finished chain are left out (partial results)."""
    restrictions = []
    for i in range(len(spec.restrictions)):
        chains = [results[(i, c)] for c in range(spec.sampler.chains) if (i, c) in results]
        if not chains:
            continue
        restrictions.append(restriction_result(spec, i, chains, init_losses[i], previews[i] if previews else None,
                                               (settings or {}).get(i), (calibrations or {}).get(i)))
    seeds = {c["chain"]: c["seed"] for c in results.values() if c.get("seed", -1) >= 0}
    provenance = {**provenance, "finished_at": utc_now()}
    # Per-chain seeds derive from (sampler seed, chain index) only; None: that chain never finished.
    provenance["seeds"] = {**provenance.get("seeds", {}),
                           "chains": [seeds.get(c) for c in range(spec.sampler.chains)]}
    return {
        "job_id": spec.job_id,
        "restrictions": restrictions,
        "provenance": provenance,
        "warnings": list(warnings or []),
    }
