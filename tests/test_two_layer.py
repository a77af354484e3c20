import numpy as np
import pytest

import flowsolve as fs
from flowsolve.models.activations import ACTIVATIONS

SCALES = fs.Scaling(alpha=3.0, beta1=0.7, beta2=1.6, width=7)


def _problem(activation="relu", asi=False, scaling=SCALES, n=5, d=2, seed=3):
    data = fs.datasets.smooth(n=n, d=d, target="sin", seed=seed)
    model = fs.TwoLayer(width=scaling.width, scaling=scaling, activation=activation, asi=asi)
    return fs.Problem(model, data, seed=seed)


def _fd_gradient(f, y, eps=1e-6):
    g = np.empty_like(y)
    for i in range(y.size):
        e = np.zeros_like(y)
        e[i] = eps
        g[i] = (f(y + e) - f(y - e)) / (2 * eps)
    return g


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("asi", [False, True])
def test_rhs_is_minus_mobility_times_fd_gradient(activation, asi):
    prob = _problem(activation, asi)
    y = prob.y0 + 0.3 * np.random.default_rng(0).standard_normal(prob.size)
    g = _fd_gradient(prob.loss, y)
    mu_a, mu_w = prob.model.mobilities()
    M = prob.model.n_neurons
    expected = -np.concatenate([mu_a * g[:M], mu_w * g[M:]])
    np.testing.assert_allclose(prob.rhs(0.0, y), expected, rtol=1e-6, atol=1e-9)
    # the mobilities are (1/kappa', kappa') whatever the activation
    assert mu_a == pytest.approx(1 / SCALES.kappa_prime) and mu_w == pytest.approx(
        SCALES.kappa_prime)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_and_multiplicity(name):
    act = ACTIVATIONS[name]
    u = np.linspace(-3, 3, 601) + 1e-3  # off the ReLU kink
    fd = (act.sigma(np, u + 1e-6) - act.sigma(np, u - 1e-6)) / 2e-6
    np.testing.assert_allclose(act.dsigma(np, u), fd, atol=1e-7)
    if act.multiplicity is not None and name != "linear":
        # sigma^(k)(0) = 0 for 1 <= k < p and != 0 for k = p (finite differences of sigma')
        h = 1e-2
        ders = [act.dsigma(np, np.array([0.0]))[0]]
        ders.append((act.dsigma(np, np.array([h])) - act.dsigma(np, np.array([-h])))[0] / (2 * h))
        ders.append((act.dsigma(np, np.array([h])) - 2 * act.dsigma(np, np.array([0.0]))
                     + act.dsigma(np, np.array([-h])))[0] / h**2)
        p = act.multiplicity
        assert all(abs(dk) < 1e-3 for dk in ders[: p - 1])
        assert abs(ders[p - 1]) > 0.1


def test_homogeneous_flow_depends_on_kappas_only():
    # ReLU: (alpha, beta1, beta2) and (alpha', beta1', beta2') with equal kappa, kappa'
    a = fs.Scaling(alpha=2.0, beta1=0.5, beta2=0.25, width=7)
    b = fs.Scaling(alpha=2.0 * 9.0, beta1=1.5, beta2=0.75, width=7)
    assert a.kappa == pytest.approx(b.kappa) and a.kappa_prime == pytest.approx(b.kappa_prime)
    pa, pb = _problem(scaling=a), _problem(scaling=b)
    np.testing.assert_allclose(pa.rhs(0, pa.y0), pb.rhs(0, pb.y0), rtol=1e-13)
    # tanh is not homogeneous: the raw flow differs
    ta, tb = _problem("tanh", scaling=a), _problem("tanh", scaling=b)
    assert not np.allclose(ta.rhs(0, ta.y0), tb.rhs(0, tb.y0))


def test_asi_layout_and_zero_output():
    s = fs.Scaling.from_gammas(1.0, 0.0, width=50)
    model = fs.TwoLayer(width=50, scaling=s, asi=True)
    prob = fs.Problem(model, fs.datasets.four_points(), seed=1)
    p = model.unpack(prob.y0)
    assert p["a"].shape == (100,) and p["w"].shape == (100, 2)
    np.testing.assert_array_equal(p["a"][50:], -p["a"][:50])
    np.testing.assert_array_equal(p["w"][50:], p["w"][:50])
    np.testing.assert_allclose(model.predict(prob.y0, prob.data.x), 0.0, atol=1e-15)
    # loss at init is the loss of f = 0
    assert prob.loss(prob.y0) == pytest.approx(np.mean(prob.data.y**2) / 2)


def test_relative_changes_use_first_copy():
    s = fs.Scaling.from_gammas(1.0, 0.0, width=10)
    model = fs.TwoLayer(width=10, scaling=s, asi=True)
    prob = fs.Problem(model, fs.datasets.four_points(), seed=1)
    y = prob.y0.copy()
    p = model.unpack(y)
    p["w"][10:] *= 5.0      # change only the second copy
    assert prob.relative_changes(y)["rd_w"] == 0.0
    p["w"][:10] *= 1.5
    assert prob.relative_changes(y)["rd_w"] == pytest.approx(0.5)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_conservation_law_along_trajectory(activation):
    # kappa'^2 a_k^2 - |w_k|^2 is constant for each neuron along the exact flow.
    # Condensed regime, up to t = 1e5 where the input weights have moved by ~27%
    # (later, neurons slide along kinks and explicit RK chatters: issue 7).
    s = fs.Scaling.from_gammas(gamma=1.75, gamma_prime=0.2, width=200)
    model = fs.TwoLayer(width=200, scaling=s, activation=activation, asi=True)
    prob = fs.Problem(model, fs.datasets.four_points(), seed=0)
    q0 = model.conserved(prob.y0)
    sol = fs.solve(prob, "dopri5", rtol=1e-9, atol=1e-12, t_end=1e5, progress=False)
    assert sol.status is fs.Status.SUCCESS
    assert sol.final["rd_w"] > 0.2  # the weights really moved
    assert np.max(np.abs(model.conserved(sol.y_final) - q0)) < 1e-9
    # with a loose tolerance the drift is larger: the check can fail
    loose = fs.solve(prob, "bs3", rtol=1e-3, atol=1e-6, t_end=1e5, progress=False)
    assert np.max(np.abs(model.conserved(loose.y_final) - q0)) > 1e-6


def _linearised_loss(prob, times):
    """Loss of the linearised (NTK) flow at init: e(t) = exp(-K t) e0, K = J Mu J^T / n."""
    model, data = prob.model, prob.data
    cf, _, _, s = model.coefficients()
    mu_a, mu_w = model.mobilities()
    p = model.unpack(prob.y0)
    xt = data.x_tilde()
    pre = s * p["w"] @ xt.T                       # (M, n)
    act = model.activation
    Ja = cf * act.sigma(np, pre).T                # (n, M)
    Jw = cf * s * np.einsum("k,ki,ij->ikj", p["a"], act.dsigma(np, pre), xt)  # (n, M, D)
    Jw = Jw.reshape(data.n, -1)
    K = (mu_a * Ja @ Ja.T + mu_w * Jw @ Jw.T) / data.n
    e0 = model.predict(prob.y0, data.x) - data.y
    lam, V = np.linalg.eigh(K)
    c = V.T @ e0
    e = (V[None] * (np.exp(-np.outer(times, lam)) * c)[:, None, :]).sum(-1)
    return (e**2).sum(1) / (2 * data.n)


def test_linear_regime_matches_ntk_flow_and_improves_with_width():
    data = fs.datasets.four_points()
    devs = []
    for m in (500, 8000):
        s = fs.Scaling.scheme("ntk", width=m)
        prob = fs.Problem(fs.TwoLayer(m, s, asi=True), data, seed=0)
        sol = fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-9, t_end=200.0,
                       save_at=np.linspace(0, 200, 41), progress=False)
        lin = _linearised_loss(prob, sol.t)
        devs.append(np.max(np.abs(sol.loss - lin)) / sol.loss[0])
    assert devs[1] < 0.02            # close to the NTK flow at large width
    assert devs[1] < devs[0] / 2     # and closer than at small width (~1/sqrt(m))


def test_bad_model_input():
    with pytest.raises(fs.ConfigError, match="width must be a positive integer, got -3"):
        fs.TwoLayer(width=-3)
    with pytest.raises(fs.ConfigError, match="width 10, but the model has width 20"):
        fs.TwoLayer(width=20, scaling=fs.Scaling.scheme("ntk", 10))
    with pytest.raises(fs.ConfigError, match="unknown activation 'swish'"):
        fs.TwoLayer(width=5, activation="swish")
    prob = _problem()
    with pytest.raises(fs.ConfigError, match="state must have shape"):
        prob.rhs(0.0, np.zeros(3))
    with pytest.raises(fs.ConfigError, match="seed"):
        fs.Problem(prob.model, prob.data, seed=-1)
