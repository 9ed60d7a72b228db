"""Token datasets: packing/truncation, determinism, fingerprints, pre-tokenized
columns, batches and the loss; errors that name what to fix."""
from __future__ import annotations

import json

import pytest
import torch

from cluster.datasets import lm_loss, load_token_dataset, make_batches
from cluster.contract.errors import InvalidArgument, NotFound
from cluster.models import load_model
from cluster.contract.spec import DatasetRef, ModelRef
from testbeds.tiny import make_text_dataset, make_tiny_tokenizer, tiny_texts


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def _load(tok, max_positions=256, **kw):
    return load_token_dataset(DatasetRef(**kw), tok, max_positions)


def test_packing_joins_documents_with_eos_and_cuts_full_rows(tok, text_jsonl):
    ds = _load(tok, files=[str(text_jsonl)], context_length=16)
    texts = tiny_texts(120, seed=0)
    n_tokens = sum(len(t.split()) + 1 for t in texts)  # words + one EOS per document
    assert ds.input_ids.dtype == torch.long and ds.input_ids.shape == (n_tokens // 16, 16)
    assert (ds.input_ids == tok.eos_token_id).sum() >= 119  # all but maybe the cut tail
    assert ds.provenance["rows"] == n_tokens // 16 and ds.provenance["documents_used"] == 120
    assert ds.provenance["packing"] is True and ds.provenance["fingerprint"] == ds.fingerprint


def test_truncation_keeps_document_starts_and_drops_short_ones(tok, text_jsonl):
    ds = _load(tok, files=[str(text_jsonl)], context_length=20, packing=False)
    texts = tiny_texts(120, seed=0)
    long_enough = [t for t in texts if len(t.split()) >= 20]
    assert ds.input_ids.shape == (len(long_enough), 20)
    assert ds.provenance["documents_dropped_short"] == 120 - len(long_enough)
    starts = {tuple(tok(t, add_special_tokens=False)["input_ids"][:20]) for t in long_enough}
    assert {tuple(r) for r in ds.input_ids.tolist()} == starts


def test_jsonl_and_parquet_of_the_same_texts_agree(tok, text_jsonl, text_parquet):
    a = _load(tok, files=[str(text_jsonl)], context_length=16)
    b = _load(tok, files=[str(text_parquet)], context_length=16)
    assert torch.equal(a.input_ids, b.input_ids) and a.fingerprint == b.fingerprint
    assert b.provenance["file_format"] == "parquet"


def test_text_files(tok, tmp_path):
    path = make_text_dataset(tmp_path / "d.txt", 30)
    ds = _load(tok, files=[str(path)], context_length=8)
    assert ds.input_ids.shape[1] == 8 and ds.provenance["file_format"] == "text"


def test_shuffle_is_deterministic_and_limits_take_a_seeded_subset(tok, text_jsonl):
    a = _load(tok, files=[str(text_jsonl)], context_length=16, max_examples=10, shuffle_seed=1)
    b = _load(tok, files=[str(text_jsonl)], context_length=16, max_examples=10, shuffle_seed=1)
    c = _load(tok, files=[str(text_jsonl)], context_length=16, max_examples=10, shuffle_seed=2)
    assert a.input_ids.shape == (10, 16)
    assert torch.equal(a.input_ids, b.input_ids) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.input_ids, c.input_ids) and a.fingerprint != c.fingerprint
    assert a.provenance["documents_used"] < 120  # stopped reading once the limit was reached


def test_fingerprint_depends_on_the_tokenizer(tok, text_jsonl, tiny_lm_dirs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(tok.get_vocab())
    a, b = "cat", "dog"
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same ids in use, different meaning
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    x = _load(tok, files=[str(text_jsonl)], context_length=16)
    y = _load(other, files=[str(text_jsonl)], context_length=16)
    assert x.fingerprint != y.fingerprint


def test_pretokenized_column(tokens_jsonl):
    ds = load_token_dataset(DatasetRef(files=[str(tokens_jsonl)], input_ids_column="input_ids", text_column="",
                                       context_length=10, packing=False), None, 64, vocab_size=57)
    rows = [json.loads(line)["input_ids"][:10] for line in tokens_jsonl.read_text().splitlines()]
    assert ds.input_ids.shape == (40, 10)
    assert sorted(map(tuple, ds.input_ids.tolist())) == sorted(map(tuple, rows))
    packed = load_token_dataset(DatasetRef(files=[str(tokens_jsonl)], input_ids_column="input_ids",
                                           context_length=32), None, 64)
    assert packed.input_ids.shape == (40 * 20 // 32, 32)  # no EOS added to given ids


def test_pretokenized_ids_beyond_the_vocabulary(tokens_jsonl):
    with pytest.raises(InvalidArgument, match=r"token ids span \[3, 39\] but the model's vocabulary is \[0, 20\)"):
        load_token_dataset(DatasetRef(files=[str(tokens_jsonl)], input_ids_column="input_ids", context_length=10),
                           None, 64, vocab_size=20)


def test_batches_reiterate_and_follow_the_torch_seed(tok, text_jsonl):
    ds = _load(tok, files=[str(text_jsonl)], context_length=16, max_examples=20)
    batches = make_batches(ds, 8)
    assert len(batches) == 2  # the partial batch of 4 is dropped
    torch.manual_seed(0)
    first = [b.clone() for b in batches]
    torch.manual_seed(0)
    again = list(batches)
    torch.manual_seed(1)
    other = list(batches)
    assert len(first) == 2 and all(b.shape == (8, 16) for b in first)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))
    ordered = list(make_batches(ds, 8, shuffle=False))
    assert torch.equal(torch.cat(ordered), ds.input_ids[:16])
    tiny = list(make_batches(ds, 64))  # smaller than one batch: one batch of everything
    assert len(tiny) == 1 and tiny[0].shape == (20, 16)


def test_lm_loss_is_next_token_cross_entropy(tiny_lm_dirs, text_jsonl):
    lm = load_model(ModelRef(local_path=str(tiny_lm_dirs["gpt_neox"])))
    ds = load_token_dataset(DatasetRef(files=[str(text_jsonl)], context_length=16, max_examples=8), lm.tokenizer,
                            lm.max_positions)
    batch = ds.input_ids
    with torch.no_grad():
        ours = lm_loss(lm.model, batch)
        theirs = lm.model(input_ids=batch, labels=batch).loss
    assert ours.shape == () and ours.item() == pytest.approx(theirs.item(), rel=1e-5)


# --- errors ------------------------------------------------------------------

def test_missing_file(tok, tmp_path):
    with pytest.raises(NotFound, match=r"dataset.files\[0\]: '.*nope.jsonl' does not exist"):
        _load(tok, files=[str(tmp_path / "nope.jsonl")])
    with pytest.raises(NotFound, match="matches no file"):
        _load(tok, files=[str(tmp_path / "*.parquet")])


def test_unknown_column_lists_the_columns(tok, text_jsonl):
    with pytest.raises(NotFound, match=r"dataset.text_column: column 'content' is not in the dataset; "
                                       r"its columns are \['text', 'id'\]"):
        _load(tok, files=[str(text_jsonl)], text_column="content")


def test_context_length_beyond_the_model_maximum(tok, text_jsonl):
    with pytest.raises(InvalidArgument, match="context_length 128 exceeds the model's maximum context length 64; "
                                              "set it to at most 64"):
        _load(tok, 64, files=[str(text_jsonl)], context_length=128)


def test_empty_dataset(tok, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises((InvalidArgument, NotFound), match="empty"):
        _load(tok, files=[str(tmp_path / "empty.jsonl")])


def test_too_little_data_for_one_row(tok, tmp_path):
    (tmp_path / "short.jsonl").write_text(json.dumps({"text": "the cat sat"}) + "\n")
    with pytest.raises(InvalidArgument, match="no row of context_length 32 tokens .* lower dataset.context_length"):
        _load(tok, files=[str(tmp_path / "short.jsonl")], context_length=32)
    with pytest.raises(InvalidArgument, match="set dataset.packing=true"):
        _load(tok, files=[str(tmp_path / "short.jsonl")], context_length=4, packing=False)


def test_text_without_a_tokenizer(text_jsonl):
    with pytest.raises(InvalidArgument, match="no tokenizer.*input_ids_column"):
        load_token_dataset(DatasetRef(files=[str(text_jsonl)]), None, 256)


def test_unknown_extension(tok, tmp_path):
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(InvalidArgument, match="set dataset.file_format"):
        _load(tok, files=[str(tmp_path / "d.xml")])


def test_uncached_hub_dataset_offline(tok):
    from cluster.contract.errors import Unavailable

    with pytest.raises(Unavailable, match="dataset 'NeelNanda/pile-10k' is not in the local Hugging Face cache"):
        _load(tok, hub_id="NeelNanda/pile-10k")


def test_dataset_with_no_records(tok, tmp_path):
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(InvalidArgument, match="empty|no row"):
        _load(tok, files=[str(tmp_path / "blank.jsonl")])


def test_hub_only_fields_with_local_files(tok, text_jsonl):
    with pytest.raises(InvalidArgument, match="dataset.split 'validation' applies to hub datasets only"):
        _load(tok, files=[str(text_jsonl)], split="validation")
    with pytest.raises(InvalidArgument, match="dataset.config 'en' applies to hub datasets only"):
        _load(tok, files=[str(text_jsonl)], config="en")


HUB_SCRIPT = r"""
import json
from cluster.datasets import load_token_dataset
from cluster.contract.errors import LLCError
from cluster.contract.spec import DatasetRef
from testbeds.tiny import make_tiny_tokenizer
tok = make_tiny_tokenizer()
ds = load_token_dataset(DatasetRef(hub_id="tiny/ds", revision="main", context_length=8), tok, 64)
out = {"shape": list(ds.input_ids.shape), "commit": ds.provenance["commit"], "fingerprint": ds.fingerprint}
for key, kw in {"split": {"split": "test"}, "column": {"text_column": "body"}, "revision": {"revision": "v9"}}.items():
    try:
        load_token_dataset(DatasetRef(hub_id="tiny/ds", context_length=8, **kw), tok, 64)
    except LLCError as exc:
        out[key] = [exc.code, exc.message]
print(json.dumps(out))
"""


def test_hub_dataset_from_the_cache_offline(tmp_path, tok):
    """The hub path (resolve the revision to a commit, then load that snapshot) served
    offline from a Hugging Face cache laid out as the hub client writes it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    commit = "b" * 40
    repo = tmp_path / "hub" / "datasets--tiny--ds"
    make_text_dataset(repo / "snapshots" / commit / "data" / "train.jsonl", 30, seed=3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds_cache"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    local = _load(tok, files=[str(repo / "snapshots" / commit / "data" / "train.jsonl")], context_length=8)
    assert out["commit"] == commit and out["fingerprint"] == local.fingerprint
    assert out["split"][0] == "NOT_FOUND" and "Unknown split \"test\"" in out["split"][1]
    assert out["column"] == ["NOT_FOUND", "dataset.text_column: column 'body' is not in the dataset; "
                                          "its columns are ['text', 'id']"]
    assert out["revision"][0] == "UNAVAILABLE" and "give local files" in out["revision"][1]
