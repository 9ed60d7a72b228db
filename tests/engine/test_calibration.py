"""The product chooses its own settings, and its diagnostics catch a wrong ε: regular
models where λ = d/2 is known (logistic regression d = 20, n = 20,000; linear
regression with a masked subset of weights). CPU, one intra-op thread."""
import math

import numpy as np
import pytest
import torch

from cluster.contract.sampler import SamplerConfig

from cluster.engine.estimate import estimate_llc
from cluster.engine.calibrate import choose, nbeta_rule, plan_pilots
from cluster.engine.result import ChainResult


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: more threads only oversubscribe a loaded machine
    yield
    torch.set_num_threads(threads)


def logistic_at_mle(d=20, n=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.randn(d, generator=g,
                                                                                            dtype=torch.float64))).double()
    v = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ v, y)
        loss.backward()
        return loss

    opt.step(closure)
    model = torch.nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(v.detach()[None].float())
    x, y = x.float(), y.float()
    return model, [(x[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)]


def bce(model, batch):
    x, y = batch
    return torch.nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y)


@pytest.fixture(scope="module")
def logistic():
    return logistic_at_mle()


GOOD_EPS = 4.95e-5  # the largest pilot that passes below (ε·nβ = 0.1); the chosen ε is refined up from it


@pytest.mark.slow
def test_logistic_regression_all_automatic_is_within_10_percent_of_d_over_2(logistic):
    model, batches = logistic
    result = estimate_llc(model, bce, batches, SamplerConfig(draws=1000))
    cal = result.calibration
    assert result.config.nbeta == pytest.approx(nbeta_rule(20_000))
    # the largest passing pilot, refined towards the next (too large) one where its failed checks cross
    chosen = next(p for p in cal["pilots"] if p["chosen"])
    assert chosen["step_size"] == pytest.approx(GOOD_EPS, rel=0.01), cal["pilots"]
    assert GOOD_EPS <= result.config.step_size < GOOD_EPS * 10 ** 0.5, cal["step_size_reason"]
    assert result.llc_mean == pytest.approx(10.0, rel=0.10), (result.llc_mean, result.warnings)
    assert not result.warnings, result.warnings
    assert cal["cost"]["fraction"] <= 1 / 3 + 0.01
    verdicts = [p["verdict"] for p in cal["pilots"]]
    assert verdicts[-1] == "too large" and sum(p["chosen"] for p in cal["pilots"]) == 1


@pytest.mark.parametrize(
    "factor,cause",
    [(10.0, "minibatch gradient noise"), (3.0, "hotter"), (0.1, "have not spread"), (0.01, "have not spread"),
     (1.0, None)],
    ids=["10x-too-large", "3x-too-large", "10x-too-small", "100x-too-small", "good"],
)
def test_a_wrong_step_size_is_named_in_a_warning(logistic, factor, cause):
    model, batches = logistic
    config = SamplerConfig(step_size=GOOD_EPS * factor, burn_in=50, draws=300, chains=4)
    result = estimate_llc(model, bce, batches, config)
    if cause is None:
        assert not result.warnings, result.warnings
        assert result.llc_mean == pytest.approx(10.0, rel=0.2)
    else:
        named = [w for w in result.warnings if cause in w]
        assert named, result.warnings
        assert "step_size" in named[0]  # says what to change


def test_linear_regression_with_a_masked_subset_all_automatic():
    """y = Wx + noise, W 8×10, only 40 of its 80 weights move (a checkerboard mask): λ = 40/2."""
    g = torch.Generator().manual_seed(0)
    n, d_in, d_out = 5000, 10, 8
    x = torch.randn(n, d_in, generator=g)
    y = x @ torch.randn(d_in, d_out, generator=g) + torch.randn(n, d_out, generator=g)
    model = torch.nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    mask = (torch.arange(d_out)[:, None] + torch.arange(d_in)[None, :]) % 2 == 0
    batches = [(x[i:i + 100], y[i:i + 100]) for i in range(0, n, 100)]

    def loss(m, b):
        xb, yb = b
        return 0.5 * ((m(xb) - yb) ** 2).sum(dim=1).mean()

    result = estimate_llc(model, loss, batches, SamplerConfig(draws=600), params={"weight": mask})
    assert result.moving_elements == 40
    assert result.llc_mean == pytest.approx(20.0, rel=0.10), (result.llc_mean, result.calibration["pilots"])
    assert not result.warnings, result.warnings


def test_user_nbeta_far_from_the_rule_is_named():
    model = torch.nn.Linear(3, 1)
    x = torch.randn(2000, 3)
    batches = [(x[i:i + 100], x[i:i + 100, :1]) for i in range(0, 2000, 100)]

    def loss(m, b):
        return ((m(b[0]) - b[1]) ** 2).mean()

    result = estimate_llc(model, loss, batches, SamplerConfig(nbeta=10.0, step_size=1e-4, burn_in=10, draws=40, chains=2))
    assert any("nbeta = 10 is" in w and "n/log n" in w for w in result.warnings), result.warnings


def test_pilot_plan_costs_a_third_and_the_choice_rests_on_the_checks():
    config = SamplerConfig(draws=1000, chains=4)
    plan = plan_pilots(config, nbeta=1000.0)
    assert plan.cost_steps <= config.chains * config.draws / 3
    assert len(plan.grid) == 9 and plan.grid[0] < plan.grid[-1]
    assert {plan.config_for(k).step_size for k in range(9)} == set(plan.grid)

    def pilot(k, mala, diverged=False):
        return ChainResult(chain=k, seed=k, llc=1.0, status="diverged" if diverged else "succeeded",
                           loss_trace=[1.0 + 0.01 * (i % 3) for i in range(plan.steps)],
                           init_trace=[1.0] * plan.steps, mala_acceptance=mala, gradient_noise=0.01)

    results = [pilot(k, 0.99 - 0.05 * k, diverged=k == 8) for k in range(9)]
    cal = choose(plan, results)
    chosen = [p for p in cal["pilots"] if p["chosen"]][0]
    assert chosen["step_size"] == plan.grid[3]  # MALA 0.84; the next one (0.79) is below the target
    assert cal["pilots"][8]["verdict"] == "diverged" and cal["pilots"][4]["verdict"] == "too large"
    assert not math.isnan(cal["cost"]["fraction"])


def test_calibration_reaches_the_sdk_table_and_plot(tmp_path):
    """The engine's record → proto (service.convert) → SDK: the CLI's table and the λ̂-vs-ε PNG."""
    from llc.results import EstimateResult
    from service.convert import result_from_dict

    plan = plan_pilots(SamplerConfig(draws=300, chains=2), nbeta=500.0)
    pilots = [ChainResult(chain=k, seed=k, llc=1.0, loss_trace=[1.0 + 0.002 * (k + 1) + 0.001 * (i % 2)
                                                                  for i in range(plan.steps)],
                          init_trace=[1.0] * plan.steps, mala_acceptance=0.99 - 0.05 * k, gradient_noise=0.01)
              for k in range(len(plan.grid))]
    record = {**choose(plan, pilots), "nbeta": 500.0, "nbeta_rule": {"source": "rule", "sample_size": 3000}}
    doc = {"restrictions": [{"name": "full", "llc_mean": 1.0, "calibration": record, "diagnostics": {"trend_t": 0.5}}]}
    result = EstimateResult.from_proto(result_from_dict(doc))
    table = result.calibration_table()
    assert "nβ = 500 (rule, n = 3000)" in table and table.count("← chosen") == 1 and "too large" in table
    png = result.plot_calibration(str(tmp_path / "calibration.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_chosen_step_moves_up_to_where_the_failed_check_crosses_its_target():
    """Between the largest passing pilot (MALA 0.9) and the next (0.7, too large), ε moves to the
    log-linear crossing of 0.8 (halfway); a next pilot that diverged leaves ε on the grid."""
    plan = plan_pilots(SamplerConfig(draws=1000, chains=4), nbeta=1000.0)

    def pilot(k, mala, diverged=False):
        return ChainResult(chain=k, seed=k, llc=1.0, status="diverged" if diverged else "succeeded",
                           loss_trace=[1.0 + 0.01 * (i % 3) for i in range(plan.steps)],
                           init_trace=[1.0] * plan.steps, mala_acceptance=mala, gradient_noise=0.01)

    accepts = [0.99, 0.97, 0.95, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3]
    cal = choose(plan, [pilot(k, m) for k, m in enumerate(accepts)])
    assert cal["step_size"] == pytest.approx(math.sqrt(plan.grid[3] * plan.grid[4]))
    assert "refined" in cal["step_size_reason"]
    cal = choose(plan, [pilot(k, m, diverged=k >= 4) for k, m in enumerate(accepts)])
    assert cal["step_size"] == plan.grid[3]


def test_a_pilot_rising_at_t_between_2_and_3_reads_too_small_and_lengthens_the_burn_in():
    """A pilot starts at w* and can only fail by still rising, so its trend test is one-sided at t > 2:
    t = 2.5 read "ok" before (the two-sided 3) and the main run burnt in only MSER's 50 steps."""
    from cluster.engine.diagnostics import half_trend

    plan = plan_pilots(SamplerConfig(draws=1000, chains=4), nbeta=1000.0)
    rng = np.random.default_rng(0)
    for _ in range(100):  # a noisy rise whose last-half trend reads between 2 and 3
        signal = 1.5 * np.linspace(0, 1, plan.steps) + rng.standard_normal(plan.steps)
        if 2.2 < half_trend(signal[None, plan.steps // 2:]) < 2.8:
            break
    trace = (1.0 + signal / 1000.0).tolist()
    pilots = [ChainResult(chain=k, seed=k, llc=1.0, loss_trace=trace, init_trace=[1.0] * plan.steps,
                          mala_acceptance=0.99 - 0.05 * k, gradient_noise=0.01) for k in range(9)]
    cal = choose(plan, pilots)
    chosen = next(p for p in cal["pilots"] if p["chosen"])
    assert 2 < chosen["trend_t"] < 3 and chosen["verdict"] == "too small", chosen
    assert chosen["step_size"] == plan.grid[3]  # still a candidate: a short pilot, not a wrong ε
    assert cal["burn_in"] >= plan.steps


@pytest.mark.parametrize("step_size,hot", [(1e-5, True), (2e-6, False)], ids=["1e-5-too-large", "2e-6-good"])
def test_rmsprop_at_too_large_a_step_is_named_though_mala_reads_above_the_old_line(step_size, hot):
    """RMSprop-SGLD with a = 0.1 on the DLN 10-5-10 (λ = 29) at ε = 1e-5: λ̂ ≈ 42-44 (+45-50%) at MALA 0.57
    and τ 0.07-0.09, above MALA's 0.5 line and below τ's 0.1: no warning before. Equipartition reads
    1.11-1.21 there (flat directions only lower it, so > 1.1 is heat) and 0.78-0.85 at ε = 2e-6 (+1-6%)."""
    from testbeds.dln import ShuffledBatches, dln_loss, make_dln, make_dln_data

    model = make_dln((10, 5, 10), 2, seed=0)
    x, y = make_dln_data(model, 10_000, seed=0)
    config = SamplerConfig(method="rmsprop_sgld", rmsprop_eps=0.1, step_size=step_size, burn_in=500, draws=1500,
                           chains=2, fetch_every=500)
    result = estimate_llc(model, dln_loss, ShuffledBatches(x, y, 100), config)
    named = [w for w in result.warnings if "hotter" in w]
    if hot:
        assert result.llc_mean > 1.3 * 29 and named and "step_size" in named[0], (result.llc_mean, result.warnings)
    else:
        assert result.llc_mean == pytest.approx(29, rel=0.15) and not named, (result.llc_mean, result.warnings)
