"""Restricted LLCs through the real engine on tiny GPT-2, GPT-NeoX and Llama models:
only the selected elements move, a restriction selecting everything is the
full-model LLC, and a data restriction changes the loss source."""
from __future__ import annotations

import pytest
import torch

from cluster.datasets import lm_loss, load_token_dataset, make_batches
from cluster.contract.sampler import SamplerConfig
from cluster.engine.estimate import estimate_llc
from cluster.models import load_model
from cluster.restrictions import select_weights
from cluster.contract.spec import DatasetRef, ModelRef, WeightSelector as W

CONFIG = SamplerConfig(step_size=1e-3, nbeta=20.0, gamma=100.0, chains=1, draws=12, fetch_every=4, seed=3)


@pytest.fixture(scope="module")
def loaded(tiny_lm_dirs):
    return {k: load_model(ModelRef(local_path=str(tiny_lm_dirs[k]))) for k in ("gpt2", "gpt_neox", "llama")}


@pytest.fixture(scope="module")
def batches(loaded, text_jsonl):
    lm = loaded["gpt2"]  # every tiny model shares the tokenizer
    ds = load_token_dataset(DatasetRef(files=[str(text_jsonl)], context_length=16, max_examples=32),
                            lm.tokenizer, lm.max_positions)
    return make_batches(ds, 8)


@pytest.mark.parametrize("key", ["gpt2", "gpt_neox", "llama"])
def test_sampling_a_head_moves_exactly_its_elements(loaded, batches, key):
    lm = loaded[key]
    sel = select_weights(lm.model, lm.architecture, [W(kind="head", layer=1, head=2)])
    anchor = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    seen = []

    def snapshot(progress):
        named = dict(lm.model.named_parameters())
        moved = {n: (p.detach() != anchor[n]) for n, p in named.items()}
        grads = {n for n, p in named.items() if p.requires_grad}
        seen.append((moved, grads))

    result = estimate_llc(lm.model, lm_loss, batches, CONFIG, params=sel.params, progress=snapshot)
    assert seen and result.chains[0].status == "succeeded"
    for moved, grads in seen:
        assert grads == set(sel.params)  # gradients only for the restriction's tensors
        for name, changed in moved.items():
            if name not in sel.params:
                assert not changed.any(), f"{name} moved but is not selected"
            elif sel.params[name] is None:
                assert changed.all(), name
            else:
                assert torch.equal(changed, sel.params[name]), f"{name}: moved elements differ from the head's slice"
    # The engine puts w* back after the chain, so the next restriction starts from it.
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, anchor[name]), name
        assert not p.requires_grad


def test_full_model_llc_equals_a_restriction_selecting_everything(loaded, batches):
    lm = loaded["gpt_neox"]
    config = CONFIG.replace(chains=2)
    full = estimate_llc(lm.model, lm_loss, batches, config)
    everything = select_weights(lm.model, lm.architecture, [])
    assert everything.elements == sum(p.numel() for p in lm.model.parameters())
    restricted = estimate_llc(lm.model, lm_loss, batches, config, params=everything.params)
    # Same chains (seeds, batches, noise); only float summation order may differ when
    # the BLAS changes its thread split on a busy machine.
    assert restricted.llc_per_chain == pytest.approx(full.llc_per_chain, rel=1e-4)
    assert restricted.init_loss == pytest.approx(full.init_loss, rel=1e-6)
    # A head restriction is a different measurement on the same model.
    head = estimate_llc(lm.model, lm_loss, batches, config,
                        params=select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=0)]).params)
    assert head.llc_per_chain != pytest.approx(full.llc_per_chain, rel=1e-2)


def test_data_restriction_changes_the_loss_source(loaded, batches, other_text_jsonl):
    lm = loaded["gpt2"]
    other = load_token_dataset(DatasetRef(files=[str(other_text_jsonl)], context_length=16, max_examples=32),
                               lm.tokenizer, lm.max_positions)
    other_batches = make_batches(other, 8, shuffle=False)
    with torch.no_grad():
        expected = sum(float(lm_loss(lm.model, b)) for b in other_batches) / len(other_batches)
    head = select_weights(lm.model, lm.architecture, [W(kind="head", layer=0, head=1)]).params
    on_job_data = estimate_llc(lm.model, lm_loss, batches, CONFIG, params=head)
    on_other = estimate_llc(lm.model, lm_loss, other_batches, CONFIG, params=head)
    assert on_other.init_loss == pytest.approx(expected, rel=1e-6)
    assert on_other.init_loss != pytest.approx(on_job_data.init_loss, rel=1e-3)
    assert on_other.llc_per_chain != on_job_data.llc_per_chain
