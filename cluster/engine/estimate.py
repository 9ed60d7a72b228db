"""estimate_llc: run localized SGLD chains around w* and estimate the LLC.

λ̂ = nβ·(mean over draws of L_m(w_t) - L(w*)), per chain; mean and spread over
chains. The step loop never synchronises with the host: step losses go into a
device buffer fetched every `config.fetch_every` steps, where divergence is
checked and progress reported.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from cluster.engine import anchor as anchors, batched, calibrate
from cluster.contract.sampler import ConfigError, SamplerConfig
from cluster.engine.seeds import chain_seed
from cluster.engine.result import DIVERGED, SUCCEEDED, ChainResult, LLCResult
from cluster.engine.lean import LeanSGLD
from cluster.engine.sgld import SGLD, UPDATES

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
Params = Sequence[str] | Mapping[str, "torch.Tensor | None"] | None

# A step whose nβ·(L_m(w_t) - L_m(w*)) exceeds this many times d/2 (the largest possible λ),
# beyond BLOWUP_NOISE standard deviations of the batch loss at w*, is a blown-up chain,
# not a sample: report it as diverged. The noise margin matters for small restrictions
# at large nβ, where 100·(d/2)/nβ is below plain batch-to-batch loss noise.
BLOWUP_FACTOR = 100.0
BLOWUP_NOISE = 20.0
INIT_LOSS_STREAM = 2**32  # seeds the L(w*) pass apart from every chain index


@dataclass(frozen=True)
class ChainProgress:
    chain: int
    step: int  # steps done
    total_steps: int
    llc_running: float  # λ̂ over the draws so far (nan before the first draw)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def _resolve_moving(model: torch.nn.Module, params: Params) -> list[tuple[str, torch.nn.Parameter, torch.Tensor | None]]:
    named = dict(model.named_parameters())
    if params is None:
        return [(n, p, None) for n, p in named.items()]
    items = params.items() if isinstance(params, Mapping) else ((n, None) for n in params)
    moving = []
    for name, mask in items:
        if name not in named:
            close = [n for n in named if name.split(".")[-1] in n][:5]
            raise ConfigError("params", f"{name!r} is not a parameter of the model; similar names: {close}")
        p = named[name]
        if mask is not None:
            if tuple(mask.shape) != tuple(p.shape):
                raise ConfigError("params", f"mask of {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(p.shape)}")
            if not bool(mask.any()):
                continue  # selects nothing in this tensor
            if bool(mask.all()):
                mask = None
        moving.append((name, p, mask))
    if not moving:
        raise ConfigError("params", "selects no weights: name at least one parameter (or a mask with a True element)")
    return moving


@contextlib.contextmanager
def _moving_only(model: torch.nn.Module, moving, upcast: bool = True) -> Iterable[None]:
    """Gradients only for moving weights; half-precision moving weights become fp32
    during sampling (updates of size ε are below bf16 resolution), restored after
    (unless not `upcast`: the lean mode carries the fp32 part itself, cluster.engine.lean)."""
    saved = {n: (p.requires_grad, p.dtype) for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for _, p, _ in moving:
            if p.dtype != torch.float32 and upcast:
                p.data = p.data.float()
            p.requires_grad_(True)
        yield
    finally:
        for n, p in model.named_parameters():
            req, dtype = saved[n]
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
            p.requires_grad_(req)


def _autocast_dtype(config: SamplerConfig, model: torch.nn.Module) -> str:
    """A half-precision model runs under autocast even when config.dtype is float32."""
    if config.dtype != "float32":
        return config.dtype
    dtypes = {p.dtype for p in model.parameters()}
    for half in (torch.bfloat16, torch.float16):
        if half in dtypes:
            return str(half).removeprefix("torch.")
    return "float32"


def _init_mode(config: SamplerConfig, batches: Any) -> str:
    """"auto" is paired: each draw's L_m(w*) on its own batch cancels the batch-to-batch
    noise that nβ·(L_m - L(w*)) carries (nβ·sd(L_m) can be 10× λ)."""
    return "paired" if config.init_loss == "auto" else config.init_loss


@torch.no_grad()
def compute_init_loss(model: torch.nn.Module, loss_fn: LossFn, batches: Iterable, config: SamplerConfig,
                      *, amp: str | None = None) -> float:
    """L(w*) averaged over the whole sampling set (or its first init_loss_batches),
    weighting each batch by its size so it is the per-example mean."""
    device = next(model.parameters()).device
    amp = amp or _autocast_dtype(config, model)
    limit = config.init_loss_batches or None
    total = torch.zeros((), dtype=torch.float64, device=device)
    weight = 0
    # A fixed seed: batches that shuffle and drop a partial batch still give the same L(w*).
    with _autocast(device, amp):
        for i, batch in enumerate(_one_pass(batches, chain_seed(config.seed, INIT_LOSS_STREAM))):
            if limit is not None and i >= limit:
                break
            batch = _to_device(batch, device)
            n = _batch_size(batch)
            total += loss_fn(model, batch).double() * n
            weight += n
    if weight == 0:
        raise ConfigError("batches", "the sampling set is empty: give at least one batch")
    value = float(total / weight)
    if not math.isfinite(value):
        raise ConfigError("model", f"L(w*) is {value}: the loss at the given weights is not finite")
    return value


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        return _batch_size(batch[0])
    return 1


# The global torch RNG is process-wide; iterators that shuffle with it (a DataLoader
# draws its shuffling seed at the first next()) are started under this lock, right
# after seeding it from the chain's seed, so concurrent chains stay deterministic.
_ITER_LOCK = threading.Lock()


def _one_pass(batches: Iterable, seed: int):
    """One pass over `batches`, shuffled (if they shuffle) as `seed` says."""
    with _ITER_LOCK, torch.random.fork_rng(devices=[]):
        # not torch.manual_seed: that also seeds every lazy device backend (ms per call)
        torch.default_generator.manual_seed(seed)
        it = iter(batches)
        first = next(it, _EMPTY)
    if first is _EMPTY:
        raise ConfigError("batches", "the sampling set is empty: give at least one batch")
    yield first
    yield from it


def _batch_stream(batches: Iterable, seed: int):
    """Cycle through `batches`; each pass is shuffled as the chain seed says."""
    for epoch in itertools.count():
        yield from _one_pass(batches, chain_seed(seed, epoch))


_EMPTY = object()


def estimate_llc(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches: Iterable,
    config: SamplerConfig,
    *,
    params: Params = None,
    chains: Sequence[int] | None = None,
    init_loss: float | None = None,
    progress: Callable[[ChainProgress], None] | None = None,
    workers: int = 1,
    sample_size: int | None = None,
    memory: str = "standard",
    observer: Any = None,
    batch_chains: int = 1,
    update: str = "foreach",
    anchor: str = "auto",
    anchor_cache: anchors.AnchorCache | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient of `model` at its current weights w*.

    Args:
        loss_fn: `loss_fn(model, batch)` → the mean loss of the batch, a scalar tensor.
        batches: a re-iterable of batches (a DataLoader works); it is the sampling
            set, cycled as needed. Batches are moved to the model's device.
        params: what moves (the weight restriction): parameter names, or a dict
            name → bool mask of the parameter's shape (True = moves) or None
            (the whole tensor). Default: every parameter. Everything else stays at w*.
        chains: which chain indices to run (default all `config.chains`); seeds
            derive from (config.seed, index) so a subset run elsewhere gives the
            same per-chain values.
        init_loss: L(w*) if already known (saves a pass over the data).
        progress: called every `config.fetch_every` steps of each chain (from the
            worker's thread when workers > 1).
        workers: run chains concurrently in this many threads, each on its own copy
            of the model (torch's intra-op threads are split between them, and on
            CUDA each gets its own stream). Pays for small models, whose single
            chain cannot keep every core busy. Results do not depend on it.
        sample_size: n of the rule nβ = n/log n (the number of terms the loss averages
            over the sampling set: examples, or tokens for a per-token loss). Default:
            the examples in `batches` when they have a length.
        memory: "standard", or "lean" for a bf16 model too large for fp32 master weights:
            bf16 weights, w* as loaded and the drift w - w* in fp32 (cluster.engine.lean;
            10 instead of 14 bytes per moving weight, no MALA estimate).
        observer: a cluster.engine.observables.ObservableRecorder: records per-example losses of
            its example sets every k-th draw of every main chain (not of calibration pilots).
        batch_chains: run the main chains in groups of this many as one batched computation
            (cluster.engine.batched: stacked weights, functional_call + vmap); same seeds and
            noise streams, so the same chains up to rounding. Falls back to one chain at a time
            where it cannot batch (the lean mode, observables, a loss_fn vmap cannot run).
        update: the SGLD update, "foreach" (reference), "fused" or "compiled" (cluster.engine.fused).
        anchor: how each draw's L_m(w*) is found (cluster.engine.anchor): "table", one no-grad pass
            over the sampling set, then a lookup per draw; "forward", a forward at w* per draw;
            "auto", the table where `loss_fn.per_row` and the batches allow it and its pass costs
            no more forwards than the draws (of this call, or of every call sharing `anchor_cache`).
        anchor_cache: tables kept between calls at the same w* and batches (a worker's dataset).

    Settings left "auto" in `config` are chosen first (cluster.engine.calibrate):
    pilot chains over a grid of ε, then the main chains at the chosen ε. The result's
    `config` holds the numbers used and `calibration` the evidence.
    """
    if not (isinstance(workers, int) and workers >= 1):
        raise ConfigError("workers", f"must be an integer >= 1, got {workers!r}")
    if not (isinstance(batch_chains, int) and batch_chains >= 1):
        raise ConfigError("batch_chains", f"must be an integer >= 1, got {batch_chains!r}")
    if update not in UPDATES:
        raise ConfigError("update", f"must be one of {UPDATES}, got {update!r}")
    if anchor not in ("auto", "table", "forward"):
        raise ConfigError("anchor", f"must be 'auto', 'table' or 'forward', got {anchor!r}")
    if anchor == "table" and anchors.applicable(loss_fn, batches) is not None:
        raise ConfigError("anchor", f"'table' needs {anchors.applicable(loss_fn, batches)}: give loss_fn.per_row "
                                    "and a list of batches (or batches with every_row()), or use 'auto'")
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
    moving = _resolve_moving(model, params)
    indices = list(range(config.chains)) if chains is None else list(chains)
    bad = [i for i in indices if not (isinstance(i, int) and 0 <= i < config.chains)]
    if bad:
        raise ConfigError("chains", f"chain indices must be in [0, {config.chains}), got {bad}")
    if memory not in ("standard", "lean"):
        raise ConfigError("memory", f"must be 'standard' or 'lean', got {memory!r}")
    if memory == "lean" and any(p.dtype == torch.float32 for _, p, _ in moving):
        raise ConfigError("memory", "the lean mode keeps the moving weights in half precision: load the model "
                                    "in bfloat16 (model.dtype), or use the standard mode for float32 weights")
    mode = _init_mode(config, batches)
    elements = sum(int(m.sum()) if m is not None else p.numel() for _, p, m in moving)
    amp = _autocast_dtype(config, model)  # before half-precision moving weights are upcast
    nbeta, nbeta_info = calibrate.resolve_nbeta(config, sample_size or _count_examples(batches))
    calibration = None
    plan = calibrate.plan_pilots(config, nbeta)
    saved_dtypes = {n: p.dtype for n, p, _ in moving}
    with _moving_only(model, moving, upcast=memory != "lean"):
        if mode == "full" and init_loss is None:
            init_loss = compute_init_loss(model, loss_fn, batches, config, amp=amp)
        table = None
        if anchor != "forward" and anchors.applicable(loss_fn, batches) is None:
            # built here, where half-precision moving weights are upcast as the chains will see them
            signature = (amp, memory, tuple(n for n, p, _ in moving if p.dtype != saved_dtypes[n]))
            table = (anchor_cache or anchors.AnchorCache()).table(
                signature, batches, paired_steps(config, len(indices), plan),
                lambda: anchors.AnchorTable.build(model, loss_fn, batches, amp=amp), force=anchor == "table")

        def run_all(cfg: SamplerConfig, which: list[int], report, observe=None) -> list[ChainResult]:
            run = functools.partial(_run_chain, loss_fn=loss_fn, batches=batches, config=cfg,
                                    init_loss=init_loss if mode == "full" else None, elements=elements,
                                    progress=report, amp=amp, memory=memory, observer=observe, update=update,
                                    anchor=table)
            if batch_chains > 1 and len(which) > 1 and batched.supported(memory, observe) is None:
                try:
                    return [r for k in range(0, len(which), batch_chains) for r in batched.run_chains_batched(
                        model, moving, which[k:k + batch_chains], loss_fn=loss_fn, batches=batches, config=cfg,
                        init_loss=init_loss if mode == "full" else None, elements=elements, progress=report,
                        amp=amp, update=update, anchor=table)]
                except batched.BatchingUnsupported:
                    pass  # one chain at a time below (the model is still at w*: batching never moves it)
            n = min(workers, len(which))
            return [run(model, moving, i) for i in which] if n == 1 else _run_concurrently(run, model, moving, which, n)

        if plan is not None:
            pilots = [c for k in range(len(plan.grid)) for c in run_all(plan.config_for(k), [k], None)]
            calibration = calibrate.choose(plan, pilots, init_loss if mode == "full" else None)
        config = calibrate.resolve(config, nbeta, calibration)
        results = run_all(config, indices, progress, observer)
    if mode == "paired":
        inits = [v for c in results for v in c.init_trace]
        init_loss = float(np.mean(inits)) if inits else float("nan")
    calibration = {**(calibration or {}), "nbeta": nbeta, "nbeta_rule": nbeta_info,
                   "warnings": nbeta_info["warnings"] + (calibration or {}).get("warnings", [])}
    return LLCResult.from_chains(results, config, float(init_loss), moving_elements=elements, paired=mode == "paired",
                                 calibration=calibration)


def _count_examples(batches: Iterable) -> int | None:
    """Examples in the sampling set: a DataLoader's dataset length, or a pass over sized batches."""
    dataset = getattr(batches, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    try:
        len(batches)
    except TypeError:
        return None
    with torch.random.fork_rng(devices=[]):  # a shuffling iterable must not move the caller's RNG
        return sum(_batch_size(b) for b in batches)


def _run_concurrently(run, model, moving, indices: list[int], workers: int) -> list[ChainResult]:
    replicas = [(model, moving)]
    for _ in range(workers - 1):
        clone = copy.deepcopy(model)
        named = dict(clone.named_parameters())
        replicas.append((clone, [(n, named[n], m) for n, _, m in moving]))
    device = moving[0][1].device
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))

    def work(k: int) -> list[ChainResult]:
        replica, replica_moving = replicas[k]
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            out = [run(replica, replica_moving, i) for i in indices[k::workers]]
        if stream is not None:
            stream.synchronize()
        return out

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llc-chain") as pool:
            parts = list(pool.map(work, range(workers)))
    finally:
        torch.set_num_threads(threads)
    return [r for part in parts for r in part]


def paired_steps(config: SamplerConfig, chains: int, plan: "calibrate.PilotPlan | None" = None) -> int:
    """Draws (and first-block steps) that evaluate L_m(w*) in `chains` main chains and the pilots."""
    count = chains * int(step_masks(config)[1].sum())
    if plan is not None:
        count += sum(int(step_masks(plan.config_for(k))[1].sum()) for k in range(len(plan.grid)))
    return count


def step_masks(config: SamplerConfig) -> tuple[np.ndarray, np.ndarray]:
    """(is_draw, is_paired) over a chain's steps. L_m(w*) is evaluated on the step's own batch at
    every draw (the diagnostics' paired signal, and λ̂ in paired mode) and over the first block
    (the batch-noise scale for the blow-up check)."""
    is_draw = np.zeros(config.total_steps, dtype=bool)
    is_draw[np.asarray(config.draw_steps())] = True
    is_paired = is_draw.copy()
    is_paired[: config.fetch_every] = True
    return is_draw, is_paired


def _run_chain(model, moving, chain: int, *, loss_fn, batches, config: SamplerConfig, init_loss: float | None,
               elements: int, progress, amp: str, memory: str = "standard", observer=None,
               update: str = "foreach", anchor: anchors.AnchorTable | None = None) -> ChainResult:
    params = [p for _, p, _ in moving]
    device = params[0].device
    seed = chain_seed(config.seed, chain)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    track = config.mala and memory != "lean"  # the lean mode keeps no copies for MALA (cluster.engine.lean)
    optimizer = (LeanSGLD if memory == "lean" else SGLD)(
        [{"params": params, "masks": [m for _, _, m in moving]}],
        lr=config.step_size,
        nbeta=config.nbeta,
        gamma=config.gamma,
        preconditioner="rmsprop" if config.method == "rmsprop_sgld" else "none",
        alpha=config.rmsprop_alpha,
        eps=config.rmsprop_eps,
        generator=generator,
        track_mala=track,
        **({"update": update} if memory != "lean" else {}),
    )
    total = config.total_steps
    is_draw, is_paired = step_masks(config)
    paired = init_loss is None
    losses = torch.zeros(total, device=device)
    inits = torch.zeros(total, device=device)
    log_accept = torch.full((total,), float("nan"), device=device) if track else None
    virial = torch.zeros(total, device=device) if track else None
    blowup = BLOWUP_FACTOR * max(elements / 2, 1.0) / config.nbeta
    status, message, steps_done = SUCCEEDED, "", 0
    fetched = np.zeros(total)  # host copies of the device buffers, filled block by block
    fetched_inits = np.zeros(total)
    stream = _batch_stream(batches, seed)
    pointers = _own_storages(model, params)  # L_m(w*) by swapping storage pointers, not copying
    if anchor is not None:  # or looked up, with no forward at all (cluster.engine.anchor)
        anchor = anchor.to(device)
        misses = torch.zeros((), dtype=torch.int64, device=device)
    for p in params:  # gradients left on the model (by training, or a deep copy of it) would add to the first step's
        p.grad = None
    recorder = observer.chain(chain, draws=int(is_draw.sum()), device=device, amp=amp) if observer is not None else None
    try:
        for t in range(total):
            batch = _to_device(next(stream), device)
            with _autocast(device, amp):
                loss = loss_fn(model, batch)
            loss.backward()
            losses[t] = loss.detach()
            if recorder is not None and is_draw[t]:  # observables at w_t (cluster.engine.observables)
                recorder.on_draw(model)
            if is_paired[t]:
                inits[t] = (anchor.batch_loss(batch, misses) if anchor is not None else
                            _loss_at_anchor(model, loss_fn, batch, optimizer, device, amp, pointers=pointers))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if virial is not None and is_draw[t]:
                virial[t] = optimizer.last_virial
            if log_accept is not None and optimizer.last_log_accept is not None and t > config.burn_in:
                log_accept[t - 1] = optimizer.last_log_accept
            if (t + 1) % config.fetch_every == 0 or t + 1 == total:
                block = slice(steps_done, t + 1)
                fetched[block] = losses[block].cpu().numpy()
                fetched_inits[block] = inits[block].cpu().numpy()
                if anchor is not None:
                    anchors.check_misses(misses)
                if recorder is not None:
                    recorder.fetch()
                steps_done = t + 1
                status, message = _check_block(fetched[:steps_done], fetched_inits[:steps_done],
                                               is_paired[:steps_done], init_loss, blowup, block.start)
                if status != SUCCEEDED:
                    break
                if progress is not None:
                    reference = fetched_inits[:steps_done] if paired else init_loss
                    progress(ChainProgress(chain, steps_done, total, _llc(fetched[:steps_done], reference, is_draw, config)))
    finally:
        with torch.no_grad():  # back to w* for the next chain or restriction
            pairs = optimizer.anchors()
            if pairs:
                torch._foreach_copy_([p for p, _ in pairs], [a.to(p.dtype) for p, a in pairs])
    if recorder is not None:
        recorder.close()

    variance = optimizer.gradient_variance()
    return chain_result(chain, seed, status, message, fetched[:steps_done], fetched_inits[:steps_done],
                        is_draw=is_draw, init_loss=init_loss, config=config, elements=elements,
                        log_accept=log_accept.cpu().numpy() if log_accept is not None else None,
                        virial=virial.cpu().numpy() if virial is not None else None,
                        variance=float(variance) if variance is not None else None)


def chain_result(chain: int, seed: int, status: str, message: str, fetched: np.ndarray, fetched_inits: np.ndarray, *,
                 is_draw: np.ndarray, init_loss: float | None, config: SamplerConfig, elements: int,
                 log_accept: np.ndarray | None, virial: np.ndarray | None, variance: float | None) -> ChainResult:
    """A chain's result from its host-side losses over the steps it ran (`fetched`, with L_m(w*) of the
    same batches in `fetched_inits`) and its per-step log α and virial; `init_loss` None is paired mode."""
    steps = fetched.size
    draws = is_draw[:steps]
    trace = fetched[draws].tolist()
    init_trace = fetched_inits[draws].tolist()
    ok = status == SUCCEEDED
    llc = _llc(fetched, fetched_inits if init_loss is None else init_loss, is_draw, config) if ok else float("nan")
    below = float(np.mean(np.asarray(trace) < np.asarray(init_trace))) if trace else None
    mala = None
    if log_accept is not None and ok:
        la = log_accept[np.isfinite(log_accept)]
        mala = float(np.mean(np.exp(np.minimum(la, 0.0)))) if la.size else None
    equipartition = None
    if virial is not None and ok and draws.any():
        equipartition = float(virial[:steps][draws].mean() / max(elements, 1))
    noise = float(config.step_size * config.nbeta**2 * variance / 4) if variance is not None and ok else None
    return ChainResult(chain=chain, seed=seed, llc=llc, status=status, loss_trace=trace, init_trace=init_trace,
                       mala_acceptance=mala, frac_below_init=below, gradient_noise=noise,
                       equipartition=equipartition, steps=steps, message=message)


def _own_storages(model: torch.nn.Module, params: list[torch.Tensor]) -> bool:
    """Whether no other parameter or buffer of `model` shares a moving weight's storage (views into one
    flat buffer, weights aliased by buffers), and no compiled graph may have recorded the weights'
    addresses: then `p.data = w*` points the model at w* as a copy into the storage would."""
    if hasattr(model, "_orig_mod"):  # torch.compile'd (cudagraphs assume fixed weight addresses)
        return False
    owners: dict[int, int] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.numel():
            key = t.untyped_storage().data_ptr()
            owners[key] = owners.get(key, 0) + 1
    return all(p.numel() and owners.get(p.untyped_storage().data_ptr()) == 1 for p in params)


@torch.no_grad()
def _loss_at_anchor(model, loss_fn, batch, optimizer: SGLD, device, amp: str, *, pointers: bool = False) -> torch.Tensor:
    """L_m(w*) on this step's batch: swap w* in, evaluate, swap back (no model copy).

    With `pointers` (each moving weight owns its storage, `_own_storages`) the swap is of storage
    pointers, `p.data = w*` and back: no pass over the weights and no buffer of their size (on a
    1.4B-parameter model: three fp32 copies, ~34 GB of memory traffic per draw, and a 5.6 GB buffer).
    Otherwise w is copied aside into a buffer and w* copied in. The forward reads the same values
    either way, so L_m(w*) is the same to the bit."""
    pairs = optimizer.anchors()
    if not pairs:  # before the first step w is still w*
        with _autocast(device, amp):
            return loss_fn(model, batch).detach()
    if pointers and all(a.dtype == p.dtype and a.device == p.device and a.shape == p.shape for p, a in pairs):
        saved = [p.data for p, _ in pairs]
        try:
            for p, a in pairs:
                p.data = a
            with _autocast(device, amp):
                return loss_fn(model, batch).detach()
        finally:
            for (p, _), w in zip(pairs, saved):
                p.data = w
    params = [p for p, _ in pairs]
    # w is kept in a buffer reused between steps (the optimizer's): no allocation per draw
    current = optimizer._swap_buffer
    if current is None or len(current) != len(params) or any(c.shape != p.shape for c, p in zip(current, params)):
        current = optimizer._swap_buffer = [torch.empty_like(p) for p in params]
    torch._foreach_copy_(current, params)
    torch._foreach_copy_(params, [a if a.dtype == p.dtype else a.to(p.dtype) for p, a in pairs])
    try:
        with _autocast(device, amp):
            return loss_fn(model, batch).detach()
    finally:
        torch._foreach_copy_(params, current)


def _llc(losses: np.ndarray, init: np.ndarray | float, is_draw: np.ndarray, config: SamplerConfig) -> float:
    draws = is_draw[: len(losses)]
    if not draws.any():
        return float("nan")
    ref = init[draws] if isinstance(init, np.ndarray) else init
    return float(config.nbeta * np.mean(losses[draws] - ref))


def _check_block(losses: np.ndarray, inits: np.ndarray, is_paired: np.ndarray, init_loss: float | None,
                 blowup: float, start: int) -> tuple[str, str]:
    """Divergence check of the steps fetched since `start`.

    Each step is compared with L_m(w*) on its own batch where that was evaluated,
    else with L(w*) (the mean of the paired values in paired mode); the limit is
    BLOWUP_FACTOR·(d/2)/nβ above it plus BLOWUP_NOISE standard deviations of L_m(w*)."""
    block = losses[start:]
    finite = np.isfinite(block)
    if not finite.all():
        first = start + int(np.flatnonzero(~finite)[0])
        return DIVERGED, (f"loss became {losses[first]} at step {first}: the chain diverged. "
                          "Lower step_size (ε) or raise gamma (γ).")
    pairs = inits[is_paired]
    ref = np.full(block.shape, init_loss if init_loss is not None else float(np.mean(pairs)))
    own = is_paired[start:]
    ref[own] = inits[start:][own]
    noise = float(np.std(pairs)) if pairs.size > 1 else 0.0
    excess = block - ref
    worst = int(np.argmax(excess))
    if excess[worst] > blowup + BLOWUP_NOISE * noise:
        return DIVERGED, (f"loss {block[worst]:.4g} at step {start + worst} is far above L(w*) = {ref[worst]:.4g} "
                          "(more than any sample of the local posterior): the chain blew up. Lower step_size (ε).")
    return SUCCEEDED, ""
