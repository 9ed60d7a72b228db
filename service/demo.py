"""`llc demo`: the whole path on one machine, offline.

Starts a local Ray cluster and the server (SQLite), makes a tiny GPT-NeoX model and a
jsonl dataset in a temporary directory, submits an estimate through the SDK (gRPC) with
a live progress bar, prints the result table, and shuts everything down.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from cluster.local_ray import start_head
from service.config import ServerConfig
from service.server import BackgroundServer

# Runs in a child process: the front end itself never imports torch.
MAKE_MODEL = """
import sys
from testbeds.tiny import make_text_dataset, make_tiny_lm
from testbeds.tiny import train_tiny_lm
make_text_dataset(sys.argv[2], 200, seed=0, grammar=True)
make_text_dataset(sys.argv[3], 200, seed=7, grammar=True)
make_tiny_lm(sys.argv[1], "gpt_neox")
# trained, so w* sits near a minimum of the loss: the LLC of random weights means little
print(f"[demo] trained the tiny model: loss {train_tiny_lm(sys.argv[1], sys.argv[2], steps=200):.3f}", flush=True)
"""


def main(*, chains: int = 2, draws: int = 3000, workdir: str = "", num_cpus: int = 2, json_out: str = "") -> int:
    from llc import Client

    t0 = time.monotonic()
    work = workdir or tempfile.mkdtemp(prefix="llc-demo-")
    model, data, other = (os.path.join(work, n) for n in ("tiny-gpt-neox", "train.jsonl", "heldout.jsonl"))
    print(f"[demo] making a tiny GPT-NeoX model and datasets in {work}", flush=True)
    subprocess.run([sys.executable, "-c", MAKE_MODEL, model, data, other], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    print(f"[demo] starting a local Ray cluster ({num_cpus} CPUs)", flush=True)
    # Like `llc serve`'s embedded Ray: every port on 127.0.0.1, and Ray's token auth.
    head = start_head(num_cpus=num_cpus, joinable=False, auth=True)
    os.environ.update(head.auth_env())  # the server's Ray job client reads the token from here
    server = None
    try:
        server = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=os.path.join(work, "jobs.sqlite"),
                                               ray_dashboard_url=head.dashboard_url, allowed_roots=(work,))).start()
        print(f"[demo] llc.v1 server on {server.address}; submitting an estimate over gRPC", flush=True)
        with Client(server.address, client_id="demo") as client:
            result = client.estimate(model, data, chains=chains, draws=draws, context_length=32, batch_size=8,
                                     # step_size, nbeta, burn_in unset: chosen by the product (docs/calibration.md);
                                     # γ = 100 localizes the transformer's flat directions within the demo's steps
                                     gamma=100.0,
                                     restrictions=["full=all", "layer0=layer:0", "head0.1=head:0.1",
                                                   "heldout-data=all@" + other])
        print()
        print(result.table())
        print(result.calibration_table())
        if json_out:
            with open(json_out, "w") as f:
                f.write(result.to_json())
            print(f"[demo] result JSON: {json_out}")
        print(f"[demo] done in {time.monotonic() - t0:.0f} s", flush=True)
        return 0
    finally:
        if server is not None:
            server.stop()
        head.stop()
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)
        print("[demo] server and Ray stopped" + ("" if workdir else "; temporary files removed"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
