"""The induction-heads demo runs end to end (tiny settings) and writes its table,
heatmap and results."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

DEMO = Path(__file__).resolve().parents[2] / "examples" / "induction_heads.py"


@pytest.mark.slow  # ~20 s of CPU: trains a model and samples 16 head restrictions
def test_induction_heads_demo_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("induction_heads_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--out", str(tmp_path), "--steps", "10", "--checkpoints", "0", "10", "--chains", "1",
               "--draws", "3", "--burn-in", "0", "--half", "8", "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert "per-head LLC" in out and "LLC @10" in out
    assert (tmp_path / "llc_heads.png").stat().st_size > 1000
    results = json.loads((tmp_path / "results.json").read_text())
    assert [c["step"] for c in results["checkpoints"]] == [0, 10]
    for ckpt in results["checkpoints"]:
        cells = [c for row in ckpt["llc"] for c in row]
        assert len(cells) == 8 and all(math.isfinite(c["mean"]) for c in cells)
        assert all(c["elements"] == 3 * 16 * 64 + 3 * 16 + 64 * 16 for c in cells)  # qkv rows+bias, dense cols
        assert (tmp_path / f"checkpoint-{ckpt['step']}" / "model.safetensors").is_file()
