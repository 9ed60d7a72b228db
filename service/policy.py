"""What a client may make the server read or run, decided at submission (no torch).

- `model.trust_remote_code` runs the model repository's own Python on the cluster: refused
  (PERMISSION_DENIED) unless the deployment allows it (ServerConfig.allow_remote_code,
  `llc serve --allow-remote-code`). The driver checks again (cluster/models.py).
- Local paths (model.local_path, dataset.files, restriction datasets' files) must be absolute
  and resolve, symlinks followed, under one of ServerConfig.allowed_roots (`--allow-path`).
  A path outside them gets one message whether or not it exists, so clients cannot probe the
  server's files; only inside the roots is a missing file reported as NOT_FOUND.
- Settings the server chooses when the client leaves them unset: compute.timeout_s.
"""
from __future__ import annotations

import glob
import os
from typing import Iterator

from llc.v1 import llc_pb2 as pb

from cluster.contract.errors import InvalidArgument, NotFound, PermissionDenied
from cluster.contract.spec import JobSpec, shown
from service import preflight
from service.config import ServerConfig
from service.preflight import datasets_of

MAX_GLOB_MATCHES = 10_000  # files one dataset glob may expand to at submission


class SubmissionPolicy:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.roots = config.allowed_roots

    def admit(self, spec: JobSpec, sent: pb.EstimateSpec) -> None:
        """Raises the domain error for what this server does not run or read; fills in the
        server's defaults (in `spec`, so the stored spec and the result's provenance show them)."""
        if spec.model.trust_remote_code and not self.config.allow_remote_code:
            raise PermissionDenied("spec.model.trust_remote_code: this server does not run a model's own code; "
                                   "use a model that transformers supports natively (or ask the operator to start "
                                   "the server with --allow-remote-code)")
        see_files = self.config.check_local_paths
        if spec.model.local_path:
            spec.model.local_path = self.confine(spec.model.local_path, "spec.model.local_path", see_files)
        for i, cp in enumerate(spec.checkpoints):  # a trajectory's local checkpoint directories
            if cp.local_path:
                cp.local_path = self.confine(cp.local_path, f"spec.checkpoints[{i}].local_path", see_files)
        for where, ds in datasets_of(spec):
            ds.files = [self.confine(f, f"{where}.files[{j}]", see_files) for j, f in enumerate(ds.files)]
        if see_files:
            self._check_exist(spec)
            self._check_checkpoints(spec)
        if spec.compute.timeout_s <= 0:
            spec.compute.timeout_s = self.config.default_timeout_s
        preflight.check(spec, sent, see_files=see_files)

    # -------------------------------------------------------------- local paths
    def _outside(self, real: str) -> bool:
        return not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)

    def confine(self, path: str, where: str, resolve: bool) -> str:
        """`path` if it lies under an allowed root (its resolved form when `resolve`: the front end
        sees the cluster's files, so the job then opens exactly what was checked)."""
        if "\0" in path:
            raise InvalidArgument(f"{where}: the path contains a NUL character")
        if not os.path.isabs(path):
            raise InvalidArgument(f"{where}: {shown(path)} is a relative path; give an absolute one (the server never "
                                  "resolves paths against its own working directory; llc.Client and the CLI make "
                                  "paths absolute)")
        if not self.roots:
            raise PermissionDenied(f"{where}: this server reads no local files (it has no --allow-path); give a "
                                   "Hugging Face hub id instead")
        real = os.path.realpath(path)
        if self._outside(real) or (resolve and glob.has_magic(path) and any(map(self._outside, self._matches(real)))):
            # The same words whether or not the path exists: nothing outside the roots is revealed.
            raise PermissionDenied(f"{where}: {shown(path)} is outside the directories this server reads local files "
                                   f"from ({', '.join(self.roots)}); put the files under one of them, or ask the "
                                   "operator to add a directory with --allow-path")
        return real if resolve else path

    @staticmethod
    def _matches(pattern: str) -> Iterator[str]:
        for n, match in enumerate(glob.iglob(pattern)):
            if n >= MAX_GLOB_MATCHES:
                raise InvalidArgument(f"the glob {shown(pattern)} matches more than {MAX_GLOB_MATCHES} files; "
                                      "narrow it or merge the files")
            yield os.path.realpath(match)

    @staticmethod
    def _check_checkpoints(spec: JobSpec) -> None:
        for i, cp in enumerate(spec.checkpoints):
            if cp.local_path and not os.path.isfile(os.path.join(cp.local_path, "config.json")):
                what = "does not exist" if not os.path.exists(cp.local_path) else "has no config.json"
                raise NotFound(f"spec.checkpoints[{i}].local_path: {shown(cp.local_path)} (step {cp.step}) {what}; "
                               "give a directory saved with save_pretrained, or leave this checkpoint out")

    def _check_exist(self, spec: JobSpec) -> None:
        """NOT_FOUND for what is missing under the roots (paths are confined already)."""
        m = spec.model.local_path
        if m and not os.path.isfile(os.path.join(m, "config.json")):
            what = "does not exist" if not os.path.exists(m) else "has no config.json"
            raise NotFound(f"spec.model.local_path: {shown(m)} {what}; give a directory saved with save_pretrained "
                           "(or a hub id in spec.model.hub_id)")
        for where, ds in datasets_of(spec):
            for j, path in enumerate(ds.files):
                found = any(True for _ in self._matches(path)) if glob.has_magic(path) else os.path.isfile(path)
                if not found:
                    raise NotFound(f"{where}.files[{j}]: {shown(path)} does not exist (or matches no file); give a "
                                   "jsonl/json/parquet/text/csv file the cluster can read")
