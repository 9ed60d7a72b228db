"""Per-chain seeds: numpy only, so the driver names a failed chain's seed without loading torch."""
from __future__ import annotations

import numpy as np


def chain_seed(seed: int, chain: int) -> int:
    """Per-chain seed from (job seed, chain index) only, whatever the placement."""
    return int(np.random.SeedSequence([seed, chain]).generate_state(2, dtype=np.uint64)[0] % (2**63))
