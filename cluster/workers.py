"""Ray actors of a job: chain workers, and the board they post progress on.

A `ChainWorker` is one worker process. It loads the model, tokenizes every
dataset and resolves every restriction once (`prepare`), then runs any number of
(restriction, chain) units on that loaded state: the engine puts the weights back
to w* after every chain, so nothing is reloaded or re-tokenized per chain.

Heavy imports (torch, transformers) happen inside the methods, so the driver can
import this module to create actors without loading torch itself.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import ray

from cluster.contract.errors import FailedPrecondition
from cluster.contract.spec import DatasetRef, JobSpec


def dataset_key(ref: DatasetRef) -> str:
    """Identity of a dataset: restrictions with equal references share one tokenized copy."""
    return json.dumps(ref.__dict__, sort_keys=True, default=str)


def dataset_refs(spec: JobSpec) -> dict[str, DatasetRef]:
    """Distinct datasets of a job: its own, and those of data-restricted restrictions."""
    refs = {dataset_key(spec.dataset): spec.dataset}
    for r in spec.restrictions:
        if r.dataset is not None:
            refs.setdefault(dataset_key(r.dataset), r.dataset)
    for d in spec.observables.datasets if spec.observables is not None else ():  # cluster/observables.py
        refs.setdefault(dataset_key(d.dataset), d.dataset)
    return refs


class ProgressBoard:
    """Latest progress of each running chain; the driver drains it about once a second.

    Keeping only the latest value per chain bounds memory and rate-limits the
    events whatever `fetch_every` is; workers post without waiting for a reply.
    """

    def __init__(self) -> None:
        self._latest: dict[tuple[int, int], dict[str, Any]] = {}

    def post(self, restriction: int, chain: int, progress: dict[str, Any]) -> None:
        self._latest[(restriction, chain)] = progress

    def drain(self) -> list[tuple[int, int, dict[str, Any]]]:
        out = [(r, c, p) for (r, c), p in self._latest.items()]
        self._latest = {}
        return out


class ChainWorker:
    """One worker process holding the loaded model, datasets and restrictions of a job."""

    def __init__(self, spec: JobSpec, board: Any = None) -> None:
        self._spec = spec  # parsed and validated once, by the driver; Ray hands every worker the same object
        self._board = board
        self._state: dict[str, Any] | None = None

    def _device(self) -> str:
        import torch

        if self._spec.compute.gpus_per_chain > 0:
            if not torch.cuda.is_available():
                raise FailedPrecondition(
                    "compute.gpus_per_chain > 0 but this worker sees no CUDA device "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                    "set compute.gpus_per_chain=0 or fix the node's GPU drivers"
                )
            return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to this worker's GPU
        return "cpu"

    def prepare(self) -> dict[str, Any]:
        """Load everything a chain needs, once; later calls return the same summary.

        Raises the domain errors (NotFound, InvalidArgument, ...) that the driver
        reports before any chain starts.
        """
        if self._state is None:
            self._state = self._load()
        s = self._state
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "load_seconds": s["load_seconds"],
            "preview": s["preview"],
            "model_provenance": s["model"].provenance,
            "dataset_provenance": {k: d.provenance for k, d in s["datasets"].items()},
            "architecture": s["model"].architecture,
            "threads": s["threads"],
            # n of the rule nβ = n/log n per dataset: the tokens lm_loss averages over (cluster.engine.calibrate)
            "sample_sizes": {k: int(d.input_ids.shape[0] * (d.input_ids.shape[1] - 1)) for k, d in s["datasets"].items()},
        }

    def _load(self) -> dict[str, Any]:
        import torch

        from cluster.datasets import load_token_dataset, make_batches
        from cluster.restrictions import select_restriction

        start = time.monotonic()
        spec = self._spec
        # As many CPU threads as CPUs the chain owns, whatever the node's environment says: CPU
        # kernels reduce in a thread-count-dependent order, and a chain's λ̂ must not depend on placement.
        torch.set_num_threads(max(1, int(spec.compute.cpus_per_chain)))
        loaded = self._load_model()
        if spec.compute.lean_memory:  # lean chains keep one hidden state per layer (cluster.models)
            from cluster.models import checkpoint_activations

            loaded.provenance["checkpointed_layers"] = checkpoint_activations(loaded.model)
        datasets, batches = {}, {}
        vocab = loaded.model.get_input_embeddings().num_embeddings
        for key, ref in dataset_refs(spec).items():
            ds = load_token_dataset(ref, loaded.tokenizer, loaded.max_positions, vocab_size=vocab)
            datasets[key] = ds
            batches[key] = make_batches(ds, spec.batch_size)
        shapes = self._selection_model(loaded)
        selections = [select_restriction(shapes, loaded.architecture, r) for r in spec.restrictions]
        preview = [
            {"name": r.name, "tensors": sel.tensors, "elements": sel.elements, "notes": sel.notes}
            for r, sel in zip(spec.restrictions, selections)
        ]
        return {
            "model": loaded,
            "datasets": datasets,
            "batches": batches,
            "selections": selections,
            "preview": preview,
            "init_loss": {},
            "anchors": {},  # per dataset key: L(w*) per row, kept between calls (cluster.engine.anchor)
            "load_seconds": time.monotonic() - start,
            "threads": torch.get_num_threads(),
        }

    def _load_model(self):
        from cluster.models import load_model

        return load_model(self._spec.model, self._device())

    def _selection_model(self, loaded):
        """The module whose parameter names and shapes restrictions are resolved on."""
        return loaded.model

    def _restriction_data(self, restriction: int) -> str:
        r = self._spec.restrictions[restriction]
        return dataset_key(r.dataset if r.dataset is not None else self._spec.dataset)

    def init_loss(self, key: str) -> float | None:
        """L(w*) over one whole dataset (it depends on the data, not the chain), or None when
        the sampler pairs each draw with L(w*) on the draw's own batch (init_loss "paired" or "auto")."""
        self.prepare()
        if self._spec.sampler.init_loss != "full":  # "auto" is paired too
            return None
        cache = self._state["init_loss"]
        if key not in cache:
            cache[key] = self._dataset_loss(self._state["datasets"][key].input_ids)
        return cache[key]

    def _dataset_loss(self, rows) -> float:
        from cluster.datasets import lm_loss
        from cluster.engine.estimate import compute_init_loss

        # Every row once, in order: the chains' shuffled batches drop a random partial batch, which
        # would make L(w*) (multiplied by nβ in λ̂) depend on the worker's RNG state.
        size = self._spec.batch_size
        ordered = [rows[i:i + size] for i in range(0, rows.shape[0], size)]
        return float(compute_init_loss(self._state["model"].model, lm_loss, ordered, self._spec.sampler))

    def run_chains(self, restriction: int, chains: list[int], attempts: list[int], init_loss: float | None,
                   sampler: dict[str, Any] | None = None, pilot: bool = False) -> list[dict[str, Any]]:
        """Run chains `chains` of restriction `restriction`, as one batched computation when several
        (`compute.chains_per_worker`); returns one ChainResult.to_dict() per chain, placement in `extra`.

        `init_loss` is the job-wide L(w*) of the restriction's dataset, computed once by one
        worker so every chain uses the same value (None in paired mode). `sampler`: the
        settings the driver resolved (numbers for every "auto"), or a pilot's; `pilot`:
        a calibration pilot, which posts no progress. `attempts[i]` numbers chain i's attempt.
        """
        from cluster.contract.sampler import SamplerConfig
        from cluster.engine.anchor import AnchorCache  # L(w*) per row, built once it pays (its docstring)

        config = SamplerConfig.from_dict(sampler) if sampler is not None else self._spec.sampler
        self.prepare()
        key = self._restriction_data(restriction)
        board = self._board
        where = self.where()
        attempt = dict(zip(chains, attempts))

        def progress(p: Any) -> None:
            if board is not None and not pilot:  # fire and forget: the chain never waits for the driver
                board.post.remote(restriction, p.chain, {
                    "step": int(p.step), "total_steps": int(p.total_steps), "llc_running": float(p.llc_running),
                    "attempt": attempt[p.chain], **where,
                })

        start = time.monotonic()
        self._observing = not pilot  # calibration pilots record no observables
        results = self._chains(self._state["batches"][key], config, restriction, chains, init_loss, progress,
                               anchors=self._state["anchors"].setdefault(key, AnchorCache()))
        seconds = round(time.monotonic() - start, 3)
        for r in results:
            r.attempts = attempt[r.chain]
            r.extra = {"chains_together": 1, **r.extra, **where, "seconds": seconds}  # the engine's count if batched
        return [r.to_dict() for r in results]

    def _chains(self, batches, config, restriction: int, chains: list[int], init_loss: float | None, progress,
                anchors: Any = None):
        """Chains on this process's loaded model, batched where the engine can → [ChainResult]."""
        from cluster.datasets import lm_loss
        from cluster.engine.estimate import estimate_llc

        observer = None
        if self._spec.observables is not None and getattr(self, "_observing", True):  # per-example losses every k-th draw (cluster/observables.py)
            from cluster import observables

            observer = observables.recorder(self._spec, observables.example_sets(
                self._spec, self._state["datasets"], dataset_key))
        result = estimate_llc(self._state["model"].model, lm_loss, batches, config,
                              params=self._state["selections"][restriction].params, chains=list(chains),
                              init_loss=init_loss, progress=progress, batch_chains=len(chains),
                              memory="lean" if self._spec.compute.lean_memory else "standard", observer=observer,
                              anchor_cache=anchors)
        if observer is not None:
            for chain in result.chains:
                if chain.chain in observer.chains():
                    part = observables.write_part(self._spec.job_id, restriction,
                                                  self._spec.restrictions[restriction].name, chain.chain, observer)
                    chain.extra = {**chain.extra, "observables": part}
        return result.chains

    def where(self) -> dict[str, Any]:
        """The node and process of this worker (tests use it to kill one mid-chain)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
