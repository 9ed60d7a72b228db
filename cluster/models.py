"""Load a causal language model from a Hugging Face hub id or a local directory.

    loaded = load_model(ModelRef(local_path="/models/pythia-14m"))
    loaded.model, loaded.tokenizer, loaded.provenance

Hub ids are resolved to a commit hash first (for provenance, and so the weights
loaded are exactly that commit); with HF_HUB_OFFLINE=1 only the local cache is
consulted. Errors are cluster.contract.errors types whose messages say what to change.
A job loads its model once per worker process: `load_model_cached`.
"""
from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.contract.errors import InvalidArgument, NotFound, PermissionDenied
from cluster.contract.spec import REMOTE_CODE_ENV, ModelRef

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: torch.nn.Module  # eval mode, requires_grad False everywhere (the engine turns on what moves)
    tokenizer: Any | None
    provenance: dict  # {"hub_id"|"local_path", "revision", "commit", "dtype", "architecture", "num_parameters"}
    max_positions: int | None  # the model's maximum context length
    architecture: str  # config.model_type, e.g. "gpt2", "gpt_neox", "llama"


def hub_offline() -> bool:
    from cluster.hub import hub_offline as offline

    return offline()


def resolve_hub_commit(hub_id: str, revision: str, *, repo_type: str = "model") -> str:
    """The commit hash of `revision` (branch, tag or hash; '' = default branch): cluster.hub.resolve_commit."""
    from cluster.hub import resolve_commit

    return resolve_commit(hub_id, revision, repo_type)


def _hub_failure(exc: BaseException, ref: ModelRef):
    """The domain error for a hub failure inside transformers (gated, unreachable...), else None."""
    if not ref.hub_id:
        return None
    from cluster.hub import hub_error

    return hub_error(exc, ref.hub_id, ref.revision)


def _local_hash(path: Path) -> str:
    """Content hash of a model directory: cluster.hub.content_hash (config.json and weights, in full)."""
    from cluster.hub import content_hash

    return content_hash(path)


def max_positions_of(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _torch_dtype(name: str):
    return "auto" if name == "auto" else getattr(torch, name)


def load_model(ref: ModelRef, device: str | torch.device = "cpu") -> LoadedModel:
    """Load `ref` as an AutoModelForCausalLM in eval mode with every requires_grad off."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if ref.trust_remote_code and os.environ.get(REMOTE_CODE_ENV) != "1":
        # Defence in depth: the front end refuses such requests unless its deployment allows them.
        raise PermissionDenied(f"model.trust_remote_code: this cluster does not run a model's own code "
                               f"({REMOTE_CODE_ENV} is not 1 in the job's environment); use a model that "
                               "transformers supports natively, or ask the operator to allow remote code")
    provenance: dict[str, Any] = {}
    if ref.local_path:
        path = Path(ref.local_path).expanduser()
        if not path.is_dir():
            raise NotFound(f"model.local_path {ref.local_path!r} does not exist or is not a directory; "
                           "give a directory saved with save_pretrained (config.json + safetensors)")
        if not (path / "config.json").is_file():
            raise NotFound(f"model.local_path {ref.local_path!r} has no config.json; "
                           "give a directory saved with save_pretrained")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise NotFound(f"model.local_path {ref.local_path!r} has no weights ({' or '.join(WEIGHT_FILES[:2])}); "
                           "save the model with save_pretrained")
        source, revision = str(path), None
        provenance.update(local_path=str(path.resolve()), revision="", commit=None, content_hash=_local_hash(path))
    else:
        commit = resolve_hub_commit(ref.hub_id, ref.revision)
        source, revision = ref.hub_id, commit
        provenance.update(hub_id=ref.hub_id, revision=ref.revision, commit=commit)

    try:
        config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=ref.trust_remote_code)
    except ValueError as exc:
        # Unknown model_type, or custom code that needs trust_remote_code.
        hint = "" if ref.trust_remote_code else " If the model ships its own code, set model.trust_remote_code=true."
        raise InvalidArgument(f"model {source!r}: transformers cannot read its config: {exc}.{hint}") from None
    except OSError as exc:
        raise _hub_failure(exc, ref) or NotFound(f"model {source!r}: cannot read its config: {exc}") from None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=_torch_dtype(ref.dtype), trust_remote_code=ref.trust_remote_code,
            config=config, output_loading_info=True)
    except ValueError as exc:
        raise InvalidArgument(f"model {source!r} ({config.model_type}) is not a causal language model that "
                              f"AutoModelForCausalLM can load: {exc}") from None
    except OSError as exc:
        raise _hub_failure(exc, ref) or NotFound(f"model {source!r}: cannot load its weights: {exc}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        # Newly initialised weights: the LLC would describe a random model, not the checkpoint.
        raise InvalidArgument(
            f"model {source!r} ({config.model_type}) lacks {len(missing)} weights that "
            f"{type(model).__name__} needs (e.g. {missing[:3]}): it is not a causal language model checkpoint. "
            "Give a model saved with its language-modelling head (AutoModelForCausalLM)")
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    skip_padding_check(model)

    tokenizer = None
    has_tokenizer = not ref.local_path or any((Path(source) / f).is_file() for f in TOKENIZER_FILES)
    if has_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=ref.trust_remote_code)
        except (OSError, ValueError) as exc:  # no tokenizer in the repo: pre-tokenized datasets still work
            provenance["tokenizer_error"] = str(exc).splitlines()[0][:200]

    first = next(model.parameters())
    provenance.update(
        dtype=str(first.dtype).removeprefix("torch."),
        architecture=config.model_type,
        num_parameters=sum(p.numel() for p in model.parameters()),
        tokenizer=type(tokenizer).__name__ if tokenizer is not None else None,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, provenance=provenance,
                       max_positions=max_positions_of(config), architecture=config.model_type)


def _rows_are_never_padded(input_ids, attention_mask) -> None:
    return None


def skip_padding_check(model: Any) -> None:
    """Turns off transformers' "input_ids may be padded" check on every sub-model of `model`.

    Our rows are cut from documents and never padded (cluster.datasets), so the check can
    only be wrong; it also reads token ids to the host each forward (`in` calls .item()),
    a device sync per SGLD step that torch.func.vmap refuses outright, so chains of a model
    whose config has a pad_token_id (GPT-2 saved by tokenizer tooling) could not be batched.
    """
    for module in model.modules():
        if hasattr(module, "warn_if_padding_and_no_attention_mask"):
            module.warn_if_padding_and_no_attention_mask = _rows_are_never_padded


def checkpoint_activations(model: Any) -> int:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (Hugging Face activation checkpointing, non-reentrant); returns the layers checkpointed, 0
    where the architecture has none. The lean memory mode uses it: at Pythia-6.9B shape and batch
    8 × 512 the kept activations (~30 GB) would not fit beside 69 GB of weights and drift, while
    checkpointed layers keep one hidden state each (~1 GB). Same arithmetic, same losses.

    Transformers checkpoints a layer only in training mode. The model stays in eval mode; only the
    layer modules' own flags are set, so dropout and every other submodule still see eval."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return 0
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if hasattr(model, "disable_input_require_grads"):
        model.disable_input_require_grads()  # only reentrant checkpoints need inputs that require grad
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52: checkpointing is decided by the model itself
        return 0
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    for layer in layers:
        layer.training = True
    return len(layers)


_cache: dict[tuple, LoadedModel] = {}
_cache_lock = threading.Lock()


def load_model_cached(ref: ModelRef, device: str | torch.device = "cpu") -> LoadedModel:
    """`load_model` once per (ref, device) in this process: every chain and restriction
    of a job on a worker shares it (the engine restores w* after each chain)."""
    key = (dataclasses.astuple(ref), str(torch.device(device)))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_model(ref, device)
        return _cache[key]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()
