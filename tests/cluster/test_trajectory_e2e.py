"""LLC trajectories end to end: a real llc.v1 server on 127.0.0.1, a real local Ray cluster, the real
driver over tiny local checkpoints, SQLite; the unit cache; a bad checkpoint among good ones."""
from __future__ import annotations

import math
import shutil

import pytest

from testbeds.tiny import make_tiny_lm
from llc import Client, trajectories
from llc.cli import main as cli
from service.config import ServerConfig
from service.server import BackgroundServer

pytestmark = pytest.mark.slow

# Explicit settings: no calibration pilots (tests/engine/test_calibration.py covers those).
SMALL = dict(chains=2, draws=10, context_length=16, batch_size=4, step_size=1e-3, nbeta=10.0, burn_in=0)
RESTRICTIONS = ["full=all", "layer0=layer:0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    dirs = {step: str(make_tiny_lm(root / f"step{step}", "gpt_neox", seed=i)) for i, step in enumerate((10, 100, 1000, 10000))}
    bad = root / "step50"  # passes submission (it has a config.json) but holds no weights
    bad.mkdir()
    shutil.copy(root / "step10" / "config.json", bad / "config.json")
    dirs[50] = str(bad)
    return dirs


@pytest.fixture
def server(ray_head, tmp_path):
    s = BackgroundServer(ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "jobs.sqlite"),
                                      ray_dashboard_url=ray_head.dashboard_url)).start()
    yield s
    s.stop()


def ray_submissions(ray_head) -> set[str]:
    from ray.job_submission import JobSubmissionClient

    return {j.submission_id for j in JobSubmissionClient(ray_head.dashboard_url).list_jobs()}


def test_trajectory_cache_and_a_bad_checkpoint(server, ray_head, checkpoints, text_jsonl, tmp_path):
    client = Client(server.address, client_id="traj")
    first = [(s, checkpoints[s]) for s in (10, 50, 100, 1000)]
    est = client.submit(None, str(text_jsonl), checkpoints=first, restrictions=RESTRICTIONS, **SMALL)
    done = client.wait(est.id, timeout=400)
    assert done.state == "SUCCEEDED", done.error_message
    r = done.result
    assert r.is_trajectory and [c.step for c in r.checkpoints] == [10, 50, 100, 1000]
    by_step = {c.step: c for c in r.checkpoints}
    bad = by_step[50]
    assert bad.status == "failed" and "NOT_FOUND" in bad.message and "no weights" in bad.message
    assert any("step50" in w and "failed" in w for w in r.warnings)
    for step in (10, 100, 1000):
        c = by_step[step]
        assert c.status == "succeeded", f"step {step}: {c.status}: {c.message}"
        assert c.identity.startswith("sha256:") and len(c.identity) == 71
        assert [x.name for x in c.restrictions] == ["full", "layer0"] and not c.cached_restrictions
    assert len({by_step[s].identity for s in (10, 100, 1000)}) == 3
    curve = r.trajectory("full")
    assert curve.steps == [10, 50, 100, 1000]
    assert math.isnan(curve.llc[1]) and all(math.isfinite(curve.llc[i]) for i in (0, 2, 3))
    assert all(math.isfinite(p["llc_sem"]) for p in curve.points if p["step"] != 50)
    assert r.stage_detection["library"] == "ruptures" and r.stage_detection["min_confidence"] == 0.95
    frame = r.to_dataframe()
    assert len(frame) == 8 and set(frame["restriction"]) == {"full", "layer0"}
    assert frame[frame.step == 100]["llc_mean"].notna().all()
    png = r.plot_trajectories(str(tmp_path / "curves.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert {c["step"]: c["chains_total"] for c in done.progress.checkpoints} == {10: 4, 50: 4, 100: 4, 1000: 4}

    # The same trajectory without the bad checkpoint: every unit is stored, so no Ray job starts.
    good = [(s, checkpoints[s]) for s in (10, 100, 1000)]
    before = ray_submissions(ray_head)
    again = client.wait(client.submit(None, str(text_jsonl), checkpoints=good, restrictions=RESTRICTIONS,
                                      **SMALL).id, timeout=60)
    assert again.state == "SUCCEEDED" and again.ray_submission_id == ""
    assert ray_submissions(ray_head) == before
    assert sorted(again.result.cached_units) == sorted((s, n) for s in (10, 100, 1000) for n in ("full", "layer0"))
    for c in again.result.checkpoints:
        assert c.cached_restrictions == ["full", "layer0"]
        first_run = {x.name: x.llc_mean for x in by_step[c.step].restrictions}
        assert {x.name: x.llc_mean for x in c.restrictions} == first_run

    # One checkpoint more: only its units run; the others come from the cache.
    more = client.wait(client.submit(None, str(text_jsonl), checkpoints=good + [(10000, checkpoints[10000])],
                                     restrictions=RESTRICTIONS, **SMALL).id, timeout=300)
    assert more.state == "SUCCEEDED", more.error_message
    assert more.ray_submission_id
    progress = {c["step"]: c for c in more.progress.checkpoints}
    assert progress[10000]["chains_total"] == 4 and all(progress[s]["chains_total"] == 0 for s in (10, 100, 1000))
    assert {c.step: c.cached_restrictions for c in more.result.checkpoints} == {
        10: ["full", "layer0"], 100: ["full", "layer0"], 1000: ["full", "layer0"], 10000: []}
    assert len(more.result.trajectory("layer0").points) == 4

    # The cache turned off: every unit runs again (through the CLI, which also writes the plot).
    plot = tmp_path / "cli.png"
    args = ["estimate", "--address", server.address, "--dataset", str(text_jsonl), "--quiet", "--no-cache",
            "--trajectory-plot", str(plot), "--checkpoint", f"10={checkpoints[10]}"]
    for k, v in SMALL.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    assert cli(args) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_automatic_settings_are_calibrated_once_and_shared(server, checkpoints, text_jsonl):
    """ε, nβ and burn-in left to the product: the pilots run at the named checkpoint only (it runs
    first), and every checkpoint's chains run at the settings chosen there."""
    client = Client(server.address, client_id="traj-auto")
    auto = dict(chains=2, draws=30, context_length=16, batch_size=4)  # no step_size, nbeta or burn_in
    named = [(s, checkpoints[s]) for s in (10, 100, 1000)]
    est = client.submit(None, str(text_jsonl), checkpoints=named, restrictions=["full=all"], calibrate_at_step=100,
                        use_cache=False, **auto)
    done = client.wait(est.id, timeout=400)
    assert done.state == "SUCCEEDED", done.error_message
    r = done.result
    assert r.calibration_checkpoint["step"] == 100
    by_step = {c.step: c.restrictions[0] for c in r.checkpoints}
    assert all(c.status == "succeeded" for c in r.checkpoints), [(c.step, c.message) for c in r.checkpoints]
    chosen = {s: (x.config["step_size"], x.config["nbeta"], x.config["burn_in"]) for s, x in by_step.items()}
    assert len(set(chosen.values())) == 1, chosen  # one set of settings for the whole curve
    step_size, nbeta, _ = chosen[100]
    cal = by_step[100].calibration
    assert cal["pilots"] and sum(p["chosen"] for p in cal["pilots"]) == 1
    assert cal["step_size"] == pytest.approx(step_size) and cal["nbeta"] == pytest.approx(nbeta)
    for s in (10, 1000):  # the record of where the settings came from, not pilots of their own
        assert by_step[s].calibration["step_size"] == pytest.approx(step_size)
    assert "calibrated at checkpoint step100 (step 100) and reused" in trajectories.table(r)
