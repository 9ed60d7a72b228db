"""bench/load_test.py, smaller: a real `llc serve` (local Ray, SQLite file) with a fake driver,
concurrent asyncio clients; every estimate ends, none is lost or duplicated, watches run in seq
order. The full run (1000 estimates, 50 clients) is `python bench/load_test.py`."""
import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_test_module():
    spec = importlib.util.spec_from_file_location("llc_load_test", ROOT / "bench" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_checks_catch_lost_duplicated_and_out_of_order_estimates():
    bench = load_test_module()
    ok = lambda rid, eid: bench.Outcome(rid, eid, state="SUCCEEDED", seqs=[-1, 0, 0, 1, 2],  # noqa: E731
                                        kinds=["snapshot", "started", "snapshot", "chain", "snapshot"])
    good = [ok("r0", "e0"), ok("r1", "e1")]
    assert bench.check(good, ["e1", "e0"], 2) == []
    assert "1 missing" in bench.check(good, ["e0"], 2)[0]
    assert "listed twice" in bench.check(good, ["e0", "e1", "e1"], 2)[0]
    assert "1 distinct estimates" in bench.check([ok("r0", "e0"), ok("r1", "e0")], ["e0"], 2)[0]
    backwards = ok("r0", "e0")
    backwards.seqs = [2, 0, 1, 2, 2]
    assert "watch seqs" in bench.check([backwards, good[1]], ["e0", "e1"], 2)[0]
    repeated = ok("r0", "e0")
    repeated.seqs, repeated.kinds = [0, 0, 1, 2], ["started", "started", "chain", "snapshot"]
    assert "missing or repeated" in bench.check([repeated, good[1]], ["e0", "e1"], 2)[0]
    assert bench.percentile([float(i) for i in range(1, 101)], 99) == 99.0


@pytest.mark.slow
def test_a_small_load_run_accounts_for_every_estimate(tmp_path):
    bench = load_test_module()
    report = asyncio.run(bench.run_load(estimates=24, clients=6, timeout=600, workdir=str(tmp_path)))
    assert report["problems"] == [], report["problems"]
    assert report["states"] == {"SUCCEEDED": 24} and len({o["estimate_id"] for o in report["outcomes"]}) == 24
    assert report["throughput_per_s"] > 0 and report["create_latency_ms"]["p99"] >= report["create_latency_ms"]["p50"]
    assert "no estimate was unfinished" in (tmp_path / "serve.log").read_text()  # stopped for good, Ray too
