"""Several chains of one model as one batched computation (`estimate_llc(..., batch_chains=C)`).

A small model leaves a device mostly idle per chain. Here C chains share one model:
every moving weight is stacked into a (C, ...) tensor, the loss of chain c on its own
batch is `loss_fn` at chain c's weights through `torch.func.functional_call` under
`torch.func.vmap` (one batched forward and backward for all C chains), and one SGLD in
chain mode (cluster.engine.sgld) updates all of them, chain c drawing its noise from its
own generator. Seeds, batch streams and noise streams are exactly those of the chains run
one at a time (`_run_chain`), so the results equal them up to floating-point rounding of
the batched kernels (tests/engine/test_batched.py). The model's own weights stay at w*
throughout: L_m(w*) at the draws is the same model on all chains' batches (one vmapped
forward), and nothing has to be restored afterwards.

What needs the one-at-a-time path: `loss_fn` that vmap cannot batch (data-dependent
Python control flow, `.item()`, in-place ops on inputs, dropout), chains whose batches
differ in shape (per-batch padding), the lean memory mode and observables.
`BatchingUnsupported` says which; `estimate_llc` then runs the chains one at a time.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

from cluster.contract.sampler import SamplerConfig
from cluster.engine import anchor as anchors
from cluster.engine.result import SUCCEEDED, ChainResult
from cluster.engine.sgld import SGLD


class BatchingUnsupported(RuntimeError):
    """These chains cannot run as one batched computation (the message says why)."""


class _Bound(torch.nn.Module):
    """loss_fn(model, batch) as a module, so functional_call can swap the moving weights."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _stack_batches(batches: list, device: torch.device):
    from cluster.engine.estimate import _to_device

    try:
        stacked = pytree.tree_map(lambda *xs: torch.stack(xs) if isinstance(xs[0], torch.Tensor) else xs[0],
                                  batches[0], *batches[1:])
    except RuntimeError as exc:  # shapes differ between the chains' batches
        raise BatchingUnsupported(f"the chains' batches cannot be stacked ({exc}): use equal-shape batches") from exc
    return _to_device(stacked, device)


def run_chains_batched(model, moving, chains: list[int], *, loss_fn, batches, config: SamplerConfig,
                       init_loss: float | None, elements: int, progress, amp: str,
                       update: str = "foreach", anchor=None) -> list[ChainResult]:
    """Chains `chains` as one batched computation; same contract as estimate._run_chain per chain."""
    from cluster.engine import estimate as E

    count = len(chains)
    names = [n for n, _, _ in moving]
    device = moving[0][1].device
    seeds = [E.chain_seed(config.seed, c) for c in chains]
    generators = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        generators.append(g)
    stacked = [p.detach().float().unsqueeze(0).repeat(count, *([1] * p.dim())).requires_grad_(True)
               for _, p, _ in moving]
    optimizer = SGLD(
        [{"params": stacked, "masks": [m for _, _, m in moving]}],
        lr=config.step_size, nbeta=config.nbeta, gamma=config.gamma,
        preconditioner="rmsprop" if config.method == "rmsprop_sgld" else "none",
        alpha=config.rmsprop_alpha, eps=config.rmsprop_eps,
        generators=generators, track_mala=config.mala, update=update,
    )
    bound = _Bound(model, loss_fn)
    keys = ["model." + n for n in names]

    def chain_loss(weights, batch):
        return bound_call(dict(zip(keys, weights)), batch)

    def bound_call(weights, batch):
        return torch.func.functional_call(bound, weights, (batch,))

    batched_loss = torch.func.vmap(chain_loss, in_dims=(0, 0), randomness="error")
    anchor_loss = torch.func.vmap(bound, in_dims=0, randomness="error")

    total = config.total_steps
    is_draw, is_paired = E.step_masks(config)
    paired = init_loss is None
    losses = torch.zeros(count, total, device=device)
    inits = torch.zeros(count, total, device=device)
    log_accept = torch.full((count, total), float("nan"), device=device) if config.mala else None
    virial = torch.zeros(count, total, device=device) if config.mala else None
    blowup = E.BLOWUP_FACTOR * max(elements / 2, 1.0) / config.nbeta
    status = [SUCCEEDED] * count
    message = [""] * count
    steps_done = [0] * count
    active = list(range(count))
    fetched = np.zeros((count, total))
    fetched_inits = np.zeros((count, total))
    streams = [E._batch_stream(batches, seed) for seed in seeds]
    if anchor is not None:  # L_m(w*) looked up per row (cluster.engine.anchor), no forward
        anchor = anchor.to(device)
        misses = torch.zeros((), dtype=torch.int64, device=device)
    done = 0
    try:
        for t in range(total):
            batch = _stack_batches([next(s) for s in streams], device)
            with E._autocast(device, amp):
                try:
                    step_losses = batched_loss(stacked, batch)
                except BatchingUnsupported:
                    raise
                except Exception as exc:
                    if t == 0:  # vmap could not batch loss_fn: the caller runs the chains one at a time
                        raise BatchingUnsupported(f"loss_fn cannot run under torch.func.vmap: {exc}") from exc
                    raise
            step_losses.sum().backward()  # chain c's weights only reach chain c's loss
            losses[:, t] = step_losses.detach()
            if is_paired[t] and anchor is not None:
                inits[:, t] = anchor.chain_losses(batch, misses, chains=count)
            elif is_paired[t]:
                with torch.no_grad(), E._autocast(device, amp):
                    inits[:, t] = anchor_loss(batch).detach()  # the model itself is at w*
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if virial is not None and is_draw[t]:
                virial[:, t] = optimizer.last_virial
            if log_accept is not None and optimizer.last_log_accept is not None and t > config.burn_in:
                log_accept[:, t - 1] = optimizer.last_log_accept
            if (t + 1) % config.fetch_every == 0 or t + 1 == total:
                block = slice(done, t + 1)
                fetched[:, block] = losses[:, block].cpu().numpy()
                fetched_inits[:, block] = inits[:, block].cpu().numpy()
                if anchor is not None:
                    anchors.check_misses(misses)
                done = t + 1
                for k in list(active):
                    steps_done[k] = done
                    status[k], message[k] = E._check_block(fetched[k, :done], fetched_inits[k, :done],
                                                           is_paired[:done], init_loss, blowup, block.start)
                    if status[k] != SUCCEEDED:  # stops here, like a chain run alone; the batch goes on
                        active.remove(k)
                    elif progress is not None:
                        reference = fetched_inits[k, :done] if paired else init_loss
                        progress(E.ChainProgress(chains[k], done, total,
                                                 E._llc(fetched[k, :done], reference, is_draw, config)))
                if not active:
                    break
    finally:
        for p in stacked:
            p.grad = None

    variance = optimizer.gradient_variance()
    la_all = log_accept.cpu().numpy() if log_accept is not None else None
    vir_all = virial.cpu().numpy() if virial is not None else None
    results = [E.chain_result(chain, seeds[k], status[k], message[k], fetched[k, :steps_done[k]],
                              fetched_inits[k, :steps_done[k]], is_draw=is_draw, init_loss=init_loss, config=config,
                              elements=elements, log_accept=la_all[k] if la_all is not None else None,
                              virial=vir_all[k] if vir_all is not None else None,
                              variance=float(variance[k]) if variance is not None else None)
               for k, chain in enumerate(chains)]
    for r in results:
        r.extra["chains_together"] = count  # what ran as one computation (a fallback runs them one at a time)
    return results


def supported(memory: str, observer: Any) -> str | None:
    """Why these settings need the one-at-a-time path, or None."""
    if memory != "standard":
        return f"memory={memory!r} runs chains one at a time"
    if observer is not None:
        return "observables are recorded one chain at a time"
    return None
