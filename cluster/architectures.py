"""Semantic weight selectors (layer, head, attention, MLP, embedding, unembedding)
for common causal-LM architectures, as parameter names and index slices.

Each architecture maps a selector to `Slices`: parameter name -> None (the whole
tensor) or a list of `Block(dim, start, stop)` index ranges. `cluster.restrictions`
turns these into boolean masks. Head slices follow the exact memory layout of the
transformers 5.x modules (checked against their source):

- GPT-2 `attn.c_attn` is a Conv1D, weight [d_model, 3*d_model]: q | k | v along
  the output (column) axis, each split into heads of head_dim; `attn.c_proj`
  weight [d_model (heads), d_model]: a head's rows.
- GPT-NeoX `attention.query_key_value` is a Linear, weight [3*d_model, d_model]
  whose output axis is viewed as [heads, 3*head_dim] (per head: q, k, v), so a
  head owns one contiguous block of 3*head_dim rows; `attention.dense` weight
  [d_model, d_model (heads)]: a head's columns.
- Llama / Mistral / Qwen2 / Qwen3 and OPT: separate q/k/v Linear projections
  (weight [heads*head_dim, d_model]): a head's rows; output projection
  (`o_proj` / `out_proj`): a head's columns.
Biases shared by all heads (output-projection biases) belong to no head.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from cluster.contract.errors import InvalidArgument


class Block(NamedTuple):
    """Indices [start, stop) along dimension `dim` of a parameter."""

    dim: int
    start: int
    stop: int


Slices = dict[str, "list[Block] | None"]


@dataclass(frozen=True)
class HeadLayout:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class Selected:
    """What one semantic selector picks, plus notes a user should read (sharing, ties)."""

    slices: Slices
    notes: list[str] = field(default_factory=list)


class Architecture:
    """Parameter layout of one model family. Subclasses fill in the names."""

    model_types: tuple[str, ...] = ()
    layer_prefix: str = ""  # format string with {i}
    attention_prefix: str = ""  # format string with {i}
    mlp_names: tuple[str, ...] = ()  # format strings with {i}: prefixes of the MLP's parameters
    embedding_names: tuple[str, ...] = ()
    unembedding_name: str = ""

    def __init__(self, config, param_names: list[str], tied_to: dict[str, str]):
        self.config = config
        self.names = param_names
        self.tied_to = tied_to  # a tied parameter's name -> the name it appears under in named_parameters()
        self.layout = self.head_layout(config)

    # -- per-family -------------------------------------------------------
    @staticmethod
    def head_layout(config) -> HeadLayout:
        raise NotImplementedError

    def head_slices(self, layer: int, head: int) -> Selected:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------
    def _with_prefix(self, prefix: str) -> Slices:
        return {n: None for n in self.names if n.startswith(prefix)}

    def _check_layer(self, layer: int, kind: str) -> None:
        n = self.layout.num_layers
        if not 0 <= layer < n:
            raise InvalidArgument(f"{kind} selector: layer {layer} is out of range; this model has layers 0..{n - 1}")

    def select(self, kind: str, layer: int = -1, head: int = -1) -> Selected:
        if kind in ("layer", "attention", "mlp", "head"):
            self._check_layer(layer, kind)
        if kind == "layer":
            return Selected(self._with_prefix(self.layer_prefix.format(i=layer)))
        if kind == "attention":
            return Selected(self._with_prefix(self.attention_prefix.format(i=layer)))
        if kind == "mlp":
            out: Slices = {}
            for name in self.mlp_names:
                out.update(self._with_prefix(name.format(i=layer)))
            return Selected(out)
        if kind == "head":
            h = self.layout.num_heads
            if not 0 <= head < h:
                raise InvalidArgument(f"head selector: head {head} is out of range; layer {layer} has heads 0..{h - 1}")
            return self.head_slices(layer, head)
        if kind == "embedding":
            return Selected({n: None for n in self.embedding_names if n in self.names})
        if kind == "unembedding":
            name = self.unembedding_name
            if name in self.names:
                return Selected({name: None})
            if name in self.tied_to:
                shared = self.tied_to[name]
                return Selected({shared: None}, [f"the unembedding {name} is tied to {shared}: selecting it moves the embedding too"])
            return Selected({})
        raise InvalidArgument(f"selector kind {kind!r} is not semantic; use pattern, regex or all")

    def _rows(self, name: str, start: int, stop: int, dim: int = 0) -> Slices:
        return {name: [Block(dim, start, stop)]} if name in self.names else {}


class GPT2(Architecture):
    model_types = ("gpt2",)
    layer_prefix = "transformer.h.{i}."
    attention_prefix = "transformer.h.{i}.attn."
    mlp_names = ("transformer.h.{i}.mlp.",)
    embedding_names = ("transformer.wte.weight", "transformer.wpe.weight")
    unembedding_name = "lm_head.weight"

    @staticmethod
    def head_layout(config) -> HeadLayout:
        return HeadLayout(config.n_layer, config.n_head, config.n_head, config.n_embd // config.n_head)

    def head_slices(self, layer: int, head: int) -> Selected:
        d, hd = self.config.n_embd, self.layout.head_dim
        p = f"transformer.h.{layer}.attn."
        qkv = [Block(1, part * d + head * hd, part * d + (head + 1) * hd) for part in range(3)]
        out: Slices = {p + "c_attn.weight": qkv, p + "c_attn.bias": [Block(0, b.start, b.stop) for b in qkv]}
        out.update(self._rows(p + "c_proj.weight", head * hd, (head + 1) * hd, dim=0))
        return Selected({k: v for k, v in out.items() if k in self.names})


class GPTNeoX(Architecture):
    model_types = ("gpt_neox",)
    layer_prefix = "gpt_neox.layers.{i}."
    attention_prefix = "gpt_neox.layers.{i}.attention."
    mlp_names = ("gpt_neox.layers.{i}.mlp.",)
    embedding_names = ("gpt_neox.embed_in.weight",)
    unembedding_name = "embed_out.weight"

    def __init__(self, config, param_names, tied_to):
        super().__init__(config, param_names, tied_to)
        # transformers >= 5 names the unembedding lm_head; older checkpoints embed_out.
        if "lm_head.weight" in param_names or "lm_head.weight" in tied_to:
            self.unembedding_name = "lm_head.weight"

    @staticmethod
    def head_layout(config) -> HeadLayout:
        h = config.num_attention_heads
        return HeadLayout(config.num_hidden_layers, h, h, config.hidden_size // h)

    def head_slices(self, layer: int, head: int) -> Selected:
        hd = self.layout.head_dim
        p = f"gpt_neox.layers.{layer}.attention."
        out: Slices = {}
        # Output axis of query_key_value is [heads, 3*head_dim]: one block per head.
        out.update(self._rows(p + "query_key_value.weight", head * 3 * hd, (head + 1) * 3 * hd))
        out.update(self._rows(p + "query_key_value.bias", head * 3 * hd, (head + 1) * 3 * hd))
        out.update(self._rows(p + "dense.weight", head * hd, (head + 1) * hd, dim=1))
        return Selected(out)


class SeparateQKV(Architecture):
    """Separate q/k/v/output projections, optionally grouped-query attention."""

    q, k, v, o = "q_proj", "k_proj", "v_proj", "o_proj"

    def head_slices(self, layer: int, head: int) -> Selected:
        lay = self.layout
        hd = lay.head_dim
        p = self.attention_prefix.format(i=layer)
        out: Slices = {}
        for suffix in ("weight", "bias"):
            out.update(self._rows(f"{p}{self.q}.{suffix}", head * hd, (head + 1) * hd))
        notes: list[str] = []
        if lay.num_kv_heads == lay.num_heads:
            for proj in (self.k, self.v):
                for suffix in ("weight", "bias"):
                    out.update(self._rows(f"{p}{proj}.{suffix}", head * hd, (head + 1) * hd))
        else:
            group_size = lay.num_heads // lay.num_kv_heads
            g = head // group_size
            sharing = list(range(g * group_size, (g + 1) * group_size))
            notes.append(
                f"grouped-query attention: head {layer}.{head} reads key/value head {g}, shared with heads "
                f"{sharing} of layer {layer}; its {self.k}/{self.v} rows stay fixed, only its {self.q} rows and "
                f"{self.o} columns move (select the whole attention of layer {layer} to move k/v too)")
        out.update(self._rows(f"{p}{self.o}.weight", head * hd, (head + 1) * hd, dim=1))
        return Selected(out, notes)


class Llama(SeparateQKV):
    model_types = ("llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe")
    layer_prefix = "model.layers.{i}."
    attention_prefix = "model.layers.{i}.self_attn."
    mlp_names = ("model.layers.{i}.mlp.", "model.layers.{i}.block_sparse_moe.")
    embedding_names = ("model.embed_tokens.weight",)
    unembedding_name = "lm_head.weight"

    @staticmethod
    def head_layout(config) -> HeadLayout:
        h = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or h
        hd = getattr(config, "head_dim", None) or config.hidden_size // h
        return HeadLayout(config.num_hidden_layers, h, kv, hd)


class OPT(SeparateQKV):
    model_types = ("opt",)
    o = "out_proj"
    layer_prefix = "model.decoder.layers.{i}."
    attention_prefix = "model.decoder.layers.{i}.self_attn."
    mlp_names = ("model.decoder.layers.{i}.fc1.", "model.decoder.layers.{i}.fc2.")
    embedding_names = ("model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
                       "model.decoder.project_in.weight")
    unembedding_name = "lm_head.weight"

    @staticmethod
    def head_layout(config) -> HeadLayout:
        h = config.num_attention_heads
        return HeadLayout(config.num_hidden_layers, h, h, config.hidden_size // h)


FAMILIES: tuple[type[Architecture], ...] = (GPT2, GPTNeoX, Llama, OPT)
SUPPORTED = tuple(t for fam in FAMILIES for t in fam.model_types)


def architecture_for(model, architecture: str) -> Architecture:
    """The semantic layout of `model`, or InvalidArgument saying to use name patterns."""
    for fam in FAMILIES:
        if architecture in fam.model_types:
            names = [n for n, _ in model.named_parameters()]
            return fam(model.config, names, tied_parameters(model))
    names = [n for n, _ in model.named_parameters()]
    layered = next((n for n in names if re.search(r"\.\d+\.", n)), None)
    glob = re.sub(r"\.\d+\..*", ".0.*", layered, count=1) if layered else (names[0] if names else "*")
    raise InvalidArgument(
        f"architecture {architecture!r} has no semantic selectors (layer, head, attention, mlp, embedding, "
        f"unembedding); they exist for {sorted(SUPPORTED)}. Instead, use pattern or regex selectors on parameter "
        f"names, e.g. {{'kind': 'pattern', 'pattern': '{glob}'}}")


def tied_parameters(model) -> dict[str, str]:
    """Names that named_parameters() hides because the tensor is shared -> the name it is listed under."""
    listed: dict[int, str] = {}
    for name, p in model.named_parameters():
        listed.setdefault(id(p), name)
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first = listed.get(id(p))
        if first is not None and first != name:
            tied[name] = first
    return tied

