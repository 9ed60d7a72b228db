"""cluster.local_ray: head and worker nodes as subprocesses on free ports."""
import asyncio
import os
import re
import time

import pytest

from cluster.errors import Unavailable
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
