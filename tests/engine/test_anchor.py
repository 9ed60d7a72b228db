"""L(w*) per row looked up at the draws (cluster.engine.anchor) equals the forward at w* it replaces."""
from __future__ import annotations

import pytest
import torch

from cluster.contract.sampler import ConfigError, SamplerConfig
from cluster.datasets import TokenBatches, TokenDataset, lm_loss
from cluster.engine import anchor
from cluster.engine.estimate import estimate_llc, paired_steps
from cluster.models import load_model
from cluster.contract.spec import ModelRef
from tests.engine.test_batched import _same_chains
from testbeds.dln import ShuffledBatches


@pytest.fixture(scope="module")
def regression():
    """A noisy regression at its fitted weights (L(w*) > 0 and varies by batch: the pairs carry signal)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    x = torch.randn(200, 6)
    y = model(x).detach() + 0.3 * torch.randn(200, 2)
    return model, ShuffledBatches(x, y, 32)  # shuffled and re-batched every pass, a partial batch dropped


def mse(model, batch):
    return mse_rows(model, batch).mean()


def mse_rows(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean(1)


mse.per_row = mse_rows


def _config(**kw):
    return SamplerConfig(**{"step_size": 1e-4, "nbeta": 50.0, "gamma": 10.0, "chains": 3, "burn_in": 4, "draws": 30,
                            "seed": 3, "mala": True, "fetch_every": 10, "init_loss": "paired", **kw})


class Counting:
    """loss_fn wrapper that counts forwards (its per_row too)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        if hasattr(fn, "per_row"):
            self.per_row = fn.per_row

    def __call__(self, model, batch):
        self.calls += 1
        return self.fn(model, batch)


@pytest.mark.parametrize("batch_chains", [1, 3])
def test_looked_up_pairs_equal_the_forward_at_w_star(regression, batch_chains):
    model, batches = regression
    forward = estimate_llc(model, mse, batches, _config(), anchor="forward", batch_chains=batch_chains)
    table = estimate_llc(model, mse, batches, _config(), anchor="table", batch_chains=batch_chains)
    assert forward.chains[0].init_trace[0] > 0.05  # a real L_m(w*), which differs batch to batch
    assert len(set(forward.chains[0].init_trace)) > 10
    _same_chains(forward, table, tol=1e-6)
    assert table.llc_mean == pytest.approx(forward.llc_mean, rel=1e-5)


def test_the_table_replaces_every_forward_at_w_star(regression):
    model, batches = regression
    config = _config(chains=2, mala=False)
    steps = 2 * config.total_steps
    counted = Counting(mse)
    estimate_llc(model, counted, batches, config, anchor="forward")
    assert counted.calls == steps + 2 * paired_steps(config, 1)  # one forward more per pair
    counted = Counting(mse)
    estimate_llc(model, counted, batches, config, anchor="table")
    assert counted.calls == steps  # the chains' own forwards only (the table's pass is per_row's)


def test_auto_builds_the_table_once_it_saves_forwards_across_calls(regression):
    model, batches = regression
    rows_pass = len(batches.every_row())  # 7 batches
    config = _config(chains=1, burn_in=0, draws=3, fetch_every=1, mala=False)  # 3 pairs a call
    cache = anchor.AnchorCache()
    estimate_llc(model, mse, batches, config, anchor_cache=cache)
    estimate_llc(model, mse, batches, config, anchor_cache=cache)
    assert cache.tables == {} and cache.paired_steps == 6 < rows_pass
    estimate_llc(model, mse, batches, config, anchor_cache=cache)  # 9 pairs asked so far ≥ 7: worth a pass now
    assert len(cache.tables) == 1
    (table,) = cache.tables.values()
    assert table.rows == 200
    estimate_llc(model, mse, batches, config, chains=[0], anchor_cache=cache, params=["2.bias"])
    assert list(cache.tables.values()) == [table]  # fp32: one table serves every restriction


def test_a_call_with_few_draws_keeps_the_forward(regression):
    model, batches = regression
    counted = Counting(mse)
    config = _config(chains=1, burn_in=0, draws=3, fetch_every=1, mala=False)
    estimate_llc(model, counted, batches, config)  # 3 pairs, a 7-batch pass: the forward is cheaper
    assert counted.calls == 2 * config.total_steps


def test_half_precision_keeps_one_table_per_upcast_set(tiny_gpt2_dir):
    """bf16 weights are upcast while sampling, which moves the loss in its last bits (times nβ): a table is
    built per set of upcast weights, and its pairs match the forward's."""
    loaded = load_model(ModelRef(local_path=str(tiny_gpt2_dir), dtype="bfloat16"))
    rows = torch.randint(0, loaded.model.config.vocab_size, (48, 12), generator=torch.Generator().manual_seed(0))
    batches = TokenBatches(TokenDataset(input_ids=rows, fingerprint="t", provenance={}), 8)
    config = _config(chains=1, draws=12, mala=False, step_size=1e-5)
    cache = anchor.AnchorCache()
    # every weight upcast: the loss moves by ~2e-4 against bf16 weights, which a table built at w* as loaded would miss
    table = estimate_llc(loaded.model, lm_loss, batches, config, anchor="table", anchor_cache=cache)
    forward = estimate_llc(loaded.model, lm_loss, batches, config, anchor="forward")
    torch.testing.assert_close(torch.tensor(table.chains[0].init_trace), torch.tensor(forward.chains[0].init_trace),
                               rtol=1e-6, atol=1e-6)
    attn = [n for n, _ in loaded.model.named_parameters() if n.endswith("attn.c_attn.weight")]
    estimate_llc(loaded.model, lm_loss, batches, config, params=attn, anchor="table", anchor_cache=cache)
    assert len(cache.tables) == 2


def test_row_keys_follow_content_not_position():
    hasher = anchor.RowHasher()
    rows = torch.randint(-5, 50_000, (4000, 16), generator=torch.Generator().manual_seed(0))
    keys = hasher(rows)
    assert keys.unique().numel() == 4000  # no collisions among distinct rows
    assert torch.equal(hasher(rows[[7, 3]]), keys[[7, 3]])  # the same row hashes alike in any batch
    x = torch.randn(10, 3)
    pair = hasher((x, x[:, :1]))
    assert torch.equal(hasher((x[5:], x[5:, :1])), pair[5:])
    y = x.clone()
    y[2, 1] = torch.nextafter(y[2, 1], torch.tensor(9.0))  # one ulp
    assert (hasher((y, y[:, :1])) != pair).sum() == 1


def test_a_row_missing_from_the_table_fails_the_chain_instead_of_a_wrong_llc(regression):
    model, batches = regression

    class Partial(ShuffledBatches):
        def every_row(self):
            return super().every_row()[:3]  # a pass that forgets rows the chains draw

    partial = Partial(batches.x, batches.y, 32)
    with pytest.raises(RuntimeError, match="not in the L\\(w\\*\\) table"):
        estimate_llc(model, mse, partial, _config(), anchor="table")


def test_table_needs_per_row_losses_and_a_pass_over_every_row(regression):
    model, batches = regression

    def plain(model, batch):
        return mse(model, batch)

    with pytest.raises(ConfigError, match="per_row"):
        estimate_llc(model, plain, batches, _config(), anchor="table")
    with pytest.raises(ConfigError, match="every_row"):
        estimate_llc(model, mse, type("Loader", (), {"__iter__": lambda self: iter(batches)})(), _config(),
                     anchor="table")
    with pytest.raises(ConfigError, match="'auto', 'table' or 'forward'"):
        estimate_llc(model, mse, batches, _config(), anchor="lookup")
    # auto falls back to the forward where no table can be built
    assert estimate_llc(model, plain, batches, _config(chains=1)).chains[0].status == "succeeded"


def test_auto_falls_back_to_the_forward_where_rows_cannot_be_keyed(regression):
    model, batches = regression
    odd = [(x, y, torch.tensor(1.0)) for x, y in batches.every_row()]  # a per-batch scalar: no rows to key

    def loss(model, batch):
        return mse(model, batch[:2])

    loss.per_row = lambda model, batch: mse_rows(model, batch[:2])
    cache = anchor.AnchorCache()
    result = estimate_llc(model, loss, odd, _config(chains=1), anchor_cache=cache)
    assert result.chains[0].status == "succeeded" and list(cache.tables.values()) == [None]
    with pytest.raises(TypeError, match="disagree on the number of rows"):
        estimate_llc(model, loss, odd, _config(chains=1), anchor="table")
