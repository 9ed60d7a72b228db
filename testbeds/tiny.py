"""Tiny local models, tokenizer and datasets that work offline.

For tests, demos and smoke runs where the Hugging Face hub is unreachable:

    tok_dir = make_tiny_lm(tmp / "gpt2", "gpt2")          # model + tokenizer, save_pretrained
    make_text_dataset(tmp / "train.jsonl", 200)           # {"text": ...} per line
    make_text_dataset(tmp / "train.parquet", 200)

The tokenizer is a word-level vocabulary over a fixed word list (`WORDS`), so
generated text tokenizes without unknown tokens.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the a cat dog bird fish sat ran flew swam on under over near mat log tree pond big small red blue "
         "green quick slow happy sad and then it saw ate found lost one two three four five six seven eight "
         "nine ten is was will be here there up down in out").split()
SPECIAL = ("<unk>", "<eos>", "<pad>")
# qwen2 has a tiny config too, but AutoTokenizer forces Qwen2Tokenizer on model_type qwen2, which
# mis-reads the word-level tokenizer: use it for weight-selection tests, not for text.
ARCHITECTURES = ("gpt2", "gpt_neox", "llama", "opt")


def make_tiny_tokenizer(directory: str | Path | None = None):
    """A word-level PreTrainedTokenizerFast over SPECIAL + WORDS; saved to `directory` when given."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((*SPECIAL, *WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                                  model_max_length=1 << 20)
    if directory is not None:
        tok.save_pretrained(str(directory))
    return tok


def tiny_config(architecture: str, vocab_size: int, *, layers: int = 2, heads: int = 4, hidden: int = 16,
                max_positions: int = 64, kv_heads: int | None = None):
    """A transformers config for a tiny causal LM of the given model_type."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=1, pad_token_id=2)
    if architecture == "gpt2":
        return tf.GPT2Config(n_layer=layers, n_head=heads, n_embd=hidden, n_positions=max_positions, **common)
    if architecture == "gpt_neox":
        return tf.GPTNeoXConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden,
                                intermediate_size=2 * hidden, max_position_embeddings=max_positions,
                                tie_word_embeddings=False, **common)
    if architecture in ("llama", "qwen2"):
        cls = tf.LlamaConfig if architecture == "llama" else tf.Qwen2Config
        return cls(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden,
                   num_key_value_heads=kv_heads or heads, intermediate_size=2 * hidden,
                   max_position_embeddings=max_positions, tie_word_embeddings=False, **common)
    if architecture == "opt":
        return tf.OPTConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=hidden,
                            ffn_dim=2 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=max_positions,
                            **common)
    raise ValueError(f"no tiny config for {architecture!r}; choose one of {ARCHITECTURES}")


def make_tiny_lm(directory: str | Path, architecture: str = "gpt2", *, seed: int = 0, **config_kwargs) -> Path:
    """Save a randomly initialised tiny causal LM and the tiny tokenizer to `directory` (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tok = make_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tok), **config_kwargs))
    model.save_pretrained(str(directory))
    return directory


def tiny_texts(n: int, *, seed: int = 0, min_words: int = 8, max_words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def tiny_sentences(n: int, *, seed: int = 0) -> list[str]:
    """Short texts from a small grammar over WORDS: structure a tiny model can learn,
    so a trained one sits near a minimum of the loss (where an LLC means something)."""
    rng = random.Random(seed)
    nouns, adjs = "cat dog bird fish".split(), "big small red blue green quick slow happy sad".split()
    verbs, preps, places = "sat ran flew swam".split(), "on under over near".split(), "mat log tree pond".split()

    def sentence() -> str:
        return (f"the {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(verbs)} {rng.choice(preps)} "
                f"the {rng.choice(places)}")

    return [" and then ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(n)]


def make_text_dataset(path: str | Path, n: int, *, seed: int = 0, column: str = "text", grammar: bool = False,
                      **text_kwargs) -> Path:
    """Write `n` texts over WORDS (random words, or `grammar` sentences) as jsonl (.jsonl/.json),
    parquet (.parquet) or text (.txt)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = tiny_sentences(n, seed=seed) if grammar else tiny_texts(n, seed=seed, **text_kwargs)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps({column: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({column: texts, "id": list(range(n))}), str(path))
    elif suffix == ".txt":
        path.write_text("".join(t + "\n" for t in texts))
    else:
        raise ValueError(f"unknown dataset extension {suffix!r}; use .jsonl, .json, .parquet or .txt")
    return path


def make_token_dataset(path: str | Path, rows: list[list[int]], *, column: str = "input_ids") -> Path:
    """Write pre-tokenized rows as jsonl ({column: [ids...]} per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: r}) + "\n" for r in rows))
    return path


def train_tiny_lm(directory: str | Path, dataset: str | Path, *, steps: int = 200, context_length: int = 32,
                  batch_size: int = 16, lr: float = 3e-3, seed: int = 0) -> float:
    """Train the tiny LM saved in `directory` on a local text dataset (AdamW, packed rows),
    save it back, and return the final training loss."""
    import torch

    from cluster.datasets import lm_loss, load_token_dataset
    from cluster.models import load_model
    from cluster.contract.spec import DatasetRef, ModelRef

    loaded = load_model(ModelRef(local_path=str(directory)))
    data = load_token_dataset(DatasetRef(files=[str(dataset)], context_length=context_length),
                              loaded.tokenizer, loaded.max_positions)
    model = loaded.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        rows = torch.randint(0, data.input_ids.shape[0], (batch_size,), generator=g)
        loss = lm_loss(model, data.input_ids[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(str(directory))
    return float(loss.detach())
