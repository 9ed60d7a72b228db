"""L(w*) of every row of the sampling set, so a draw's L_m(w*) is a lookup, not a forward.

Every draw pairs L_m(w_t) with L_m(w*) on the same batch (the paired signal of λ̂ and of
the diagnostics). Evaluated directly that is a no-grad forward at w* per draw, about a
quarter of a step. But w* never moves, so the loss at w* of any row is a constant: one
no-grad pass over the sampling set fills a table, and a draw's L_m(w*) is the mean of its
rows' entries, gathered on the device (no forward, no host synchronisation).

Rows are found by their content: a 62-bit hash of every tensor of the batch, row by row
(two independent linear hashes modulo a prime), so batches may shuffle and re-batch freely.
Rows of equal content share an entry, rightly: their losses are equal. A row that is not in
the table (a sampling set that changed between passes) is counted on the device and fails
the chain at its next fetch instead of giving a wrong λ̂.

What it needs (`applicable`): `loss_fn.per_row(model, batch)` → the loss of each row, shape
(rows,), whose mean is `loss_fn(model, batch)` (every row weighs the same: a per-example
loss, or a per-token one over rows of equal length); and batches whose one pass shows every
row the chains can draw: a list or tuple of batches, or an object with `every_row()`
returning such an iterable (cluster.datasets.TokenBatches). Worth it (`worth_building`)
when the pass costs no more forwards than the draws would: cumulatively over the chains a
worker runs, which bounds the cost at twice the better choice even when the number of
chains is not known ahead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch.utils import _pytree as pytree

_PRIME = 2**31 - 1
_SEED = 0x5EED  # the hash's coefficients: fixed, so a table and the steps agree across processes
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def row_source(batches: Any) -> Iterable | None:
    """An iterable whose one pass holds every row of `batches`, or None where none is known."""
    if isinstance(batches, (list, tuple)):
        return batches
    every_row = getattr(batches, "every_row", None)
    return every_row() if callable(every_row) else None


def applicable(loss_fn: Callable, batches: Any) -> str | None:
    """Why an anchor table cannot serve these chains, or None."""
    if not callable(getattr(loss_fn, "per_row", None)):
        return "loss_fn has no per_row(model, batch) giving each row's loss"
    if row_source(batches) is None:
        return "the batches are not a list and have no every_row() pass"
    return None


def worth_building(batches: Any, paired_steps: int) -> bool:
    """Whether one pass over the rows costs no more forwards than `paired_steps` draws' L_m(w*)."""
    source = row_source(batches)
    try:
        passes = len(source)
    except TypeError:
        return False
    return passes <= paired_steps


class RowHasher:
    """Row keys of a batch: every tensor leaf flattened per row, its values (float bits as
    integers) hashed by two random linear forms modulo a prime, the leaves combined in order."""

    def __init__(self) -> None:
        self._coefficients: dict[tuple[int, int, str], torch.Tensor] = {}

    def _coeffs(self, leaf: int, width: int, device: torch.device) -> torch.Tensor:
        key = (leaf, width, str(device))
        if key not in self._coefficients:
            g = torch.Generator().manual_seed(_SEED + 1_000_003 * leaf + width)
            self._coefficients[key] = torch.randint(1, _PRIME, (2, width), generator=g, dtype=torch.int64).to(device)
        return self._coefficients[key]

    def __call__(self, batch: Any) -> torch.Tensor:
        leaves = [x for x in pytree.tree_leaves(batch) if isinstance(x, torch.Tensor)]
        if not leaves:
            raise TypeError("a batch without tensors has no rows to look up")
        rows = leaves[0].shape[0]
        h = torch.zeros(2, rows, dtype=torch.int64, device=leaves[0].device)
        for i, x in enumerate(leaves):
            if x.shape[:1] != (rows,):
                raise TypeError(f"batch tensors disagree on the number of rows ({rows} and shape {tuple(x.shape)})")
            flat = x.detach().reshape(rows, -1)
            if flat.dtype.is_floating_point or flat.dtype.is_complex:
                flat = flat.contiguous().view(_INT_VIEW[flat.element_size()])
            values = flat.to(torch.int64).remainder(_PRIME)
            c = self._coeffs(i, values.shape[1], values.device)
            for j in range(2):  # each product < 2^62 is reduced before the sum: < 2^32 terms stay in int64
                leaf = (values * c[j]).remainder_(_PRIME).sum(-1).remainder_(_PRIME)
                h[j] = (h[j] * 1_000_003 + leaf).remainder_(_PRIME)
        return h[0] * _PRIME + h[1]


class AnchorTable:
    """L(w*) per row (sorted by row key) and the draws' lookups, with a device-side miss count."""

    def __init__(self, keys: torch.Tensor, losses: torch.Tensor, hasher: RowHasher | None = None):
        order = torch.argsort(keys)
        self.keys = keys[order]
        self.losses = losses[order]
        self._hash = hasher or RowHasher()

    @classmethod
    @torch.no_grad()
    def build(cls, model: torch.nn.Module, loss_fn: Callable, batches: Any, *, amp: str = "float32") -> "AnchorTable":
        """One no-grad pass over every row at the model's current weights (w*)."""
        from cluster.engine.estimate import _autocast, _to_device

        reason = applicable(loss_fn, batches)
        if reason is not None:
            raise ValueError(f"no anchor table: {reason}")
        device = next(model.parameters()).device
        hasher = RowHasher()
        keys, losses = [], []
        with _autocast(device, amp):
            for batch in row_source(batches):
                batch = _to_device(batch, device)
                losses.append(loss_fn.per_row(model, batch).detach().float().reshape(-1))
                keys.append(hasher(batch))
                if losses[-1].shape != keys[-1].shape:
                    raise ValueError(f"loss_fn.per_row gave {losses[-1].numel()} losses for a batch of "
                                     f"{keys[-1].numel()} rows: it must give one loss per row")
        if not keys:
            raise ValueError("the sampling set is empty: give at least one batch")
        return cls(torch.cat(keys), torch.cat(losses), hasher)

    @property
    def rows(self) -> int:
        return int(self.keys.numel())

    def to(self, device: torch.device) -> "AnchorTable":
        if self.keys.device == device:
            return self
        return AnchorTable(self.keys.to(device), self.losses.to(device), self._hash)

    def batch_loss(self, batch: Any, misses: torch.Tensor) -> torch.Tensor:
        """L_m(w*) of `batch` (its rows' mean); rows not in the table are added to `misses` (a device counter)."""
        return self.chain_losses(batch, misses, chains=None)

    def chain_losses(self, batch: Any, misses: torch.Tensor, chains: int | None) -> torch.Tensor:
        """L_m(w*) per chain of a stacked batch (leading dimension `chains`), or of one batch (None)."""
        if chains is not None:  # (chains, rows, ...) → rows of all chains, then one mean per chain
            batch = pytree.tree_map(lambda x: x.flatten(0, 1) if isinstance(x, torch.Tensor) else x, batch)
        key = self._hash(batch)
        at = torch.searchsorted(self.keys, key).clamp_(max=self.keys.numel() - 1)
        misses += (self.keys[at] != key).sum()
        values = self.losses[at]
        return values.mean() if chains is None else values.view(chains, -1).mean(1)


class AnchorCache:
    """Tables kept between estimate_llc calls at one w* and one sampling set (a worker's dataset).

    A table is only right for the precision it was built at: under autocast, half-precision
    moving weights are upcast while sampling, which changes the loss in its last bits, and
    nβ multiplies that. So tables are kept per `signature` (autocast dtype, memory mode, the
    upcast weights), and the forwards saved are counted across calls (`worth_building`).
    """

    def __init__(self) -> None:
        self.tables: dict[Any, AnchorTable | None] = {}  # None: these batches have no rows to key (forward)
        self.paired_steps = 0

    def table(self, signature: Any, batches: Any, paired_steps: int, build: Callable[[], AnchorTable], *,
              force: bool = False) -> AnchorTable | None:
        """The table for `signature`, built now if `force` or worth it; None: a forward per draw."""
        if signature not in self.tables:
            self.paired_steps += paired_steps
            if not (force or worth_building(batches, self.paired_steps)):
                return None
            try:
                self.tables[signature] = build()
            except (TypeError, ValueError):  # rows that cannot be keyed, or per_row breaking its contract
                if force:
                    raise
                self.tables[signature] = None
        return self.tables[signature]


def check_misses(misses: torch.Tensor) -> None:
    """Raise (at a fetch, where the host syncs anyway) if a draw met a row the table lacks."""
    count = int(misses.sum())
    if count:
        raise RuntimeError(f"{count} rows drawn by the chain were not in the L(w*) table: the sampling set changed "
                           "between passes (batches must hold the same rows on every pass)")
