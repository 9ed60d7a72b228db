"""The runner's handling of driver logs; and, on a real Ray cluster, drivers that die."""
import json
import stat

import pytest

from cluster.contract.events import encode, parse_lines
from service.runner import LineBuffer


def test_events_split_across_log_chunks_are_reassembled():
    line = encode({"type": "progress", "seq": 3, "payload": "x" * 5000})
    text = "noise\n" + encode({"type": "started", "seq": 0}) + "\n" + line + "\ntail without newline"
    buffer, events = LineBuffer(), []
    for i in range(0, len(text), 7):  # cut everywhere, including inside the JSON
        events += parse_lines(buffer.feed(text[i:i + 7]))
    assert [e["seq"] for e in events] == [0, 3] and len(events[1]["payload"]) == 5000
    assert buffer.flush() == ["tail without newline"] and buffer.flush() == []


def fake_interpreter(path, body: str) -> str:
    """An executable standing in for `python` in `python -m cluster.driver`: a real Ray job
    whose driver behaves badly in a chosen way."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def server_with_driver(ray_head, tmp_path, body: str):
    """A server config whose Ray jobs run `body` as their driver, and a one-line dataset."""
    from service.config import ServerConfig

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "a b"}) + "\n")
    config = ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "j.sqlite"),
                          ray_dashboard_url=ray_head.dashboard_url,
                          driver_python=fake_interpreter(tmp_path / "python", body), check_local_paths=False)
    return config, data


@pytest.mark.slow
@pytest.mark.parametrize("body,fragment", [
    ('echo \'%s\'\necho "Segmentation fault in worker"\nexit 3\n' % encode({"type": "started", "seq": 0, "time": 0,
                                                                             "chains_total": 1, "restrictions": []}),
     "Segmentation fault in worker"),
    ("echo all good\nexit 0\n", "exited without a result"),
])
def test_a_driver_that_dies_without_a_result_fails_the_estimate_with_its_last_lines(
        ray_head, tmp_path, body, fragment):
    from llc import Client
    from service.server import BackgroundServer

    config, data = server_with_driver(ray_head, tmp_path, body)
    with BackgroundServer(config) as server, Client(server.address) as client:
        est = client.submit("org/model", str(data), chains=1, draws=5)
        final = client.wait(est.id, timeout=120)
    assert final.state == "FAILED" and final.error_code == "INTERNAL" and fragment in final.error_message


@pytest.mark.slow
def test_a_driver_error_keeps_its_code_and_partial_result(ray_head, tmp_path):
    from llc import Client
    from llc.errors import EstimateFailed
    from service.server import BackgroundServer
    from tests.service.test_convert import result_document

    partial = result_document()
    lines = [encode({"type": "started", "seq": 0, "time": 0, "chains_total": 2, "restrictions": ["full"]}),
             encode({"type": "error", "seq": 1, "time": 0, "code": "RESOURCE_EXHAUSTED",
                     "message": "1 chain(s) failed after 3 attempts", "partial_result": partial})]
    body = "".join(f"cat <<'EOF'\n{line}\nEOF\n" for line in lines) + "exit 1\n"
    config, data = server_with_driver(ray_head, tmp_path, body)
    with BackgroundServer(config) as server, Client(server.address) as client:
        with pytest.raises(EstimateFailed) as info:
            client.estimate("org/model", str(data), chains=2, draws=5, progress=False, timeout=120)
    final = info.value.estimate
    assert info.value.code == "RESOURCE_EXHAUSTED" and final.state == "FAILED"
    assert final.result is not None and final.result["full"].llc_per_chain[0] == 2.5
