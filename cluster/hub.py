"""The Hugging Face hub: revision → commit resolution and local checkpoint hashes.

    commit = resolve_commit("EleutherAI/pythia-14m", "step1000")   # 40-hex commit sha
    digest = content_hash("/ckpts/step1000")                       # sha256 of config + weights

Everything goes through huggingface_hub itself, so HF_ENDPOINT, HF_TOKEN and
HF_HUB_OFFLINE apply as huggingface_hub reads them (at its import: a process's
environment, not a later os.environ change). Offline, refs resolve through the local
cache (refs/<branch> → snapshots/<commit>) and nothing is downloaded.

Errors are cluster.contract.errors types whose messages say what to change:
unknown repository or revision → NOT_FOUND (the message names the revision),
gated or forbidden → PERMISSION_DENIED, hub unreachable or erroring (5xx), or offline
without a cached copy → UNAVAILABLE, malformed id/revision → INVALID_ARGUMENT.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cluster.contract.errors import InvalidArgument, LLCError, NotFound, PermissionDenied, Unavailable

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# What a checkpoint directory's content hash covers: its config and weights (not tokenizer
# files, READMEs or optimizer state, which do not change the function the LLC is about).
HASHED_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HASHED_PATTERNS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
_CHUNK = 1 << 20
# Seconds a revision lookup may wait for the hub (huggingface_hub's own default is none: a hub that
# accepts the connection and never answers would hold a worker until the job's timeout).
RESOLVE_TIMEOUT_S = 30.0


def hub_offline() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE, read at its import) or the variable now."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE", "").upper()
    return bool(constants.HF_HUB_OFFLINE) or now in constants.ENV_VARS_TRUE_VALUES


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection/timeout errors (httpx2 or httpx: not OSError subclasses)."""
    out: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        out.append(module.TransportError)
    return tuple(out)


def resolve_commit(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    """The commit sha of `revision` (branch, tag or commit; None or '' = the default branch) of `repo_id`."""
    from huggingface_hub import HfApi, snapshot_download

    if repo_type not in ("model", "dataset"):
        raise InvalidArgument(f"repo_type {repo_type!r}: give 'model' or 'dataset'")
    revision = revision or None
    what = f"{repo_type} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    local = "a local_path" if repo_type == "model" else "local files"
    try:
        if hub_offline():
            # The cache maps refs to snapshots/<commit>; nothing is downloaded.
            path = snapshot_download(repo_id, revision=revision, repo_type=repo_type, local_files_only=True)
            return Path(path).name
        api = HfApi()
        info = (api.dataset_info if repo_type == "dataset" else api.model_info)(repo_id, revision=revision,
                                                                               timeout=RESOLVE_TIMEOUT_S)
    except Exception as exc:
        mapped = hub_error(exc, repo_id, revision, repo_type)
        if mapped is None and isinstance(exc, OSError):  # e.g. a proxy or DNS failure outside the client
            mapped = Unavailable(f"cannot reach the Hugging Face hub ({_endpoint()}) for {what}: "
                                 f"{_first_line(exc)}; retry, or give {local}")
        if mapped is None:
            raise
        raise mapped from None
    if not info.sha:
        raise Unavailable(f"the hub did not report a commit for {what}; retry")
    _remember_ref(repo_id, repo_type, revision or "main", info.sha)
    return info.sha


def _remember_ref(repo_id: str, repo_type: str, revision: str, commit: str) -> None:
    """Record revision → commit in the hub cache (refs/<revision>), as huggingface_hub does when it
    downloads by branch name. Loaders download by the resolved commit, which records no ref, so
    without this an offline run could not resolve a branch it had downloaded."""
    if revision == commit:
        return
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "refs" / revision
    try:
        if ref.is_file() and ref.read_text() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit)
        os.replace(tmp, ref)
    except OSError:  # a read-only cache: offline resolution of this ref stays the cache's business
        pass


def hub_error(exc: BaseException, repo_id: str, revision: str | None, repo_type: str = "model") -> LLCError | None:
    """The domain error for a huggingface_hub failure `exc`, or for one that it wraps (transformers and
    datasets re-raise hub errors as OSError/their own types `from` them); None when it is no hub error."""
    from huggingface_hub.errors import (DisabledRepoError, GatedRepoError, HfHubHTTPError, HFValidationError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    kind = "dataset" if repo_type == "dataset" else "model"
    what = f"{kind} {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    local = "a local_path" if repo_type == "model" else "local files"
    transport = _transport_errors()
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, GatedRepoError):  # before RepositoryNotFoundError, its base
            return PermissionDenied(f"{what} is gated: accept its conditions on the hub and set HF_TOKEN (with "
                                    f"access to it) in the workers' environment, or give {local}")
        if type(e).__name__ == "DatasetNotFoundError" and "is a gated dataset" in str(e):
            # datasets re-raises its wrapper of GatedRepoError `from None`: only the message says so.
            return PermissionDenied(f"{what} is gated: accept its conditions on the hub and set HF_TOKEN (with "
                                    f"access to it) in the workers' environment, or give {local}")
        if isinstance(e, RevisionNotFoundError):
            return NotFound(f"{kind} {repo_id!r} has no revision {revision!r}: give an existing branch, tag or "
                            "commit hash", field=f"{kind}.revision")
        if isinstance(e, RepositoryNotFoundError):
            return NotFound(f"{kind} {repo_id!r} not found on the hub ({_endpoint()}): check the id (owner/name); "
                            "a private repository also needs HF_TOKEN in the workers' environment",
                            field=f"{kind}.hub_id")
        if isinstance(e, DisabledRepoError):
            return PermissionDenied(f"{what} is disabled on the hub; use another repository or {local}")
        if isinstance(e, HFValidationError):
            return InvalidArgument(f"{what}: {_first_line(e)}")
        if isinstance(e, LocalEntryNotFoundError) and hub_offline():
            return Unavailable(f"{what} is not in the local Hugging Face cache and the hub is offline "
                               f"(HF_HUB_OFFLINE=1): download it first, or give {local}")
        if isinstance(e, OfflineModeIsEnabled):
            return Unavailable(f"{what}: the hub is offline (HF_HUB_OFFLINE=1) and this needs it; give {local}")
        if isinstance(e, HfHubHTTPError) and not isinstance(e, LocalEntryNotFoundError):
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                return PermissionDenied(f"{what}: the hub refused access ({status}): set HF_TOKEN with access to "
                                        "it in the workers' environment")
            if status == 404:
                return None  # a missing file: the caller knows which one it asked for
            return Unavailable(f"the hub ({_endpoint()}) failed for {what}: {_first_line(e)}; retry, "
                               f"or give {local}")
        if isinstance(e, transport) and not isinstance(e, OSError):
            return Unavailable(f"cannot reach the Hugging Face hub ({_endpoint()}) for {what}: {_first_line(e)}; "
                               f"retry, or give {local}")
        e = e.__cause__ or e.__context__
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def hashed_files(path: str | Path) -> list[Path]:
    """The files of checkpoint directory `path` that content_hash covers, in hashing order."""
    path = Path(path)
    found = {path / name for name in HASHED_FILES if (path / name).is_file()}
    for pattern in HASHED_PATTERNS:
        found.update(p for p in path.glob(pattern) if p.is_file())
    return sorted(found, key=lambda p: p.name)


_hash_memo: dict[tuple, str] = {}
# Only directories this large are remembered: file mtimes tick with the kernel's coarse clock, so a
# small file rewritten within milliseconds of being hashed could keep size, mtime and inode; a file
# this large takes longer than that tick to write.
_MEMO_MIN_BYTES = 64 << 20


def content_hash(path: str | Path) -> str:
    """sha256 (hex) over a checkpoint directory's config.json and weight files: names, sizes and bytes,
    streamed in 1 MiB chunks. Equal hashes mean the same architecture and the same weights.
    Large directories are remembered per process while no hashed file's size, mtime or inode changes
    (weights are gigabytes; the front end, the driver and every worker ask)."""
    path = Path(path).expanduser()
    files = hashed_files(path)
    if not any(p.name != "config.json" for p in files):
        raise NotFound(f"{str(path)!r} has no config.json and weights to hash; give a directory saved with "
                       "save_pretrained")
    stats = [p.stat() for p in files]
    key = (str(path.resolve()), tuple((p.name, st.st_size, st.st_mtime_ns, st.st_ino) for p, st in zip(files, stats)))
    memo = sum(st.st_size for st in stats) >= _MEMO_MIN_BYTES
    if memo and key in _hash_memo:
        return _hash_memo[key]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    if memo:
        if len(_hash_memo) > 256:
            _hash_memo.clear()
        _hash_memo[key] = h.hexdigest()
    return h.hexdigest()


def check_same_commits(first: dict, other: dict) -> None:
    """Raise FailedPrecondition when two workers of one job loaded different hub commits: a branch
    moved between their loads, and their chains would describe different checkpoints. `first` and
    `other` are worker summaries ({"model_provenance", "dataset_provenance": {key: provenance}})."""
    from cluster.contract.errors import FailedPrecondition

    pairs = [("model", first.get("model_provenance") or {}, other.get("model_provenance") or {})]
    a_data, b_data = first.get("dataset_provenance") or {}, other.get("dataset_provenance") or {}
    pairs += [("dataset", a_data[k], b_data[k]) for k in a_data if k in b_data]
    for kind, a, b in pairs:
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        ca, cb = a.get("commit"), b.get("commit")
        if isinstance(ca, str) and isinstance(cb, str) and ca != cb:
            raise FailedPrecondition(
                f"{kind} {a.get('hub_id')!r} revision {a.get('revision') or 'main'!r} moved on the hub during the "
                f"job: one worker loaded commit {ca[:12]}, another {cb[:12]}; give the commit hash as "
                f"{kind}.revision to pin it", field=f"{kind}.revision")
