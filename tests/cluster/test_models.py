"""Model loading: local directories, the hub path through a local HF cache (offline),
provenance, the per-process cache, and errors that name what to fix."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster.contract.errors import InvalidArgument, NotFound, Unavailable
from cluster.models import clear_model_cache, load_model, load_model_cached
from cluster.contract.spec import ModelRef

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key,arch", [("gpt2", "gpt2"), ("gpt_neox", "gpt_neox"), ("llama", "llama"), ("opt", "opt")])
def test_load_local_directory(tiny_lm_dirs, key, arch):
    lm = load_model(ModelRef(local_path=str(tiny_lm_dirs[key])))
    assert lm.architecture == arch and lm.max_positions == 64
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer is not None and lm.tokenizer("the cat sat")["input_ids"] == [3, 5, 9]
    prov = lm.provenance
    assert prov["local_path"] == str(tiny_lm_dirs[key].resolve())
    assert prov["dtype"] == "float32" and prov["architecture"] == arch
    assert prov["num_parameters"] == sum(p.numel() for p in lm.model.parameters())
    assert len(prov["content_hash"]) == 64 and prov["commit"] is None


def test_content_hash_tracks_the_weights(tiny_lm_dirs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lm_dirs["gpt2"], copy)
    same = load_model(ModelRef(local_path=str(copy))).provenance["content_hash"]
    assert same == load_model(ModelRef(local_path=str(tiny_lm_dirs["gpt2"]))).provenance["content_hash"]
    lm = load_model(ModelRef(local_path=str(copy)))
    with torch.no_grad():
        next(lm.model.parameters()).add_(1.0)
    lm.model.save_pretrained(str(copy))
    assert load_model(ModelRef(local_path=str(copy))).provenance["content_hash"] != same


def test_dtype_choice(tiny_lm_dirs):
    lm = load_model(ModelRef(local_path=str(tiny_lm_dirs["gpt_neox"]), dtype="bfloat16"))
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    assert lm.provenance["dtype"] == "bfloat16"


def test_cache_loads_once_per_ref_and_device(tiny_lm_dirs):
    clear_model_cache()
    ref = ModelRef(local_path=str(tiny_lm_dirs["gpt2"]))
    a = load_model_cached(ref)
    assert load_model_cached(ModelRef(local_path=str(tiny_lm_dirs["gpt2"])), "cpu") is a
    assert load_model_cached(ModelRef(local_path=str(tiny_lm_dirs["gpt2"]), dtype="bfloat16")) is not a
    clear_model_cache()
    assert load_model_cached(ref) is not a


def test_missing_path(tmp_path):
    with pytest.raises(NotFound, match="model.local_path .* does not exist .* save_pretrained"):
        load_model(ModelRef(local_path=str(tmp_path / "nope")))


def test_directory_without_config_or_weights(tmp_path, tiny_lm_dirs):
    with pytest.raises(NotFound, match="has no config.json"):
        load_model(ModelRef(local_path=str(tmp_path)))
    (tmp_path / "config.json").write_text((tiny_lm_dirs["gpt2"] / "config.json").read_text())
    with pytest.raises(NotFound, match="has no weights .*model.safetensors"):
        load_model(ModelRef(local_path=str(tmp_path)))


def test_unknown_model_type_suggests_trust_remote_code(tmp_path, tiny_lm_dirs):
    shutil.copytree(tiny_lm_dirs["gpt2"], tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "my_custom_lm"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidArgument, match="trust_remote_code=true"):
        load_model(ModelRef(local_path=str(tmp_path / "m")))


def test_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8,
                         vocab_size=20)).save_pretrained(str(tmp_path))
    with pytest.raises(InvalidArgument, match="lacks .* weights .* not a causal language model checkpoint"):
        load_model(ModelRef(local_path=str(tmp_path)))


def test_uncached_hub_id_offline_is_unavailable_not_a_traceback():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(Unavailable, match="model 'EleutherAI/pythia-14m' at revision 'step1000' is not in the local Hugging Face cache .* "
                                          "give a local_path"):
        load_model(ModelRef(hub_id="EleutherAI/pythia-14m", revision="step1000"))


HUB_SCRIPT = r"""
import json, sys
from cluster.models import load_model
from cluster.contract.spec import ModelRef
from cluster.contract.errors import LLCError
out = {}
lm = load_model(ModelRef(hub_id="tiny/gpt2", revision="main"))
out["commit"] = lm.provenance["commit"]
out["hub_id"] = lm.provenance["hub_id"]
out["architecture"] = lm.architecture
out["tokenizer"] = lm.tokenizer is not None
for rev in ("v2", "0" * 40):
    try:
        load_model(ModelRef(hub_id="tiny/gpt2", revision=rev))
    except LLCError as exc:
        out[rev] = [exc.code, exc.message]
print(json.dumps(out))
"""


def test_hub_id_resolves_revision_to_commit_from_the_cache(tiny_lm_dirs, tmp_path):
    """The real hub code path (resolve, then from_pretrained(hub_id, revision=commit)),
    served offline from a Hugging Face cache laid out as the hub client writes it."""
    commit = "a" * 40
    repo = tmp_path / "hub" / "models--tiny--gpt2"
    shutil.copytree(tiny_lm_dirs["gpt2"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["commit"] == commit and out["hub_id"] == "tiny/gpt2"
    assert out["architecture"] == "gpt2" and out["tokenizer"]
    for rev in ("v2", "0" * 40):
        code, message = out[rev]
        assert code == "UNAVAILABLE" and f"at revision '{rev}' is not in the local Hugging Face cache" in message


@pytest.mark.parametrize("key", ["gpt_neox", "llama"])
def test_checkpointed_activations_keep_the_losses_and_fewer_bytes(tiny_lm_dirs, key):
    """The lean mode's activation checkpointing: the same lean chain's losses exactly, dropout
    submodules still in eval mode, and far fewer bytes kept for the backward pass."""
    from cluster.datasets import lm_loss
    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.estimate import estimate_llc
    from cluster.models import checkpoint_activations

    def kept_bytes(model, batch) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lm_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        return total

    tokens = torch.randint(3, 40, (8, 4, 32), generator=torch.Generator().manual_seed(0))
    batches = list(tokens)
    config = SamplerConfig(step_size=1e-4, nbeta=20.0, gamma=100.0, chains=2, draws=12, burn_in=0, fetch_every=4)
    runs = {}
    for checkpointed in (False, True):
        model = load_model(ModelRef(local_path=str(tiny_lm_dirs[key]), dtype="bfloat16")).model
        if checkpointed:
            assert checkpoint_activations(model) == model.config.num_hidden_layers
            assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))
        model.requires_grad_(True)
        before = kept_bytes(model, batches[0])
        model.requires_grad_(False)
        runs[checkpointed] = before, estimate_llc(model, lm_loss, batches, config, memory="lean")
    (plain_bytes, plain), (ckpt_bytes, ckpt) = runs[False], runs[True]
    assert [c.loss_trace for c in ckpt.chains] == [c.loss_trace for c in plain.chains]
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)


@pytest.mark.parametrize("key", ["gpt2", "gpt_neox", "llama", "opt"])
def test_loaded_models_batch_their_chains(tiny_lm_dirs, key):
    """Every architecture we load runs a worker's chains as one vmap-batched computation, with
    the chains run one at a time: GPT-2 with a pad_token_id used to fall back (transformers'
    padding check calls .item(), which vmap refuses), so chains_per_worker bought nothing."""
    from cluster.datasets import lm_loss
    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.estimate import estimate_llc

    model = load_model(ModelRef(local_path=str(tiny_lm_dirs[key]))).model
    assert model.config.pad_token_id is not None  # the tiny models carry one, as tokenizer tooling saves it
    batches = list(torch.randint(3, 40, (4, 4, 16), generator=torch.Generator().manual_seed(0)))
    config = SamplerConfig(step_size=1e-4, nbeta=20.0, gamma=100.0, chains=2, draws=6, burn_in=0, fetch_every=3)
    one_at_a_time = estimate_llc(model, lm_loss, batches, config)
    together = estimate_llc(model, lm_loss, batches, config, batch_chains=2)
    assert [c.extra.get("chains_together") for c in together.chains] == [2, 2]
    for a, b in zip(one_at_a_time.chains, together.chains):
        torch.testing.assert_close(torch.tensor(b.loss_trace), torch.tensor(a.loss_trace), rtol=1e-5, atol=1e-5)
