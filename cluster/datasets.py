"""Token datasets for LLC estimation: fixed-length rows of token ids from a Hugging
Face hub dataset or local jsonl/json/parquet/csv/text files.

Rows are built in a stated, deterministic way:
- documents are shuffled with `shuffle_seed` (datasets' Dataset.shuffle) before
  anything is cut, so `max_examples` takes a reproducible random subset;
- packing=True: documents are tokenized, joined with the tokenizer's EOS token (when
  it has one) and cut into rows of exactly `context_length` tokens (the ragged tail
  is dropped); packing=False: each document is truncated to `context_length` and
  documents shorter than that are dropped (no padding, so every token is scored);
- a pre-tokenized `input_ids_column` is used as is (no EOS added).
The fingerprint hashes the tokens and the tokenizer identity: equal fingerprints
mean equal data for caching and provenance.
"""
from __future__ import annotations

import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F

from cluster.contract.errors import InvalidArgument, NotFound, Unavailable
from cluster.contract.spec import DatasetRef

EXTENSION_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text",
                     ".csv": "csv"}
_TOKENIZE_BATCH = 256


@dataclass
class TokenDataset:
    input_ids: torch.Tensor  # LongTensor [N, T], T = context length
    fingerprint: str  # content hash of the tokens (and tokenizer identity) for provenance/caching
    provenance: dict

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _file_format(ref: DatasetRef, files: list[str]) -> str:
    if ref.file_format:
        return "json" if ref.file_format == "jsonl" else ref.file_format
    suffixes = {Path(f).suffix.lower() for f in files}
    formats = {EXTENSION_FORMATS.get(s) for s in suffixes}
    if len(formats) != 1 or None in formats:
        raise InvalidArgument(f"dataset.files: cannot infer the format from extensions {sorted(suffixes)}; "
                              f"set dataset.file_format to one of json, jsonl, parquet, text, csv")
    return formats.pop()


def _expand_files(ref: DatasetRef) -> list[str]:
    files: list[str] = []
    for i, pattern in enumerate(ref.files):
        path = Path(pattern).expanduser()
        matches = sorted(glob.glob(str(path))) if glob.has_magic(str(path)) else ([str(path)] if path.is_file() else [])
        if not matches:
            raise NotFound(f"dataset.files[{i}]: {pattern!r} does not exist (or matches no file); give existing "
                           "jsonl/json/parquet/csv/text files")
        files += matches
    return files


def _load_raw(ref: DatasetRef) -> tuple[Any, dict]:
    """The dataset as a datasets.Dataset, and where it came from."""
    import datasets

    if ref.files:
        for name, value, default in (("split", ref.split, "train"), ("config", ref.config, ""),
                                     ("revision", ref.revision, "")):
            if value not in ("", default):
                raise InvalidArgument(f"dataset.{name} {value!r} applies to hub datasets only; local files form one "
                                      f"split: leave dataset.{name} empty, or list the files you want")
        files = _expand_files(ref)
        fmt = _file_format(ref, files)
        empty = f"dataset.files {files} are empty; give files with at least one example"
        if all(Path(f).stat().st_size == 0 for f in files):
            raise InvalidArgument(empty)
        try:
            ds = datasets.load_dataset(fmt, data_files=files, split="train")
        except StopIteration:  # datasets' json reader on files with no records
            raise InvalidArgument(empty) from None
        except (ValueError, datasets.exceptions.DatasetGenerationError) as exc:
            if "corresponds to no data" in str(exc):
                raise InvalidArgument(empty) from None
            raise InvalidArgument(f"dataset.files: cannot read {files} as {fmt}: {exc}; fix the files or set "
                                  "dataset.file_format") from None
        return ds, {"files": [str(Path(f).resolve()) for f in files], "file_format": fmt}

    from cluster.models import hub_offline, resolve_hub_commit

    commit = resolve_hub_commit(ref.hub_id, ref.revision, repo_type="dataset")
    what = f"dataset {ref.hub_id!r}" + (f" config {ref.config!r}" if ref.config else "")
    source, revision = ref.hub_id, commit
    if hub_offline():
        # datasets' offline mode only finds datasets it prepared itself; the hub cache's
        # snapshot of this commit is a plain directory of data files that it reads the same way.
        from huggingface_hub import snapshot_download

        source = snapshot_download(ref.hub_id, revision=commit, repo_type="dataset", local_files_only=True)
        revision = None
    from cluster.hub import hub_error

    try:
        ds = datasets.load_dataset(source, ref.config or None, split=ref.split, revision=revision)
    except datasets.exceptions.DatasetNotFoundError as exc:  # also gated (datasets wraps GatedRepoError)
        raise hub_error(exc, ref.hub_id, ref.revision, "dataset") or NotFound(
            f"{what}: {exc}; check dataset.hub_id") from None
    except ValueError as exc:
        # Unknown split or config: datasets lists the valid ones in the message.
        raise NotFound(f"{what}: {exc}; set dataset.split / dataset.config to one that exists") from None
    except ConnectionError as exc:
        raise Unavailable(f"{what}: cannot reach the hub: {exc}; retry, or give local files") from None
    except Exception as exc:  # hub errors datasets lets through (httpx2's are no ConnectionError)
        mapped = hub_error(exc, ref.hub_id, ref.revision, "dataset")
        if mapped is None:
            raise
        raise mapped from None
    return ds, {"hub_id": ref.hub_id, "config": ref.config, "split": ref.split, "revision": ref.revision,
                "commit": commit}


def tokenizer_identity(tokenizer) -> str:
    """A short hash naming the tokenizer's vocabulary and rules (not its file path)."""
    if tokenizer is None:
        return "none"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{text}".encode()).hexdigest()[:16]


def _documents(ds, ref: DatasetRef, tokenizer) -> Iterator[list[int]]:
    """Token ids per document, in (shuffled) dataset order."""
    column = ref.input_ids_column or ref.text_column
    for start in range(0, len(ds), _TOKENIZE_BATCH):
        values = ds[start:start + _TOKENIZE_BATCH][column]
        if ref.input_ids_column:
            for j, ids in enumerate(values):
                if not isinstance(ids, (list, tuple)) or not all(isinstance(t, int) for t in ids):
                    raise InvalidArgument(f"dataset.input_ids_column {column!r}: row {start + j} is not a list of "
                                          f"integers; give token ids, or use text_column for text")
                yield list(ids)
        else:
            texts = [t if isinstance(t, str) else "" for t in values]
            for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
                yield ids


def _rows(docs: Iterable[list[int]], ref: DatasetRef, eos: int | None, limit: int) -> tuple[list[list[int]], dict]:
    T = ref.context_length
    rows: list[list[int]] = []
    stats = {"documents_used": 0, "documents_dropped_short": 0, "tokens_seen": 0}
    buffer: list[int] = []
    for ids in docs:
        if limit and len(rows) >= limit:
            break
        stats["documents_used"] += 1
        stats["tokens_seen"] += len(ids)
        if ref.packing:
            buffer += ids
            if eos is not None and ids:
                buffer.append(eos)
            start = 0  # cut rows by offset: slicing the rest off each time is quadratic in a long document
            while len(buffer) - start >= T and not (limit and len(rows) >= limit):
                rows.append(buffer[start:start + T])
                start += T
            del buffer[:start]
        elif len(ids) >= T:
            rows.append(ids[:T])
        else:
            stats["documents_dropped_short"] += 1
    return rows, stats


def load_token_dataset(ref: DatasetRef, tokenizer, max_positions: int | None, *,
                       vocab_size: int | None = None) -> TokenDataset:
    """Rows of `ref.context_length` token ids; see the module docstring for how they are cut.

    `vocab_size` (the model's embedding rows), when given, bounds pre-tokenized ids.
    """
    T = ref.context_length
    if max_positions is not None and T > max_positions:
        raise InvalidArgument(f"dataset.context_length {T} exceeds the model's maximum context length "
                              f"{max_positions}; set it to at most {max_positions}")
    if not ref.input_ids_column and tokenizer is None:
        raise InvalidArgument("the model has no tokenizer, so text cannot be tokenized; give a model directory "
                              "with a tokenizer or a pre-tokenized dataset.input_ids_column")
    ds, source = _load_raw(ref)
    column = ref.input_ids_column or ref.text_column
    if column not in ds.column_names:
        which = "input_ids_column" if ref.input_ids_column else "text_column"
        raise NotFound(f"dataset.{which}: column {column!r} is not in the dataset; its columns are "
                       f"{ds.column_names}")
    if len(ds) == 0:
        raise InvalidArgument(f"dataset {source} is empty; give files with at least one example")
    ds = ds.shuffle(seed=ref.shuffle_seed)
    eos = getattr(tokenizer, "eos_token_id", None) if not ref.input_ids_column else None
    rows, stats = _rows(_documents(ds, ref, tokenizer), ref, eos, ref.max_examples)
    if not rows:
        how = ("packing joins all documents" if ref.packing
               else "without packing, documents shorter than context_length are dropped")
        raise InvalidArgument(f"dataset yields no row of context_length {T} tokens ({stats['tokens_seen']} tokens in "
                              f"{stats['documents_used']} documents; {how}); lower dataset.context_length"
                              + ("" if ref.packing else " or set dataset.packing=true") + " or add data")
    input_ids = torch.tensor(rows, dtype=torch.long)
    if int(input_ids.min()) < 0 or (vocab_size is not None and int(input_ids.max()) >= vocab_size):
        raise InvalidArgument(f"dataset.{ref.input_ids_column or 'text_column'}: token ids span "
                              f"[{int(input_ids.min())}, {int(input_ids.max())}] but the model's vocabulary is "
                              f"[0, {vocab_size}); tokenize with the model's tokenizer")
    tok_id = tokenizer_identity(tokenizer) if not ref.input_ids_column else "pretokenized"
    h = hashlib.sha256(f"{tuple(input_ids.shape)}\0{tok_id}\0".encode())
    h.update(input_ids.numpy().tobytes())
    fingerprint = h.hexdigest()
    provenance = {**source, "column": column, "context_length": T, "packing": ref.packing,
                  "max_examples": ref.max_examples, "shuffle_seed": ref.shuffle_seed, "rows": len(rows),
                  "tokens": len(rows) * T, **stats, "tokenizer": tok_id, "fingerprint": fingerprint}
    return TokenDataset(input_ids=input_ids, fingerprint=fingerprint, provenance=provenance)


class TokenBatches:
    """Re-iterable minibatches of a TokenDataset: each iter() is a fresh pass.

    Shuffling draws from torch's default generator when iteration starts, so a
    chain's torch.manual_seed fixes its order. The last partial batch is dropped
    (every batch has the same size, so batch means weigh tokens equally) unless
    the dataset is smaller than one batch, which then forms the only batch.
    """

    def __init__(self, ds: TokenDataset, batch_size: int, *, shuffle: bool = True,
                 device: str | torch.device | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgument(f"batch_size must be a positive integer, got {batch_size!r}")
        self.input_ids = ds.input_ids
        self.batch_size = min(batch_size, len(ds))
        self.shuffle = shuffle
        self.device = device

    def __len__(self) -> int:
        return self.input_ids.shape[0] // self.batch_size

    def every_row(self) -> list[torch.Tensor]:
        """Every row once, in order, in batches of batch_size (the last may be partial): the rows
        a shuffled pass can draw, for L(w*) per row (cluster.engine.anchor)."""
        size = self.batch_size
        return [self.input_ids[i:i + size] for i in range(0, self.input_ids.shape[0], size)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        n = self.input_ids.shape[0]
        order = torch.randperm(n) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            batch = self.input_ids[order[b * self.batch_size:(b + 1) * self.batch_size]]
            yield batch if self.device is None else batch.to(self.device, non_blocking=True)


def make_batches(ds: TokenDataset, batch_size: int, *, shuffle: bool = True,
                 device: str | torch.device | None = None) -> TokenBatches:
    return TokenBatches(ds, batch_size, shuffle=shuffle, device=device)


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per token (scalar), computed in float32."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # no KV cache: nothing decodes later
    targets = batch[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def lm_row_loss(model, batch: torch.Tensor) -> torch.Tensor:
    """lm_loss of each row, shape (rows,): rows have equal length, so their mean is lm_loss."""
    logits = model(input_ids=batch, use_cache=False).logits[:, :-1]
    targets = batch[:, 1:]
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="none")
    return per_token.view(batch.shape[0], -1).mean(1)


lm_loss.per_row = lm_row_loss  # L(w*) per row: the draws look it up (cluster.engine.anchor)

