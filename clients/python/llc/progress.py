"""A live progress bar for an estimate: tqdm when installed, else one updating line on stderr."""
from __future__ import annotations

import math
import sys
from typing import TextIO

from llc.results import Estimate, Event


class ProgressBar:
    def __init__(self, estimate_id: str, stream: TextIO | None = None, enabled: bool = True):
        self._id, self._stream, self._enabled = estimate_id, stream or sys.stderr, enabled
        self._bar = None
        self._total = 0
        self._done: dict[str, int] = {}  # (restriction|chain) → step
        self._lengths: dict[str, int] = {}  # (restriction|chain) → its steps, as the chain reports them
        self._steps_per_chain = 0
        self._chains = 0
        self._state = "QUEUED"
        self._llc: dict[str, float] = {}

    def update(self, event: Event) -> None:
        if event.kind == "snapshot" and event.estimate is not None:
            est: Estimate = event.estimate
            self._state = est.state
            self._total = est.progress.steps_total
            if est.progress.chains_total:
                self._chains = est.progress.chains_total
                self._steps_per_chain = self._steps_per_chain or est.progress.steps_total // est.progress.chains_total
            if est.is_terminal and est.state == "SUCCEEDED":
                self._done = {"all": self._total}
            self._llc.update({k: v for k, v in est.progress.llc_running.items() if math.isfinite(v)})
        elif event.kind == "progress":
            d = event.data
            key = f"{d['restriction']}|{d['chain']}"
            self._done[key] = int(d["step"])
            if d.get("total_steps"):  # an automatic burn-in is known only once calibrated
                self._lengths[key] = int(d["total_steps"])
            if isinstance(d.get("llc_running"), (int, float)) and math.isfinite(d["llc_running"]):
                self._llc[f"{d['restriction']}/{d['chain']}"] = d["llc_running"]
            self._state = "RUNNING"
        elif event.kind == "chain" and event.data.get("state") in ("CHAIN_STATE_SUCCEEDED", "CHAIN_STATE_DIVERGED",
                                                                    "CHAIN_STATE_FAILED"):
            key = f"{event.data['restriction']}|{event.data['chain']}"
            self._done[key] = self._lengths.get(key, self._steps_per_chain)
        elif event.kind == "started":
            self._state = "RUNNING"
        self._render()

    def _render(self) -> None:
        if not self._enabled:
            return
        if self._lengths and self._chains:  # chains that reported their length count with it: never backwards
            self._total = max(self._total, sum(self._lengths.values())
                              + max(0, self._chains - len(self._lengths)) * self._steps_per_chain)
        done = min(sum(self._done.values()), self._total) if self._total else 0
        llc = ""
        if self._llc:
            values = list(self._llc.values())
            llc = f"llc~{sum(values) / len(values):.3g}"
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            if self._bar is None:
                self._bar = tqdm(total=self._total or None, desc=self._id, unit="step", file=self._stream,
                                 dynamic_ncols=True)
            if self._total and self._bar.total != self._total:
                self._bar.total = self._total
            self._bar.n = done
            self._bar.set_postfix_str(f"{self._state} {llc}".strip(), refresh=False)
            self._bar.refresh()
        else:
            pct = 100.0 * done / self._total if self._total else 0.0
            self._stream.write(f"\r{self._id} {self._state:<9} {pct:5.1f}% {done}/{self._total} steps {llc}   ")
            self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            self._stream.write("\n")
            self._stream.flush()
