"""Sharded chains on Ray: one chain = a DeepSpeed ZeRO-3 group of rank actors on one node.

    actor, group = start_sharded_worker(resources, spec, board)   # ChainPool does this

`ChainPool` treats the group as one chain worker: its handle is rank 0
(`ShardedChainWorker`), which answers the same calls as a `ChainWorker` (where,
prepare, init_loss, run_chains). Rank 0 starts ranks 1..g-1 as plain actors in the
other bundles of the group's STRICT_PACK placement group (so they are owned by
rank 0 and die with it), picks MASTER_ADDR/PORT, and every call runs on all ranks
at once: each rank loads the weights straight into its partitions (zero.Init via
HfDeepSpeedConfig), tokenizes the data and resolves the restrictions on a
meta-device copy of the model, then runs the same chain on its share of each batch
(cluster.engine.zero3).

A rank that dies or fails mid-call leaves the group's collectives hanging, so
rank 0 then exits: the pool sees one dead worker, frees the group (killing rank 0
kills the others, and the pool removes the placement group) and retries the chain
on a new group, like any other chain whose worker died.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
from typing import Any, Callable

import ray
import ray.util

from cluster.contract.errors import LLCError
from cluster.contract.spec import JobSpec
from cluster.placement import ChainResources
from cluster.workers import ChainWorker

log = logging.getLogger(__name__)

# How long a rank waits in a collective for the others (a rank stuck that long is as good as dead).
RANK_TIMEOUT_ENV = "LLC_RANK_TIMEOUT_S"
# After another rank raised a request error (bad model, data...), how long rank 0 waits to raise the same.
_SAME_ERROR_GRACE_S = 30.0


def start_sharded_worker(resources: ChainResources, spec: Any, board: Any) -> tuple[Any, Any]:
    """Rank 0 of a new group, in bundle 0 of a new STRICT_PACK placement group: (actor, placement group)."""
    from ray.util import placement_group

    group = placement_group(resources.placement_group_bundles(), strategy="STRICT_PACK")
    actor = ray.remote(ShardedChainWorker).options(
        **resources.rank_options(group, 0), max_restarts=0, max_task_retries=0,
    ).remote(spec, board, group)
    return actor, group


class ChainRank(ChainWorker):
    """One rank of a sharded chain: a ChainWorker whose model is this rank's ZeRO-3 partitions."""

    def __init__(self, spec: JobSpec, board: Any = None) -> None:
        super().__init__(spec, board)
        self._rank = 0
        self._shards = None  # cluster.engine.zero3.ShardedChains, once loaded
        self._test = {"noise": True, "record_moves": False}
        self._anchor_test = "auto"  # tests only: "table" or "forward" instead of the ski-rental rule

    def address(self) -> dict[str, Any]:
        """Where this rank runs: node IP, its GPU ids, pid."""
        return {"ip": ray.util.get_node_ip_address(), "gpus": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def join(self, master: str, port: int, rank: int, world: int, devices: list[str]) -> dict[str, Any]:
        """Join the group's process group (every rank at once), then load everything (prepare)."""
        import deepspeed
        import torch

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if devices else "cpu")
        os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        if devices:  # every rank sees the group's GPUs (NCCL peer-to-peer), and uses its own
            own = ray.get_gpu_ids()[0]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
            os.environ["LOCAL_RANK"] = str(devices.index(str(own)))
            torch.cuda.set_device(devices.index(str(own)))
        timeout = datetime.timedelta(seconds=float(os.environ.get(RANK_TIMEOUT_ENV, "600")))
        deepspeed.init_distributed(dist_backend="nccl" if devices else "gloo", timeout=timeout)
        self._rank = rank
        return ChainWorker.prepare(self)

    # -- ChainWorker hooks: partitions instead of a whole model ----------------
    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.integrations import HfDeepSpeedConfig

        from cluster.engine.zero3 import ShardedChains, zero3_config
        from cluster.models import load_model

        spec = self._spec
        ranks = spec.compute.ranks
        torch.set_num_threads(max(1, int(spec.compute.cpus_per_chain / ranks)))
        micro_batch = spec.batch_size // ranks
        dtype = None if spec.model.dtype == "auto" else spec.model.dtype
        # While this object lives, from_pretrained loads each weight straight into its partitions.
        zero3 = HfDeepSpeedConfig(zero3_config(micro_batch=micro_batch, bf16=dtype == "bfloat16"))
        loaded = load_model(spec.model, self._device())
        del zero3
        loaded.provenance["num_parameters"] = sum(p.ds_numel for p in loaded.model.parameters())
        loaded.provenance["zero3_ranks"] = ranks
        with torch.device("meta"):  # names and shapes for restrictions, no memory
            self._shapes = AutoModelForCausalLM.from_config(loaded.model.config)
        self._shards = ShardedChains(loaded.model, spec.sampler, micro_batch=micro_batch)
        return loaded

    def _selection_model(self, loaded):
        return self._shapes

    def _dataset_loss(self, rows) -> float:
        from cluster.datasets import lm_loss

        return self._shards.init_loss(lm_loss, rows, self._spec.batch_size, self._spec.sampler)

    def _chains(self, batches, config, restriction: int, chains: list[int], init_loss: float | None, progress,
                anchors: Any = None):
        from cluster.datasets import lm_loss
        from cluster.engine.estimate import paired_steps

        # every rank gets the same calls, so all build the table (a collective pass) at the same call
        table = None if self._anchor_test == "forward" else anchors.table(
            ("zero3", self._anchor_test), batches, paired_steps(config, len(chains)),
            lambda: self._shards.anchor_table(lm_loss, batches.input_ids, batches.batch_size),
            force=self._anchor_test == "table")
        return [self._shards.run_chain(lm_loss, batches, config, chain, init_loss=init_loss,
                                       params=self._state["selections"][restriction].params,
                                       progress=progress if self._rank == 0 else None, anchor=table, **self._test)
                for chain in chains]  # a sharded chain fills its ranks: one at a time

    def set_test_options(self, *, noise: bool = True, record_moves: bool = False, anchor: str = "auto") -> None:
        """Tests only: switch the SGLD noise off, keep each chain's final w - w* (moves()), or force
        how L_m(w*) is found ("table" or "forward")."""
        self._test = {"noise": noise, "record_moves": record_moves}
        self._anchor_test = anchor

    def moves(self) -> Any:
        return [m.cpu().numpy() for m in self._shards.moves]


class ShardedChainWorker(ChainRank):
    """Rank 0: starts the other ranks and runs every call on all of them at once."""

    def __init__(self, spec: JobSpec, board: Any = None, placement_group: Any = None) -> None:
        super().__init__(spec, board)
        self._group = placement_group
        self._followers: list[Any] = []
        self._follower_pids: list[int] = []

    def prepare(self) -> dict[str, Any]:
        if self._state is None:
            self._form_group()
        return ChainWorker.prepare(self)

    def _form_group(self) -> None:
        from cluster.local_ray import free_port

        spec = self._spec
        resources = ChainResources.from_compute(spec.compute)
        rank_actor = ray.remote(ChainRank)
        self._followers = [
            rank_actor.options(**resources.rank_options(self._group, r), max_restarts=0, max_task_retries=0)
            .remote(self._spec)
            for r in range(1, resources.ranks)
        ]
        here = self.address()
        others = ray.get([f.address.remote() for f in self._followers])
        self._follower_pids = [o["pid"] for o in others]
        devices = sorted({g for a in [here, *others] for g in a["gpus"]}, key=int)
        master, port, world = here["ip"], free_port(), resources.ranks
        joins = [f.join.remote(master, port, r, world, devices) for r, f in enumerate(self._followers, 1)]
        self._together(joins, lambda: self.join(master, port, 0, world, devices))

    def where(self) -> dict[str, Any]:
        return {**super().where(), "rank_pids": [os.getpid(), *self._follower_pids]}

    def init_loss(self, key: str) -> float | None:
        self.prepare()
        calls = [f.init_loss.remote(key) for f in self._followers]
        return self._together(calls, lambda: super(ShardedChainWorker, self).init_loss(key))

    def run_chains(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:  # ChainWorker.run_chains' arguments
        self.prepare()
        calls = [f.run_chains.remote(*args, **kwargs) for f in self._followers]
        run = super(ShardedChainWorker, self).run_chains
        results = self._together(calls, lambda: run(*args, **kwargs))
        for result in results:
            result["extra"]["rank_pids"] = [os.getpid(), *self._follower_pids]
        return results

    def _together(self, calls: list[Any], own: Callable[[], Any]) -> Any:
        """Rank 0's share of a collective call while the other ranks run theirs.

        If another rank dies or fails first, rank 0 is (or will be) stuck in a collective,
        so it exits and the pool retries the chain on a new group. A request error that
        every rank raises alike (a bad model or restriction) gets time to surface here.
        """
        finished = threading.Event()

        def watch() -> None:
            pending = list(calls)
            while pending and not finished.is_set():
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    try:
                        ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - any failure breaks the group
                        request_error = isinstance(getattr(exc, "cause", None), LLCError)
                        if not finished.wait(_SAME_ERROR_GRACE_S if request_error else 0.0):
                            _exit(f"another rank of this ZeRO-3 chain failed ({type(exc).__name__}: {_oneline(exc)})")
                        return

        watcher = threading.Thread(target=watch, name="llc-rank-watch", daemon=True)
        watcher.start()
        try:
            value = own()
        except LLCError:
            raise  # the request's fault, alike on every rank: the group stays usable
        except BaseException as exc:  # a collective broke (a rank died) or a bug: the group is unusable
            _exit(f"rank 0 of this ZeRO-3 chain failed ({type(exc).__name__}: {_oneline(exc)})")
        finally:
            finished.set()
        ray.get(calls)
        return value

    # -- test hooks ------------------------------------------------------------
    def set_test_options(self, *, noise: bool = True, record_moves: bool = False, anchor: str = "auto") -> None:
        ray.get([f.set_test_options.remote(noise=noise, record_moves=record_moves, anchor=anchor)
                 for f in self._followers])
        super().set_test_options(noise=noise, record_moves=record_moves, anchor=anchor)

    def moves(self) -> list[Any]:
        """Per rank, w - w* of its flat partition at the end of the last chain (record_moves=True)."""
        return [super().moves(), *ray.get([f.moves.remote() for f in self._followers])]


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _exit(why: str) -> None:
    print(f"{why}; exiting so the pool retries the chain on a new group", file=sys.stderr, flush=True)
    os._exit(1)
