"""Builds llc.v1 request messages from plain Python values (strings, dicts, numbers)."""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from google.protobuf import json_format

from llc import enums
from llc.v1 import llc_pb2 as pb

DATA_EXTENSIONS = (".jsonl", ".json", ".parquet", ".txt", ".csv", ".jsonl.gz", ".json.gz")
_DTYPES = enums.values(pb.Dtype)
_METHODS = enums.values(pb.SamplerMethod)
_INIT_LOSS = enums.values(pb.InitLossMode)
_KINDS = enums.values(pb.SelectorKind)
SAMPLER_FIELDS = tuple(f.name for f in pb.SamplerSettings.DESCRIPTOR.fields)
COMPUTE_FIELDS = tuple(f.name for f in pb.ComputeSettings.DESCRIPTOR.fields)
RESTRICTION_SYNTAX = ("write NAME=SELECTOR[+SELECTOR...][@DATASET], where SELECTOR is all, embedding, unembedding, "
                      "layer:I, attention:I, mlp:I, head:LAYER.HEAD, regex:RE, pattern:GLOB or a bare glob; "
                      "e.g. head0=head:0.1 or code=all@code.jsonl")


def _choice(table: Mapping[str, int], value: str, what: str) -> int:
    if value not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _looks_local(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(text))


def model_ref(model: str | Mapping[str, Any] | pb.ModelRef, *, revision: str = "", dtype: str = "") -> pb.ModelRef:
    """A hub id ('EleutherAI/pythia-14m') or a local directory; or a dict of ModelRef fields."""
    if isinstance(model, pb.ModelRef):
        return model
    if isinstance(model, Mapping):
        return json_format.ParseDict(dict(model), pb.ModelRef())
    ref = pb.ModelRef(revision=revision)
    if _looks_local(model):
        ref.local_path = os.path.abspath(os.path.expanduser(model))
    else:
        ref.hub_id = model
    if dtype:
        ref.dtype = _choice(_DTYPES, dtype, "dtype")
    return ref


def dataset_ref(dataset: str | Iterable[str] | Mapping[str, Any] | pb.DatasetRef, **fields: Any) -> pb.DatasetRef:
    """A hub id, a local data file (or list of files), or a dict of DatasetRef fields.
    `fields` sets the rest: split, text_column, context_length, max_examples, ..."""
    if isinstance(dataset, pb.DatasetRef):
        ref = dataset
    elif isinstance(dataset, Mapping):
        ref = json_format.ParseDict(dict(dataset), pb.DatasetRef())
    elif isinstance(dataset, str) and not (_looks_local(dataset) or dataset.endswith(DATA_EXTENSIONS)):
        ref = pb.DatasetRef(hub_id=dataset)
    else:
        files = [dataset] if isinstance(dataset, str) else list(dataset)
        ref = pb.DatasetRef(files=[os.path.abspath(os.path.expanduser(f)) for f in files])
    for name, value in fields.items():
        if value is None:
            continue
        if name not in pb.DatasetRef.DESCRIPTOR.fields_by_name:
            raise ValueError(f"unknown dataset setting {name!r}; allowed: {sorted(pb.DatasetRef.DESCRIPTOR.fields_by_name)}")
        setattr(ref, name, value)
    return ref


def _selector(text: str, restriction: str) -> pb.WeightSelector:
    kind, sep, arg = text.partition(":")
    if not sep:
        if kind in ("all", "embedding", "unembedding"):
            return pb.WeightSelector(kind=_KINDS[kind])
        if kind in _KINDS:
            raise ValueError(f"restriction {restriction!r}: selector {text!r} needs an argument ({kind}:...); "
                             + RESTRICTION_SYNTAX)
        return pb.WeightSelector(kind=pb.SELECTOR_KIND_PATTERN, pattern=text)  # a bare glob
    if kind not in _KINDS:
        raise ValueError(f"restriction {restriction!r}: unknown selector kind {kind!r}; " + RESTRICTION_SYNTAX)
    if kind in ("pattern", "regex"):
        return pb.WeightSelector(kind=_KINDS[kind], pattern=arg)
    try:
        if kind == "head":
            layer, _, head = arg.partition(".")
            return pb.WeightSelector(kind=pb.SELECTOR_KIND_HEAD, layer=int(layer), head=int(head))
        return pb.WeightSelector(kind=_KINDS[kind], layer=int(arg))
    except ValueError:
        raise ValueError(f"restriction {restriction!r}: {text!r} needs integer indices; " + RESTRICTION_SYNTAX) from None


def restriction(spec: str | Mapping[str, Any] | pb.Restriction) -> pb.Restriction:
    """'NAME=SEL[+SEL...][@DATASET]' (see RESTRICTION_SYNTAX), a dict of Restriction fields, or a message."""
    if isinstance(spec, pb.Restriction):
        return spec
    if isinstance(spec, Mapping):
        return json_format.ParseDict(dict(spec), pb.Restriction())
    body, _, data = spec.partition("@")
    name, eq, selectors = body.partition("=")
    if not name or (not eq and not data) or (eq and not selectors):
        raise ValueError(f"malformed restriction {spec!r}; " + RESTRICTION_SYNTAX)
    r = pb.Restriction(name=name)
    if eq:
        r.weights.extend(_selector(s, name) for s in selectors.split("+"))
    if data:
        r.dataset.CopyFrom(dataset_ref(data))
    return r


def estimate_spec(model, dataset, *, restrictions: Iterable[Any] = (), batch_size: int | None = None,
                  context_length: int | None = None, max_examples: int | None = None, text_column: str | None = None,
                  observables: Any = None, checkpoints: Iterable[Any] | None = None,
                  calibrate_at_step: int | None = None, use_cache: bool | None = None,
                  **settings: Any) -> pb.EstimateSpec:
    """An EstimateSpec. `settings` are sampler fields (step_size, nbeta, gamma, chains, draws, ...)
    and compute fields (gpus_per_chain, cpus_per_chain, max_chain_retries, timeout_s).
    `checkpoints` make it an LLC trajectory (llc.trajectories.checkpoint: (step, dir or revision));
    `model` is then the hub id the revisions belong to, or None when every checkpoint is a directory."""
    spec = pb.EstimateSpec(model=model_ref(model) if model is not None else pb.ModelRef(),
                           dataset=dataset_ref(dataset, context_length=context_length, max_examples=max_examples,
                                               text_column=text_column))
    spec.restrictions.extend(restriction(r) for r in restrictions)
    for r in spec.restrictions:  # a data restriction is tokenized like the main dataset unless it says otherwise
        if r.HasField("dataset"):
            for name in ("context_length", "text_column", "packing"):
                if spec.dataset.HasField(name) and not r.dataset.HasField(name):
                    setattr(r.dataset, name, getattr(spec.dataset, name))
            if not r.dataset.max_examples:
                r.dataset.max_examples = spec.dataset.max_examples
    if observables is not None:  # a pb.Observables, or llc.observables.observables_spec's keywords
        from llc.observables import inherit_tokenization, observables_spec

        spec.observables.CopyFrom(observables if isinstance(observables, pb.Observables) else observables_spec(**observables))
        inherit_tokenization(spec)
    if checkpoints:
        from llc.trajectories import add_checkpoints

        add_checkpoints(spec, checkpoints, calibrate_at_step, use_cache)
    if batch_size is not None:
        spec.batch_size = batch_size
    for name, value in settings.items():
        if value is None:
            continue
        if name in COMPUTE_FIELDS:
            setattr(spec.compute, name, value)
        elif name == "method":
            spec.sampler.method = _choice(_METHODS, value, "method")
        elif name == "init_loss":
            spec.sampler.init_loss = _choice(_INIT_LOSS, value, "init_loss")
        elif name == "dtype":
            spec.sampler.dtype = _choice(_DTYPES, value, "dtype")
        elif name in SAMPLER_FIELDS:
            setattr(spec.sampler, name, value)
        else:
            raise ValueError(f"unknown setting {name!r}; sampler: {list(SAMPLER_FIELDS)}, compute: {list(COMPUTE_FIELDS)}")
    return spec
