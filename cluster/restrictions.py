"""Weight restrictions: which parameters (or slices of them) move in a restricted LLC.

A restriction's selectors are unioned into a `WeightSelection`: parameter name ->
boolean mask (True = moves) or None (the whole tensor moves). The engine's
`estimate_llc(..., params=selection.params)` then gives gradients, noise and
localization to the selected elements only; everything else stays at w*.

Selectors (cluster.contract.spec.WeightSelector):
  pattern      glob on parameter names (fnmatch, whole name), e.g. 'gpt_neox.layers.0.*'
  regex        RE2 regular expression searched in parameter names (linear time, so no
               pattern can pin a worker's CPU; no look-arounds or back-references)
  all          every parameter
  layer i, attention i, mlp i, head (i, h), embedding, unembedding:
               semantic, for the architectures in cluster.architectures
An empty selector list selects every parameter.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from cluster.architectures import Block, Selected, architecture_for
from cluster.contract.errors import InvalidArgument
from cluster.contract.spec import Restriction, WeightSelector, compile_regex, shown


@dataclass
class WeightSelection:
    # name -> bool mask (True = moves, same shape; may be a read-only broadcast view) or None = whole tensor
    params: dict[str, torch.Tensor | None]
    tensors: list[dict]  # [{"name", "shape", "elements"}] what moves, in model order
    elements: int  # total moving elements
    notes: list[str] = field(default_factory=list)  # e.g. grouped-query k/v sharing, tied embeddings


def _describe(sel: WeightSelector) -> str:
    if sel.kind in ("pattern", "regex"):
        return f"{sel.kind} {shown(sel.pattern)}"
    if sel.kind == "head":
        return f"head ({sel.layer}, {sel.head})"
    if sel.kind in ("layer", "attention", "mlp"):
        return f"{sel.kind} {sel.layer}"
    return sel.kind


def _name_examples(names: list[str], k: int = 4) -> str:
    listed = ", ".join(names[:k])
    return f"{listed}, ... ({len(names)} parameters)" if len(names) > k else listed


def _select_one(model, architecture: str, sel: WeightSelector, names: list[str]) -> Selected:
    if sel.kind == "all":
        return Selected({n: None for n in names})
    if sel.kind == "pattern":
        return Selected({n: None for n in names if fnmatch.fnmatchcase(n, sel.pattern)})
    if sel.kind == "regex":
        rx = compile_regex(sel.pattern)
        return Selected({n: None for n in names if rx.search(n)})
    return architecture_for(model, architecture).select(sel.kind, sel.layer, sel.head)


def _block_mask(shape: torch.Size, blocks: list[Block]) -> torch.Tensor:
    """Boolean mask of the union of `blocks`.

    When every block cuts the same dimension (a head's rows, or its columns) the mask
    is a read-only broadcast view of one index vector: a job with one restriction per
    head of a large model then holds O(rows) bytes per head, not a copy of q/k/v/o.
    """
    dims = {b.dim for b in blocks}
    if len(dims) == 1:
        dim = dims.pop()
        vec = torch.zeros(shape[dim], dtype=torch.bool)
        for b in blocks:
            vec[b.start:b.stop] = True
        view = [1] * len(shape)
        view[dim] = shape[dim]
        return vec.view(view).expand(shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    for b in blocks:
        index = [slice(None)] * len(shape)
        index[b.dim] = slice(b.start, b.stop)
        mask[tuple(index)] = True
    return mask


def select_weights(model, architecture: str, selectors: list[WeightSelector]) -> WeightSelection:
    """Union of the selectors' weights; every selector must select something.

    Raises InvalidArgument naming the selector when it selects nothing, an index
    is out of range, or the architecture has no semantic selectors.
    """
    named = dict(model.named_parameters())
    names = list(named)
    if not selectors:
        selectors = [WeightSelector(kind="all")]
    whole: set[str] = set()
    blocks: dict[str, list[Block]] = {}
    notes: list[str] = []
    for i, sel in enumerate(selectors):
        try:
            picked = _select_one(model, architecture, sel, names)
        except InvalidArgument as exc:
            raise InvalidArgument(f"weights[{i}]: {exc.message}") from None
        if not picked.slices:
            hint = (f"parameter names look like: {_name_examples(names)}"
                    if sel.kind in ("pattern", "regex") else "this model has no such weights; use a pattern selector")
            raise InvalidArgument(f"weights[{i}]: {_describe(sel)} selects no parameter; {hint}")
        notes += [n for n in picked.notes if n not in notes]
        for name, picked_blocks in picked.slices.items():
            if picked_blocks is None:
                whole.add(name)
            else:
                blocks.setdefault(name, []).extend(picked_blocks)
    params: dict[str, torch.Tensor | None] = {}
    tensors: list[dict] = []
    for name in names:  # model order, so previews and masks read top to bottom
        if name in whole:
            mask, count = None, named[name].numel()
        elif name in blocks:
            mask = _block_mask(named[name].shape, blocks[name])
            count = int(mask.sum())
            if count == mask.numel():
                mask = None  # the slices cover the whole tensor
        else:
            continue
        params[name] = mask
        tensors.append({"name": name, "shape": list(named[name].shape), "elements": count})
    return WeightSelection(params=params, tensors=tensors, elements=sum(t["elements"] for t in tensors), notes=notes)


def select_restriction(model, architecture: str, restriction: Restriction) -> WeightSelection:
    """`select_weights` with errors prefixed by the restriction's name."""
    try:
        return select_weights(model, architecture, restriction.weights)
    except InvalidArgument as exc:
        raise InvalidArgument(f"restriction {restriction.name!r}: {exc.message}") from None


def preview(model, architecture: str, restrictions: list[Restriction]) -> list[dict]:
    """Per restriction, the tensors and number of elements it moves: [{"name", "tensors", "elements"}].

    Runs before any sampling so a restriction that selects nothing fails early.
    """
    out = []
    for r in restrictions:
        sel = select_restriction(model, architecture, r)
        out.append({"name": r.name, "tensors": sel.tensors, "elements": sel.elements})
    return out
