"""The same LLC job on one Ray worker node, then on two: prints the speed-up.

    .venv/bin/python bench/scale_nodes.py                      # 8 chains, 1-CPU nodes
    .venv/bin/python bench/scale_nodes.py --chains 16 --draws 800 --hidden 64 --node-cpus 1

A head node without CPUs (it runs only the driver) plus N equal worker nodes,
all `ray start` subprocesses on this machine (cluster.local_ray). The job is a
tiny GPT-2 estimate submitted as `python -m cluster.driver`; its timeline comes
from the driver's own events:
  load      started -> preview   (the first worker has the model, data and restrictions)
  chains    preview -> result    (every chain; workers load in parallel with the first chains)
Throughput is SGLD steps of all chains per second of the chains phase. On a
2-core machine two 1-CPU nodes against one is the honest comparison: it is what
the hardware can double. Other processes on the machine lower the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.contract.events import parse_lines  # noqa: E402
from cluster.local_ray import start_head, start_worker  # noqa: E402


def make_job(workdir: Path, args: argparse.Namespace) -> dict:
    from testbeds.tiny import make_text_dataset, make_tiny_lm

    model = make_tiny_lm(workdir / "model", "gpt2", hidden=args.hidden, layers=args.layers, max_positions=128)
    data = make_text_dataset(workdir / "train.jsonl", 400, seed=0)
    return {
        "job_id": "bench-scale",
        "model": {"local_path": str(model)},
        "dataset": {"files": [str(data)], "context_length": args.context},
        "sampler": {"chains": args.chains, "draws": args.draws, "step_size": 1e-4, "nbeta": 10.0, "gamma": 100.0,
                    "fetch_every": 50, "seed": 0},
        "restrictions": [{"name": "full"}],
        "batch_size": args.batch_size,
        "compute": {"cpus_per_chain": args.node_cpus},
    }


def run_job(spec: dict, address: str) -> dict:
    env = {**os.environ, "RAY_ADDRESS": address, "LLC_JOB_SPEC": json.dumps(spec), "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled"}
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "cluster.driver"], env=env, capture_output=True, text=True)
    wall = time.time() - start
    events = list(parse_lines(out.stdout.splitlines()))
    if not events or events[-1]["type"] != "result":
        raise SystemExit(f"the job failed: {events[-1:] or out.stderr[-2000:]}")
    t = {e["type"]: e["time"] for e in events if e["type"] in ("started", "preview", "result")}
    r = events[-1]["result"]
    steps = sum(c["steps"] for x in r["restrictions"] for c in x["chains"])
    chains_s = t["result"] - t["preview"]
    return {
        "wall_s": wall, "load_s": t["preview"] - t["started"], "chains_s": chains_s, "steps_per_s": steps / chains_s,
        "nodes": len({c["extra"]["node_id"] for x in r["restrictions"] for c in x["chains"]}),
        "workers": len(r["provenance"]["workers"]), "llc_per_chain": r["restrictions"][0]["llc_per_chain"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--draws", type=int, default=600)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--node-cpus", type=int, default=1, help="CPUs of each worker node (= cpus_per_chain)")
    p.add_argument("--max-nodes", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    workdir = Path(tempfile.mkdtemp(prefix="llcbench"))
    spec = make_job(workdir, args)
    head = start_head(num_cpus=0)  # a private Ray temp dir: no other cluster of this machine interferes
    nodes = []
    rows = []
    try:
        for n in range(1, args.max_nodes + 1):
            nodes.append(start_worker(head.address, num_cpus=args.node_cpus, resources={f"bench_node_{n}": 1},
                                      temp_dir=head.temp_dir))
            time.sleep(2)  # the node's resources reach the cluster view a moment after it joins
            row = run_job(spec, head.address)
            rows.append(row)
            print(f"{n} node(s): {row['workers']} workers on {row['nodes']} node(s); load {row['load_s']:.1f} s, "
                  f"chains {row['chains_s']:.1f} s, {row['steps_per_s']:.0f} SGLD steps/s, wall {row['wall_s']:.1f} s",
                  flush=True)
    finally:
        for node in nodes:
            node.stop()
        head.stop()
    base = rows[0]
    for n, row in enumerate(rows[1:], start=2):
        print(f"speed-up {n} nodes vs 1: chains phase {base['chains_s'] / row['chains_s']:.2f}x, "
              f"whole job {base['wall_s'] / row['wall_s']:.2f}x (target >= 1.8x on two equal nodes)")
        same = row["llc_per_chain"] == base["llc_per_chain"]
        print(f"per-chain λ̂ identical on {n} nodes and on 1: {same}")
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} (other processes lower the ratio)")


if __name__ == "__main__":
    main()
