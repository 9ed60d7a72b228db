"""Early validation: what the model's config.json and a few dataset rows tell at submission.

In the front end's budget (no weights, no torch, no network): semantic selectors' layer and
head indices against the model's config, the context length against its maximum (an unset
context length becomes min(128, maximum)), and the text/input-ids column of local files.
What it cannot see (a hub model outside the local cache, a hub dataset, files only the
cluster has) is left to the job, which checks everything again.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from typing import Any

from llc.v1 import llc_pb2 as pb

from cluster.architectures import SUPPORTED
from cluster.contract.errors import InvalidArgument, NotFound
from cluster.contract.spec import DatasetRef, JobSpec, shown

MAX_CONFIG_BYTES = 1 << 20  # also the longest dataset line read
SAMPLE_ROWS = 20  # json lines read to learn a local file's columns
# Aliases transformers configs use (gpt2: n_layer/n_head/n_positions; most others the long names).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
HEAD_KEYS = ("num_attention_heads", "n_head")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".text": "text", ".csv": "csv"}
SEMANTIC_LAYER_KINDS = ("layer", "attention", "mlp", "head")


def datasets_of(spec: JobSpec) -> list[tuple[str, DatasetRef]]:
    """(field path, dataset) of the job's dataset and every restriction's own dataset."""
    return [("spec.dataset", spec.dataset)] + [
        (f"spec.restrictions[{i}].dataset", r.dataset) for i, r in enumerate(spec.restrictions) if r.dataset]


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def model_config(spec: JobSpec, see_files: bool) -> dict[str, Any] | None:
    """The model's config.json as a dict, when the front end can read it without the network."""
    ref = spec.model
    if ref.local_path:
        if not see_files:
            return None
        path = os.path.join(ref.local_path, "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            path = try_to_load_from_cache(ref.hub_id, "config.json", revision=ref.revision or None)
        except Exception:  # noqa: BLE001 (an id the hub library refuses: the job reports it)
            return None
        if not isinstance(path, str):
            return None  # not cached: the job downloads and checks it
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    try:
        config = json.loads(text) if len(text) <= MAX_CONFIG_BYTES else None
    except ValueError as exc:
        raise InvalidArgument(f"spec.model: its config.json is not valid JSON ({exc}); save the model with "
                              "save_pretrained") from None
    return config if isinstance(config, dict) else None


def check_selectors(spec: JobSpec, config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    layers, heads = _first(config, LAYER_KEYS), _first(config, HEAD_KEYS)
    for i, r in enumerate(spec.restrictions):
        for j, sel in enumerate(r.weights):
            where = f"spec.restrictions[{i}].weights[{j}]"
            if sel.kind not in SEMANTIC_LAYER_KINDS + ("embedding", "unembedding"):
                continue
            if model_type not in SUPPORTED:
                raise InvalidArgument(f"{where}.kind: architecture {shown(model_type)} has no semantic selectors "
                                      f"({sel.kind}); they exist for {sorted(SUPPORTED)}. Use pattern or regex "
                                      "selectors on parameter names (PreviewRestrictions lists them)")
            if sel.kind in SEMANTIC_LAYER_KINDS and layers is not None and sel.layer >= layers:
                raise InvalidArgument(f"{where}.layer: layer {sel.layer} is out of range; this model has layers "
                                      f"0..{layers - 1}")
            if sel.kind == "head" and heads is not None and sel.head >= heads:
                raise InvalidArgument(f"{where}.head: head {sel.head} is out of range; layer {sel.layer} has heads "
                                      f"0..{heads - 1}")


def _sent_datasets(sent: pb.EstimateSpec) -> list[pb.DatasetRef]:
    """The datasets as the client sent them, in the order of policy.datasets_of."""
    return [sent.dataset] + [r.dataset for r in sent.restrictions if r.HasField("dataset")]


def check_context_lengths(spec: JobSpec, sent: pb.EstimateSpec, config: dict[str, Any]) -> None:
    limit = _first(config, POSITION_KEYS)
    if limit is None:
        return
    for (where, ds), given in zip(datasets_of(spec), _sent_datasets(sent)):
        if not given.HasField("context_length"):
            ds.context_length = min(ds.context_length, limit)  # the default (128) fits small models too
        elif ds.context_length > limit:
            raise InvalidArgument(f"{where}.context_length: {ds.context_length} exceeds the model's maximum context "
                                  f"length {limit} (max_position_embeddings); set it to at most {limit}")


def columns_of(path: str, file_format: str) -> list[str] | None:
    """Column names of one local file from its first rows; None when they cannot be told cheaply."""
    fmt = "json" if file_format == "jsonl" else file_format or FORMATS.get(os.path.splitext(path)[1].lower(), "")
    try:
        if fmt == "text":
            return ["text"]
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                return next(csv.reader(f), None)
        if fmt == "json":
            names: dict[str, None] = {}
            with open(path, encoding="utf-8", errors="replace") as f:
                for _ in range(SAMPLE_ROWS):
                    line = f.readline(MAX_CONFIG_BYTES)  # bounded: a file may be one huge line
                    if not line.endswith("\n") and len(line) >= MAX_CONFIG_BYTES:
                        return None
                    row = json.loads(line) if line.strip() else {}
                    if not isinstance(row, dict):
                        return None
                    names.update(dict.fromkeys(row))
            return list(names) or None
    except (OSError, ValueError, UnicodeError, ImportError):
        return None  # one JSON document over many lines, or a file the job must judge
    return None


def check_columns(where: str, ds: DatasetRef) -> None:
    if not ds.files:
        return
    first = ds.files[0]
    path = next(iter(sorted(glob.glob(first))), None) if glob.has_magic(first) else first
    columns = columns_of(path, ds.file_format) if path else None
    column = ds.input_ids_column or ds.text_column
    if columns is not None and column not in columns:
        which = "input_ids_column" if ds.input_ids_column else "text_column"
        raise NotFound(f"{where}.{which}: column {shown(column)} is not in the dataset; its columns are "
                       f"{shown(columns, 200)}")


def check(spec: JobSpec, sent: pb.EstimateSpec, *, see_files: bool) -> None:
    # A trajectory: its checkpoints share one architecture; the calibration checkpoint's config stands for all.
    config = model_config(spec.at_checkpoint(spec.calibration_index()) if spec.checkpoints else spec, see_files)
    if config is not None:
        check_selectors(spec, config)
        check_context_lengths(spec, sent, config)
    if see_files:
        for where, ds in datasets_of(spec):
            check_columns(where, ds)
