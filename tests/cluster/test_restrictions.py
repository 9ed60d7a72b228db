"""Weight selection: semantic selectors pick exactly the right slices, checked
against what the modules actually compute (forward hooks), not against the same
index arithmetic; errors name what to fix."""
from __future__ import annotations

import pytest
import torch

from cluster.contract.errors import InvalidArgument
from cluster.models import load_model
from cluster.restrictions import preview, select_weights
from cluster.contract.spec import ModelRef, Restriction, WeightSelector as W

HEADS, HIDDEN = 4, 16
HEAD_DIM = HIDDEN // HEADS

# model key -> (attention output projection of layer {i}, its kind)
OUT_PROJ = {
    "gpt2": "transformer.h.{i}.attn.c_proj",
    "gpt_neox": "gpt_neox.layers.{i}.attention.dense",
    "llama": "model.layers.{i}.self_attn.o_proj",
    "llama_mha": "model.layers.{i}.self_attn.o_proj",
    "opt": "model.decoder.layers.{i}.self_attn.out_proj",
}


@pytest.fixture(scope="module")
def models(tiny_lm_dirs):
    return {k: load_model(ModelRef(local_path=str(d))) for k, d in tiny_lm_dirs.items()}


def _head_outputs(model, out_proj: str, input_ids: torch.Tensor) -> torch.Tensor:
    """The input of the attention output projection: heads' outputs side by side [B, T, heads*head_dim]."""
    captured = {}
    module = model.get_submodule(out_proj)
    handle = module.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        handle.remove()
    return captured["x"]


def _perturb(model, params: dict, only=lambda name: True, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Add noise where the masks are True; returns the originals to restore."""
    named = dict(model.named_parameters())
    saved = {}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, mask in params.items():
            if not only(name):
                continue
            p = named[name]
            saved[name] = p.detach().clone()
            noise = torch.randn(p.shape, generator=g) * scale
            p.add_(noise if mask is None else noise * mask)
    return saved


def _restore(model, saved):
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            named[name].copy_(value)


@pytest.mark.parametrize("key", list(OUT_PROJ))
@pytest.mark.parametrize("layer,head", [(0, 0), (1, 2), (1, 3)])
def test_head_qkv_slices_change_only_that_heads_output(models, key, layer, head):
    lm = models[key]
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=layer, head=head)])
    out_proj = OUT_PROJ[key].format(i=layer)
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    before = _head_outputs(lm.model, out_proj, ids)
    saved = _perturb(lm.model, sel.params, only=lambda n: not n.startswith(out_proj + "."))
    try:
        after = _head_outputs(lm.model, out_proj, ids)
    finally:
        _restore(lm.model, saved)
    diff = (after - before).abs().reshape(*before.shape[:-1], HEADS, HEAD_DIM).amax(dim=(0, 1, 3))
    assert diff[head] > 1e-3, f"head {head} did not change: {diff}"
    others = [h for h in range(HEADS) if h != head]
    assert torch.all(diff[others] == 0), f"other heads changed: {diff}"


@pytest.mark.parametrize("key", list(OUT_PROJ))
def test_head_output_projection_slice_reads_only_that_head(models, key):
    lm, layer, head = models[key], 1, 2
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=layer, head=head)])
    out_proj = OUT_PROJ[key].format(i=layer)
    module = lm.model.get_submodule(out_proj)
    x = torch.randn(2, 5, HIDDEN, generator=torch.Generator().manual_seed(0))
    x_without_head = x.clone()
    x_without_head[..., head * HEAD_DIM:(head + 1) * HEAD_DIM] = 0
    with torch.no_grad():
        ref_full, ref_without = module(x), module(x_without_head)
    saved = _perturb(lm.model, {out_proj + ".weight": sel.params[out_proj + ".weight"]})
    try:
        with torch.no_grad():
            new_full, new_without = module(x), module(x_without_head)
    finally:
        _restore(lm.model, saved)
    # The moved elements multiply only this head's output: without it, nothing changes.
    assert torch.equal(new_without, ref_without)
    assert (new_full - ref_full).abs().max() > 1e-3
    assert out_proj + ".bias" not in sel.params  # shared by all heads


@pytest.mark.parametrize("key,expected", [
    # q,k,v rows (+ biases) and output-projection inputs of one head; d=16, head_dim=4
    ("gpt2", 3 * 16 * 4 + 3 * 4 + 4 * 16),
    ("gpt_neox", 3 * 16 * 4 + 3 * 4 + 4 * 16),
    ("llama_mha", 3 * 4 * 16 + 16 * 4),
    ("llama", 4 * 16 + 16 * 4),  # grouped-query: q rows and o_proj columns only
    ("opt", 3 * 16 * 4 + 3 * 4 + 16 * 4),
])
def test_head_element_counts(models, key, expected):
    lm = models[key]
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=1)])
    assert sel.elements == expected
    assert sel.elements == sum(int(m.sum()) if m is not None else dict(lm.model.named_parameters())[n].numel()
                               for n, m in sel.params.items())


def test_grouped_query_head_says_how_kv_is_shared(models):
    lm = models["llama"]
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=1, head=3)])
    assert not any("k_proj" in n or "v_proj" in n for n in sel.params)
    assert len(sel.notes) == 1 and "key/value head 1" in sel.notes[0] and "[2, 3]" in sel.notes[0]


@pytest.mark.parametrize("key,kind,prefixes", [
    ("gpt2", "mlp", ["transformer.h.1.mlp."]),
    ("gpt2", "attention", ["transformer.h.1.attn."]),
    ("gpt2", "layer", ["transformer.h.1."]),
    ("gpt_neox", "mlp", ["gpt_neox.layers.1.mlp."]),
    ("gpt_neox", "attention", ["gpt_neox.layers.1.attention."]),
    ("llama", "mlp", ["model.layers.1.mlp."]),
    ("llama", "attention", ["model.layers.1.self_attn."]),
    ("opt", "mlp", ["model.decoder.layers.1.fc1.", "model.decoder.layers.1.fc2."]),
    ("opt", "layer", ["model.decoder.layers.1."]),
])
def test_layer_selectors_take_whole_tensors_under_their_prefix(models, key, kind, prefixes):
    lm = models[key]
    sel = select_weights(lm.model, lm.architecture, [W(kind=kind, layer=1)])
    expected = [n for n, _ in lm.model.named_parameters() if any(n.startswith(p) for p in prefixes)]
    assert list(sel.params) == expected and expected
    assert all(m is None for m in sel.params.values())


@pytest.mark.parametrize("key,embedding,unembedding,note", [
    ("gpt2", ["transformer.wte.weight", "transformer.wpe.weight"], ["transformer.wte.weight"], True),
    ("gpt_neox", ["gpt_neox.embed_in.weight"], ["lm_head.weight"], False),
    ("llama", ["model.embed_tokens.weight"], ["lm_head.weight"], False),
    ("opt", ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"],
     ["model.decoder.embed_tokens.weight"], True),
])
def test_embedding_and_unembedding(models, key, embedding, unembedding, note):
    lm = models[key]
    assert list(select_weights(lm.model, lm.architecture, [W(kind="embedding")]).params) == embedding
    un = select_weights(lm.model, lm.architecture, [W(kind="unembedding")])
    assert list(un.params) == unembedding
    assert bool(un.notes) == note  # tied embeddings are said to move together


def test_patterns_regex_all_and_union(models):
    lm = models["gpt_neox"]
    names = [n for n, _ in lm.model.named_parameters()]
    every = select_weights(lm.model, lm.architecture, [])
    assert list(every.params) == names and every.elements == sum(p.numel() for p in lm.model.parameters())
    assert select_weights(lm.model, lm.architecture, [W(kind="all")]).params == every.params
    glob = select_weights(lm.model, lm.architecture, [W(kind="pattern", pattern="gpt_neox.layers.0.*.bias")])
    assert list(glob.params) == [n for n in names if n.startswith("gpt_neox.layers.0.") and n.endswith(".bias")]
    rx = select_weights(lm.model, lm.architecture, [W(kind="regex", pattern=r"layernorm\.weight$")])
    assert len(rx.params) == 4
    # A head plus its whole layer's attention: the whole tensors win over the head's slices.
    both = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=1), W(kind="attention", layer=0)])
    assert all(m is None for m in both.params.values())
    assert both.params.keys() == select_weights(lm.model, lm.architecture, [W(kind="attention", layer=0)]).params.keys()
    # Two heads of a layer: masks are unioned.
    two = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=0), W(kind="head", layer=0, head=1)])
    one = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=0)])
    assert two.elements == 2 * one.elements


def test_every_head_of_a_model_partitions_the_attention_weights(models):
    """All heads together cover q/k/v and the output projection's weight exactly once."""
    lm = models["gpt2"]
    total = {}
    for layer in range(2):
        for head in range(HEADS):
            sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=layer, head=head)])
            for name, mask in sel.params.items():
                total[name] = total.get(name, 0) + mask.int()
    for name, count in total.items():
        assert torch.all(count == 1), name
    assert sorted(total) == sorted(n for n, _ in lm.model.named_parameters()
                                   if ".attn." in n and not n.endswith("c_proj.bias"))


@pytest.mark.parametrize("selector,message", [
    (W(kind="head", layer=0, head=4), "head 4 is out of range; layer 0 has heads 0..3"),
    (W(kind="head", layer=2, head=0), "layer 2 is out of range; this model has layers 0..1"),
    (W(kind="mlp", layer=9), "layer 9 is out of range"),
    (W(kind="pattern", pattern="transformer.h.7.*"), "pattern 'transformer.h.7.*' selects no parameter; "
                                                     "parameter names look like: transformer.wte.weight"),
    (W(kind="regex", pattern=r"^lm_head"), "regex '^lm_head' selects no parameter"),
])
def test_bad_selectors_name_what_to_fix(models, selector, message):
    lm = models["gpt2"]
    with pytest.raises(InvalidArgument, match=r"^weights\[0\]: ") as exc:
        select_weights(lm.model, lm.architecture, [selector])
    assert message in str(exc.value)


def test_architecture_without_semantic_selectors_points_to_patterns():
    from transformers import AutoModelForCausalLM, GPTJConfig

    model = AutoModelForCausalLM.from_config(GPTJConfig(n_layer=1, n_head=2, n_embd=8, vocab_size=20, n_positions=16,
                                                        rotary_dim=4))
    with pytest.raises(InvalidArgument) as exc:
        select_weights(model, "gptj", [W(kind="head", layer=0, head=0)])
    msg = str(exc.value)
    assert "'gptj' has no semantic selectors" in msg and "use pattern or regex selectors" in msg
    assert "transformer.h.0.*" in msg
    # Patterns still work there.
    assert select_weights(model, "gptj", [W(kind="pattern", pattern="transformer.h.0.*")]).elements > 0


def test_preview_per_restriction_and_errors_carry_the_restriction_name(models):
    lm = models["gpt2"]
    rows = preview(lm.model, lm.architecture, [
        Restriction("full"),
        Restriction("head_1_2", [W(kind="head", layer=1, head=2)]),
        Restriction("embed", [W(kind="embedding")]),
    ])
    assert [r["name"] for r in rows] == ["full", "head_1_2", "embed"]
    assert rows[0]["elements"] == sum(p.numel() for p in lm.model.parameters())
    assert rows[1]["tensors"][0] == {"name": "transformer.h.1.attn.c_attn.weight", "shape": [16, 48], "elements": 192}
    assert set(rows[0]) == {"name", "tensors", "elements"}
    with pytest.raises(InvalidArgument, match="restriction 'bad': weights\\[1\\]: pattern 'nope' selects no parameter"):
        preview(lm.model, lm.architecture, [Restriction("ok"), Restriction("bad", [W(kind="embedding"),
                                                                                  W(kind="pattern", pattern="nope")])])


@pytest.mark.parametrize("key", list(OUT_PROJ))
def test_head_masks_do_not_copy_the_weights(models, key):
    """One restriction per head of a big model must not hold a bool copy of q/k/v/o each."""
    lm = models[key]
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=3)])
    for name, mask in sel.params.items():
        assert mask is not None and mask.dtype == torch.bool
        if mask.dim() == 2:
            assert mask.untyped_storage().nbytes() == max(mask.shape), name  # one index vector, broadcast
