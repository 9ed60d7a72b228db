"""Observables on the front end: proto <-> spec conversion, the size limit, and artifact files.

The chains write the artifact under the deployment's results directory
(`--results-dir`, cluster/observables.py); FetchArtifact streams one of its files in
chunks, after the same owner check as GetEstimate. No torch here.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

from google.protobuf import struct_pb2

from cluster.contract.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from cluster.contract.spec import JobSpec
from llc import enums
from llc.v1 import llc_pb2 as pb

GRANULARITY_VALUES = enums.values(pb.Granularity)
GRANULARITIES = {v: k for k, v in GRANULARITY_VALUES.items()}
ARTIFACT_FILES = ("losses.parquet", "bif.parquet", "susceptibilities.parquet")
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 4 << 20


# ------------------------------------------------------------------ request → spec
def to_dict(o: pb.Observables, dataset_to_dict) -> dict[str, Any]:
    out: dict[str, Any] = {"datasets": [{"name": d.name, "dataset": dataset_to_dict(d.dataset)} for d in o.datasets]}
    if o.granularity:
        out["granularity"] = GRANULARITIES.get(o.granularity, f"<unknown enum value {o.granularity} of granularity>")
    for name in ("every", "max_examples", "include_sampling"):
        if o.HasField(name):
            out[name] = getattr(o, name)
    return out


def from_dict(d: dict[str, Any], msg: pb.Observables, dataset_from_dict) -> None:
    for ds in d.get("datasets") or []:
        dataset_from_dict(ds.get("dataset") or {}, msg.datasets.add(name=ds.get("name", "")).dataset)
    msg.granularity = GRANULARITY_VALUES.get(d.get("granularity", ""), 0)
    for name in ("every", "max_examples", "include_sampling"):
        if name in d:
            setattr(msg, name, d[name])


def result_from_dict(doc: dict[str, Any]) -> pb.ObservablesResult:
    def struct(x: dict[str, Any]) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(x or {})
        return s

    return pb.ObservablesResult(
        files=[pb.ArtifactFile(name=k, bytes=int(v)) for k, v in (doc.get("files") or {}).items()],
        granularity=GRANULARITY_VALUES.get(doc.get("granularity", ""), 0), every=int(doc.get("every") or 0),
        examples={k: int(v) for k, v in (doc.get("observables") or {}).items()}, values=int(doc.get("values") or 0),
        bif_mean=struct(doc.get("bif_mean")), susceptibility_mean=struct(doc.get("susceptibility_mean")),
        warnings=list(doc.get("warnings") or []))


# ------------------------------------------------------------------ submission
def check_size(spec: JobSpec, max_values: int, results_dir: str) -> None:
    """Refuse, before anything runs, observables the deployment cannot hold or store."""
    obs = spec.observables
    if obs is None:
        return
    if not results_dir:
        raise FailedPrecondition("this server keeps no artifacts (no --results-dir): observables cannot be "
                                 "recorded here; drop spec.observables or start the server with --results-dir")
    values = obs.values(spec)
    if values > max_values:
        per_token = " or use granularity SEQUENCE" if obs.granularity == "token" else ""
        raise ResourceExhausted(
            f"observables would record up to {values:,} loss values (examples {obs.max_examples} per dataset x "
            f"{-(-spec.sampler.draws // obs.every)} records x {spec.sampler.chains} chains x "
            f"{len(spec.restrictions)} restrictions{' x tokens' if obs.granularity == 'token' else ''}); this "
            f"server allows {max_values:,} (--max-observable-values): lower observables.max_examples, raise "
            f"observables.every, fewer draws or chains{per_token}")


# ------------------------------------------------------------------ FetchArtifact
def artifact_path(results_dir: str, job_id: str, result: dict[str, Any] | None, name: str) -> str:
    """The file `name` of job `job_id`'s artifact, confined to the results directory."""
    obs = (result or {}).get("observables")
    if not obs:
        raise FailedPrecondition(f"estimate {job_id} has no artifact: it recorded no observables (or has not "
                                 "finished); set spec.observables and wait for SUCCEEDED")
    name = name or "losses.parquet"
    if name not in ARTIFACT_FILES or name not in (obs.get("files") or {}):
        raise NotFound(f"estimate {job_id}'s artifact has no file {name!r}; it has {sorted(obs.get('files') or {})}")
    root = os.path.realpath(results_dir)
    path = os.path.realpath(os.path.join(root, job_id, name))
    if os.path.dirname(os.path.dirname(path)) != root:
        raise InvalidArgument(f"estimate id {job_id!r} does not name an artifact inside the results directory")
    if not os.path.isfile(path):
        raise NotFound(f"estimate {job_id}'s artifact file {name} is gone from the results directory")
    return path


def chunks(path: str, name: str, chunk_bytes: int) -> Iterator[pb.ArtifactChunk]:
    if chunk_bytes < 0 or chunk_bytes > MAX_CHUNK:
        raise InvalidArgument(f"chunk_bytes must be in [1, {MAX_CHUNK}] (unset = {DEFAULT_CHUNK}), got {chunk_bytes}")
    size = chunk_bytes or DEFAULT_CHUNK
    total = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            data = f.read(size)
            if not data and offset:
                return
            yield pb.ArtifactChunk(file=name, offset=offset, data=data, total_bytes=total)
            offset += len(data)
            if not data:
                return
