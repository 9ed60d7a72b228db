"""Observables during sampling: per-example losses of fixed example sets at the chain's weights.

    observer = ObservableRecorder({"code": code_batches, "legal": legal_batches},
                                  loss_fn=per_token_loss, every=2)
    result = estimate_llc(model, loss_fn, batches, config, observer=observer)
    observer.losses()["code"]   # (chains, records, examples, tokens), numpy float32

Every `every`-th draw, each chain evaluates `loss_fn(model, batch)` (per-example losses:
shape (batch,) or (batch, tokens)) on every batch of every set, at the chain's current
weights w_t (the weights of that draw's loss L_m(w_t), before the step). The values go
into a preallocated device buffer, and are copied to the host in blocks when the engine
fetches its own draw losses (every `fetch_every` steps): no host synchronisation per
draw. No Ray or gRPC here.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cluster.engine.estimate import _to_device

PerExampleLoss = Callable[[torch.nn.Module, Any], torch.Tensor]


class ObservableRecorder:
    """Records per-example losses of named example sets every `every`-th draw of each chain.

    Args:
        sets: name → a sequence of batches (evaluated in order, the same examples at every
            record; keep them small: they are evaluated at every record).
        loss_fn: `loss_fn(model, batch)` → per-example losses, shape (batch,) or (batch, tokens).
        every: record at draws 0, every, 2·every, ... of each chain.
        granularity: "token" keeps what loss_fn returns; "sequence" averages a
            (batch, tokens) result over tokens on the device.

    Thread-safe: chains run concurrently (estimate_llc(workers > 1)) each get their own buffers.
    """

    def __init__(self, sets: Mapping[str, Sequence[Any]], *, loss_fn: PerExampleLoss, every: int = 1,
                 granularity: str = "token") -> None:
        if not sets:
            raise ValueError("give at least one observable set")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if granularity not in ("token", "sequence"):
            raise ValueError(f"granularity must be 'token' or 'sequence', got {granularity!r}")
        self.sets = {name: list(batches) for name, batches in sets.items()}
        self.loss_fn = loss_fn
        self.every = every
        self.granularity = granularity
        self._lock = threading.Lock()
        self._chains: dict[int, dict[str, np.ndarray]] = {}
        self._draws: dict[int, np.ndarray] = {}

    def records(self, draws: int) -> int:
        """Records per chain of `draws` draws."""
        return -(-draws // self.every)

    def chain(self, chain: int, *, draws: int, device: torch.device, amp: str) -> "ChainRecorder":
        return ChainRecorder(self, chain, draws, device, amp)

    def _store(self, chain: int, values: dict[str, np.ndarray], draws: np.ndarray) -> None:
        with self._lock:
            self._chains[chain] = values
            self._draws[chain] = draws

    def chains(self) -> list[int]:
        return sorted(self._chains)

    def losses(self, chains: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """name → (chains, records, examples[, tokens]) for the chains recorded (default: all, sorted).

        Chains that stopped early (diverged) recorded fewer draws: only the records every
        chosen chain has are kept."""
        which = self.chains() if chains is None else list(chains)
        if not which:
            return {}
        keep = min(self._draws[c].size for c in which)
        return {name: np.stack([self._chains[c][name][:keep] for c in which]) for name in self.sets}

    def draw_indices(self, chain: int) -> np.ndarray:
        """Indices (among the chain's draws) of its records."""
        return self._draws[chain]

    def chain_losses(self, chain: int) -> dict[str, np.ndarray]:
        return self._chains[chain]


class ChainRecorder:
    """One chain's device buffers; the engine calls `on_draw`, `fetch` and `close`."""

    def __init__(self, owner: ObservableRecorder, chain: int, draws: int, device: torch.device, amp: str) -> None:
        self.owner, self.chain, self.device, self.amp = owner, chain, device, amp
        self.capacity = owner.records(draws)
        self._buffers: dict[str, torch.Tensor] = {}
        self._host: dict[str, np.ndarray] = {}
        self._draw = 0  # draws seen
        self._done = 0  # records written to the device buffers
        self._fetched = 0  # records copied to the host
        self._batches = {name: [_to_device(b, device) for b in batches] for name, batches in owner.sets.items()}

    def _autocast(self):
        if self.amp == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=getattr(torch, self.amp))

    @torch.no_grad()
    def on_draw(self, model: torch.nn.Module) -> None:
        """At a draw, before the step: record if this draw is an every-th one."""
        k = self._draw
        self._draw += 1
        if k % self.owner.every or self._done >= self.capacity:
            return
        with self._autocast():
            for name, batches in self._batches.items():
                parts = []
                for batch in batches:
                    value = self.owner.loss_fn(model, batch).detach().float()
                    if self.owner.granularity == "sequence" and value.dim() > 1:
                        value = value.mean(dim=tuple(range(1, value.dim())))
                    parts.append(value)
                row = torch.cat(parts, dim=0)
                buf = self._buffers.get(name)
                if buf is None:  # shape known at the first record
                    buf = self._buffers[name] = torch.zeros((self.capacity, *row.shape), dtype=torch.float32,
                                                            device=self.device)
                buf[self._done].copy_(row)
        self._done += 1

    def fetch(self) -> None:
        """Copy the records made since the last fetch to the host (one transfer per set)."""
        if self._done == self._fetched:
            return
        block = slice(self._fetched, self._done)
        for name, buf in self._buffers.items():
            host = self._host.get(name)
            if host is None:
                host = self._host[name] = np.zeros(tuple(buf.shape), dtype=np.float32)
            host[block] = buf[block].cpu().numpy()
        self._fetched = self._done

    def close(self) -> None:
        """Final fetch; hands this chain's records to the recorder."""
        self.fetch()
        values = {name: self._host[name][: self._fetched] if name in self._host else np.zeros((0,), np.float32)
                  for name in self.owner.sets}
        draws = np.arange(self._fetched) * self.owner.every
        self._buffers.clear()
        self.owner._store(self.chain, values, draws)
