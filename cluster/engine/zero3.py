"""One localized-SGLD chain over g ranks under DeepSpeed ZeRO-3 (plain torch + deepspeed, no Ray).

Every rank of a process group that has joined torch.distributed runs the same calls:

    engine = ShardedChains(model, config, micro_batch=batch_size // world)
    init = engine.init_loss(loss_fn, rows, batch_size)            # L(w*), every row once
    result = engine.run_chain(loss_fn, batches, config, chain, params=selection, init_loss=init)

ZeRO-3 partitions the weights, gradients and (through the optimizer) w* over the
ranks: each rank holds 1/g of them, and each batch is split into g equal shares
whose mean gradients DeepSpeed averages, so the update is the single-process
engine's on the whole batch. The engine's `SGLD` is DeepSpeed's client optimizer;
it sees this rank's flat fp32 partition, captures w* there inside `step()`, and
draws its noise from a generator seeded by (seed, chain, rank), so partitions never
share noise. A restriction becomes a bool mask over the flat partition (padding
excluded), so element masks (one head's rows) work as in the single-process engine.

One DeepSpeed engine serves every chain and restriction of a job: every weight
carries a gradient, and the mask decides what moves (memory does not shrink with
the restriction, unlike the single-process engine).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist

from cluster.contract.sampler import ConfigError, SamplerConfig
from cluster.engine.anchor import AnchorTable, RowHasher, check_misses
from cluster.engine.estimate import (BLOWUP_FACTOR, ChainProgress, LossFn, _autocast, _autocast_dtype,
                                     _batch_stream, _check_block, _llc, _to_device, chain_seed)
from cluster.engine.result import SUCCEEDED, ChainResult
from cluster.engine.sgld import SGLD

# What a restriction moves, as in estimate_llc: name -> bool mask or None (whole tensor); None = everything.
Selection = Mapping[str, "torch.Tensor | None"] | None


def rank_seed(seed: int, chain: int, rank: int) -> int:
    """Noise seed of one rank of one chain: from (job seed, chain, rank) only."""
    return int(np.random.SeedSequence([seed, chain, rank]).generate_state(2, dtype=np.uint64)[0] % (2**63))


def zero3_config(*, micro_batch: int, bf16: bool = False) -> dict[str, Any]:
    """DeepSpeed config of a sharded chain: ZeRO-3, nothing persistent, one sub-group per rank."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,  # partition even tiny tensors
            # one flat partition per rank, so SGLD's step sees the whole partition at once (one log α term)
            "sub_group_size": 10**15,
        },
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "gradient_clipping": 0.0,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class ShardedSGLD(SGLD):
    """SGLD on DeepSpeed's flat fp32 partitions: masks are looked up by partition, the
    generator and state are reset per chain, and `noise=False` (tests) turns ξ off."""

    def __init__(self, params: Iterable, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.partition_masks: dict[int, torch.Tensor | None] = {}  # id(flat partition) -> mask
        self.noise = True

    def reset(self, *, generator: torch.Generator, masks: dict, noise: bool = True) -> None:
        self.state.clear()
        self.generator, self.partition_masks, self.noise = generator, masks, noise
        self.last_log_accept = None

    def _state(self, p: torch.Tensor, mask: torch.Tensor | None) -> dict:
        return super()._state(p, self.partition_masks.get(id(p)))

    def _noise(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.noise:
            return [torch.zeros_like(p, dtype=torch.float32) for p in params]
        return super()._noise(params)

    def anchor_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(flat partition, w* of it): DeepSpeed empties `param_groups` outside step()."""
        return [(p, s["anchor"]) for p, s in self.state.items() if "anchor" in s]


class ShardedChains:
    """This rank's share of a DeepSpeed ZeRO-3 engine over `model`, reused by every chain."""

    def __init__(self, model: torch.nn.Module, config: SamplerConfig, *, micro_batch: int):
        import deepspeed

        if not dist.is_initialized():
            raise RuntimeError("join torch.distributed (deepspeed.init_distributed) before building ShardedChains")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        dtypes = {p.dtype for p in model.parameters()}
        if torch.float16 in dtypes:
            raise ConfigError("model.dtype", "float16 weights need loss scaling, which would skip SGLD steps on "
                                             "overflow; load sharded chains in bfloat16 or float32")
        self.amp = _autocast_dtype(config, model)
        model.requires_grad_(True)  # one engine for all restrictions: the partition masks decide what moves
        # Placeholder settings: run_chain sets each chain's (config may still say "auto" here).
        self.optimizer = ShardedSGLD([{"params": list(model.parameters()), "masks": None}], lr=1e-4, nbeta=1.0, gamma=0.0)
        self.engine, *_ = deepspeed.initialize(
            model=model, optimizer=self.optimizer,
            config=zero3_config(micro_batch=micro_batch, bf16=torch.bfloat16 in dtypes))
        self.device = next(iter(self.engine.optimizer.fp32_partitioned_groups_flat)).device
        zero = self.engine.optimizer
        names = {id(p): n for n, p in model.named_parameters()}
        # Per sub-group, the parameters whose partitions are concatenated in its flat tensor.
        self._layout = [[(names[id(p)], p.ds_numel, p.partition_numel()) for p in group] for group in zero.fp16_groups]
        self._numel = {n: numel for group in self._layout for n, numel, _ in group}
        self._master = list(zero.fp32_partitioned_groups_flat)  # what SGLD updates
        self._weights = list(zero.fp16_partitioned_groups_flat)  # what the forward gathers (the master in fp32)
        self.moves: list[torch.Tensor] = []

    # -- restrictions ------------------------------------------------------------
    def partition_masks(self, params: Selection) -> list[torch.Tensor | None]:
        """Per flat partition of this rank, the bool mask of moving elements (None: all move).

        ZeRO-3 cuts each flattened parameter into `world` equal slices (the last one padded);
        rank r holds elements [r·s, (r+1)·s) of it, concatenated over the sub-group's parameters.
        """
        unknown = sorted(set(params or ()) - set(self._numel))
        if unknown:
            raise ConfigError("params", f"{unknown[0]!r} is not a parameter of the model")
        masks = []
        for group in self._layout:
            pieces = []
            for name, numel, size in group:
                start = self.rank * size
                valid = max(0, min(numel - start, size))  # the rest of the slice is padding
                piece = torch.zeros(size, dtype=torch.bool)
                if params is None or (name in params and params[name] is None):
                    piece[:valid] = True
                elif name in params:
                    piece[:valid] = params[name].reshape(-1)[start:start + valid]
                pieces.append(piece)
            flat = torch.cat(pieces)
            masks.append(None if bool(flat.all()) else flat.to(self.device))
        return masks

    def moving_elements(self, params: Selection) -> int:
        if params is None:
            return sum(self._numel.values())
        return sum(self._numel[n] if m is None else int(m.sum()) for n, m in params.items())

    # -- L(w*) ------------------------------------------------------------------
    @torch.no_grad()
    def init_loss(self, loss_fn: LossFn, rows: torch.Tensor, batch_size: int, config: SamplerConfig) -> float:
        """L(w*) over every row once, in order, in batches of `batch_size` shared out over the ranks.

        Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively);
        a rank whose share of the last batch is empty evaluates one row with weight 0.
        """
        limit = config.init_loss_batches or None
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with _autocast(self.device, self.amp):
            for i, start in enumerate(range(0, rows.shape[0], batch_size)):
                if limit is not None and i >= limit:
                    break
                share = torch.tensor_split(rows[start:start + batch_size], self.world)[self.rank]
                n = share.shape[0]
                batch = _to_device(share if n else rows[:1], self.device)
                total[0] += loss_fn(self.engine, batch).double() * n
                total[1] += n
        dist.all_reduce(total)
        if total[1] == 0:
            raise ConfigError("batches", "the sampling set is empty: give at least one batch")
        value = float(total[0] / total[1])
        if not math.isfinite(value):
            raise ConfigError("model", f"L(w*) is {value}: the loss at the given weights is not finite")
        return value

    @torch.no_grad()
    def anchor_table(self, loss_fn: LossFn, rows: torch.Tensor, batch_size: int) -> AnchorTable:
        """L(w*) per row (cluster.engine.anchor), every row once as in init_loss: each rank evaluates
        its share, and a sum over the ranks gives every rank every row's loss for its lookups."""
        losses = torch.zeros(rows.shape[0], device=self.device)
        hasher, keys = RowHasher(), []
        with _autocast(self.device, self.amp):
            for start in range(0, rows.shape[0], batch_size):
                chunk = rows[start:start + batch_size]
                mine = torch.tensor_split(torch.arange(chunk.shape[0]), self.world)[self.rank]
                # every rank runs the forward (ZeRO-3 gathers collectively); an empty share evaluates one row
                value = loss_fn.per_row(self.engine, _to_device(chunk[mine] if mine.numel() else chunk[:1], self.device))
                if mine.numel():
                    losses[start + int(mine[0]):start + int(mine[-1]) + 1] = value.float()
                keys.append(hasher(_to_device(chunk, self.device)))
        dist.all_reduce(losses)
        return AnchorTable(torch.cat(keys), losses, hasher)

    # -- one chain ----------------------------------------------------------------
    def run_chain(self, loss_fn: LossFn, batches: Iterable, config: SamplerConfig, chain: int, *,
                  params: Selection = None, init_loss: float | None = None,
                  progress: Callable[[ChainProgress], None] | None = None, noise: bool = True,
                  record_moves: bool = False, anchor: AnchorTable | None = None) -> ChainResult:
        """Chain `chain` of `config` on this rank's share; every rank returns the same ChainResult.

        `batches` yields whole batches, identically on every rank (same seed); each rank takes its
        1/world share of the rows. `init_loss` None pairs each draw with L_m(w*) on its own batch,
        looked up in `anchor` (this group's `anchor_table`) where given, else a forward at w*.
        The weights are back at w* afterwards. Tests only: `noise=False` drops ξ, `record_moves`
        keeps this rank's final w - w* in `self.moves`."""
        auto = [f for f in ("step_size", "nbeta", "burn_in") if getattr(config, f) == "auto"]
        if auto:
            raise ConfigError(auto[0], "a sharded chain runs with numbers the driver has chosen; resolve the "
                                       "automatic settings first (cluster.engine.calibrate)")
        for group in self.optimizer.param_groups:
            group.update(lr=config.step_size, nbeta=config.nbeta, gamma=config.gamma,
                         preconditioner="rmsprop" if config.method == "rmsprop_sgld" else "none",
                         alpha=config.rmsprop_alpha, eps=config.rmsprop_eps)
        self.optimizer.track_mala = config.mala
        seed = chain_seed(config.seed, chain)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(rank_seed(config.seed, chain, self.rank))
        self.optimizer.reset(generator=generator, masks=dict(zip(map(id, self._master), self.partition_masks(params))),
                             noise=noise)
        elements = self.moving_elements(params)
        total = config.total_steps
        burn_in = total - config.draws * config.steps_between_draws
        is_draw = np.zeros(total, dtype=bool)
        is_draw[np.asarray(config.draw_steps())] = True
        is_paired = is_draw.copy()  # as in the single-process engine: draws and the first block
        is_paired[: config.fetch_every] = True
        paired = init_loss is None
        losses = torch.zeros(total, device=self.device)
        inits = torch.zeros(total, device=self.device)
        log_accept = torch.full((total,), float("nan"), device=self.device) if config.mala else None
        blowup = BLOWUP_FACTOR * max(elements / 2, 1.0) / config.nbeta
        status, message, steps_done = SUCCEEDED, "", 0
        fetched, fetched_inits = np.zeros(total), np.zeros(total)
        stream = _batch_stream(batches, seed)
        misses = torch.zeros(1, dtype=torch.int64, device=self.device)
        try:
            for t in range(total):
                batch = _to_device(self._share(next(stream)), self.device)
                with _autocast(self.device, self.amp):
                    loss = loss_fn(self.engine, batch)
                self.engine.backward(loss)
                losses[t] = loss.detach()
                self.engine.step()
                if is_paired[t] and anchor is not None:  # this rank's share's mean, as the forward would give
                    inits[t] = anchor.batch_loss(batch, misses)
                elif is_paired[t]:  # after the step every weight is partitioned again, so w* is what is gathered
                    inits[t] = self._loss_at_anchor(loss_fn, batch)
                if log_accept is not None and self.optimizer.last_log_accept is not None and t > burn_in:
                    log_accept[t - 1] = self.optimizer.last_log_accept
                if (t + 1) % config.fetch_every == 0 or t + 1 == total:
                    block = slice(steps_done, t + 1)
                    both = torch.stack([losses[block], inits[block]])
                    dist.all_reduce(both)  # the mean of equal shares' means is the batch mean
                    both /= self.world
                    fetched[block], fetched_inits[block] = both.cpu().numpy()
                    if anchor is not None:  # every rank learns of a miss, so all stop together
                        dist.all_reduce(misses)
                        check_misses(misses)
                    steps_done = t + 1
                    status, message = _check_block(fetched[:steps_done], fetched_inits[:steps_done],
                                                   is_paired[:steps_done], init_loss, blowup, block.start)
                    if status != SUCCEEDED:
                        break
                    if progress is not None:
                        reference = fetched_inits[:steps_done] if paired else init_loss
                        progress(ChainProgress(chain, steps_done, total,
                                               _llc(fetched[:steps_done], reference, is_draw, config)))
        finally:
            if record_moves:
                self.moves = [m.detach() - a for m, a in self.optimizer.anchor_pairs()]
            self._restore_anchor()
        mala = None
        if log_accept is not None:
            dist.all_reduce(log_accept)  # log α sums over the partitions
            if status == SUCCEEDED:
                la = log_accept.cpu().numpy()
                la = la[np.isfinite(la)]
                mala = float(np.mean(np.exp(np.minimum(la, 0.0)))) if la.size else None
        fetched, fetched_inits, draws = fetched[:steps_done], fetched_inits[:steps_done], is_draw[:steps_done]
        trace, init_trace = fetched[draws].tolist(), fetched_inits[draws].tolist()
        llc = _llc(fetched, fetched_inits if paired else init_loss, is_draw, config) if status == SUCCEEDED else math.nan
        below = float(np.mean(np.asarray(trace) < np.asarray(init_trace))) if trace else None
        return ChainResult(chain=chain, seed=seed, llc=llc, status=status, loss_trace=trace, init_trace=init_trace,
                           mala_acceptance=mala, frac_below_init=below, steps=steps_done, message=message,
                           extra={"ranks": self.world})

    def _share(self, batch: Any) -> Any:
        """This rank's rows of a batch (a tensor, or a tuple/dict of tensors with rows first)."""
        if isinstance(batch, torch.Tensor):
            return batch.tensor_split(self.world)[self.rank]
        if isinstance(batch, Mapping):
            return type(batch)({k: self._share(v) for k, v in batch.items()})
        return type(batch)(self._share(v) for v in batch)

    @torch.no_grad()
    def _loss_at_anchor(self, loss_fn: LossFn, batch: Any) -> torch.Tensor:
        """L_m(w*) on this rank's share: swap w* into the partitions the forward gathers, and back."""
        pairs = self.optimizer.anchor_pairs()
        if not pairs:  # before the first step w is still w*
            with _autocast(self.device, self.amp):
                return loss_fn(self.engine, batch).detach()
        anchors = {id(p): a for p, a in pairs}
        current = [w.detach().clone() for w in self._weights]
        for w, m in zip(self._weights, self._master):
            w.copy_(anchors[id(m)])
        try:
            with _autocast(self.device, self.amp):
                return loss_fn(self.engine, batch).detach()
        finally:
            for w, c in zip(self._weights, current):
                w.copy_(c)

    @torch.no_grad()
    def _restore_anchor(self) -> None:
        """Back to w* for the next chain or restriction: the fp32 master and the weights gathered."""
        anchors = {id(p): a for p, a in self.optimizer.anchor_pairs()}
        for w, m in zip(self._weights, self._master):
            if id(m) in anchors:
                m.copy_(anchors[id(m)])
                w.copy_(anchors[id(m)])

