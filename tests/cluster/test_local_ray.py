"""cluster.local_ray: head and worker nodes as subprocesses on free ports."""
import asyncio
import os
import re
import time

import pytest

from cluster.contract.errors import Unavailable
from cluster.local_ray import free_port, job_api_ready, start_head, start_worker


def test_job_api_ready_is_false_where_nothing_listens():
    assert job_api_ready(f"http://127.0.0.1:{free_port()}") is False


@pytest.mark.slow
def test_head_and_worker_nodes_start_join_and_stop():
    from ray.util.state import list_nodes

    head = start_head(num_cpus=1)
    worker = None
    try:
        assert head.alive() and job_api_ready(head.dashboard_url) and head.address.startswith("127.0.0.1:")
        worker = start_worker(head.address, num_cpus=1, resources={"chain_slot": 2}, temp_dir=head.temp_dir)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            nodes = [n for n in list_nodes(address=head.dashboard_url, detail=True) if n.state == "ALIVE"]
            if len(nodes) == 2:
                break
            time.sleep(0.5)
        assert len(nodes) == 2
        assert any(n.resources_total.get("chain_slot") == 2 for n in nodes)
    finally:
        if worker is not None:
            worker.stop()
        head.stop()
    assert not head.alive() and (worker is None or not worker.alive())
    assert not job_api_ready(head.dashboard_url)
    assert not os.path.exists(head.temp_dir)  # its private temp dir is gone with it


@pytest.mark.slow
def test_a_worker_for_a_head_that_does_not_exist_fails_with_its_log():
    with pytest.raises(Unavailable, match=r"worker node (exited|did not join)"):
        start_worker(f"127.0.0.1:{free_port()}", num_cpus=1, timeout=15)


@pytest.mark.slow
def test_jobs_run_on_their_own_cluster_when_another_started_later():
    """Ray's job supervisor finds its cluster through <temp dir>/ray/ray_current_cluster; with a
    shared /tmp a job on the first head would connect to the second. Private temp dirs fix that."""
    from ray.job_submission import JobSubmissionClient

    first = start_head(num_cpus=1)
    second = start_head(num_cpus=1)
    try:
        client = JobSubmissionClient(first.dashboard_url)
        sid = client.submit_job(entrypoint="echo RAY_ADDRESS=$RAY_ADDRESS")

        async def logs() -> str:
            return "".join([chunk async for chunk in client.tail_job_logs(sid)])

        text = asyncio.run(logs())
        port = first.address.rsplit(":", 1)[1]
        # the echoed line, not Ray's "Running entrypoint ...: echo RAY_ADDRESS=$RAY_ADDRESS" line
        echoed = re.findall(r"^RAY_ADDRESS=(\S+)$", text, flags=re.MULTILINE)
        assert len(echoed) == 1 and echoed[0].endswith(f":{port}"), text
    finally:
        second.stop()
        first.stop()


def _state(tmp_path, **fields) -> str:
    import json

    path = str(tmp_path / "jobs.sqlite.ray.json")
    base = dict(pid=os.getpid(), create_time=0.0, mark="not-ours", address="127.0.0.1:1",
                dashboard_url=f"http://127.0.0.1:{free_port()}", temp_dir="", owns_temp_dir=True, log_path="")
    with open(path, "w") as f:
        json.dump({**base, **fields}, f)
    return path


def test_adopt_head_clears_the_remains_of_a_dead_head(tmp_path):
    import subprocess
    import tempfile

    from cluster.local_ray import adopt_head

    assert adopt_head(str(tmp_path / "none.json")) is None
    gone = subprocess.Popen(["true"])
    gone.wait()
    temp_dir = tempfile.mkdtemp(prefix="llcray", dir="/tmp")
    path = _state(tmp_path, pid=gone.pid, temp_dir=temp_dir)
    assert adopt_head(path) is None
    assert not os.path.exists(temp_dir) and not os.path.exists(path)


def test_adopt_head_never_takes_a_process_that_is_not_the_recorded_head(tmp_path):
    """A reused pid (here: this test's own process, without the mark) is left alone, and only a
    private llcray* temp dir is ever removed."""
    import psutil

    from cluster.local_ray import adopt_head

    other_dir = tmp_path / "not-a-ray-dir"
    other_dir.mkdir()
    me = psutil.Process()
    path = _state(tmp_path, create_time=me.create_time(), temp_dir=str(other_dir))
    assert adopt_head(path) is None
    assert me.is_running() and other_dir.exists() and not os.path.exists(path)
    with open(path, "w") as f:
        f.write("{not json")
    assert adopt_head(path) is None and not os.path.exists(path)
