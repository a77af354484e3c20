"""Smoke tests of the figures: files are written and the axes hold the data."""

import numpy as np
import pytest
import xarray as xr

import flowsolve as fs
import flowsolve.analysis as fa
import flowsolve.plotting as fp

GAM = np.array([0.6, 0.8, 1.0, 1.2, 1.4])
GPS = np.array([-0.2, 0.0, 0.2])
WIDTHS = np.array([100, 200, 400, 800])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def sweep():
    rng = np.random.default_rng(0)
    S = 0.8 * (GAM[:, None] - fa.theory_gamma_star(GPS)[None, :])
    logm = np.log(WIDTHS)
    rd = np.exp(-1 + S[:, :, None, None] * logm[None, None, :, None]
                + 0.02 * rng.standard_normal((5, 3, 4, 2)))
    t = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 20)])
    loss = np.exp(-t)[None, None, None, None, :] * np.ones((5, 3, 4, 2, 1)) + 1e-9
    dims = ("gamma", "gamma_prime", "width", "seed")
    return xr.Dataset({"rd_w_final": (dims, rd), "loss": (dims + ("time",), loss),
                       "status": (dims, np.full(rd.shape, "success"))},
                      coords={"gamma": GAM, "gamma_prime": GPS, "width": WIDTHS,
                              "seed": [0, 1], "time": t})


def test_phase_diagram(tmp_path, sweep):
    exps = fa.scaling_exponents(sweep, n_boot=50)
    path = tmp_path / "pd.png"
    fig = fp.phase_diagram(exps, labels=fa.classify(exps), path=path)
    assert path.stat().st_size > 1000
    ax = fig.axes[0]
    mesh = ax.collections[0]
    np.testing.assert_allclose(np.sort(mesh.get_array().compressed()),
                               np.sort(exps["slope"].sel(quantity="rd_w_final").values.ravel()))
    assert mesh.norm.vcenter == 0.0
    # the theory line and the stars at the measured crossings
    zc = fa.zero_crossings(exps)
    ys = np.concatenate([line.get_ydata() for line in ax.lines])
    for g in zc["gamma_star"].values:
        assert np.isclose(ys, g).any()


def test_rd_vs_width_and_loss(tmp_path, sweep):
    fig = fp.rd_vs_width(sweep, select={"gamma_prime": 0.0}, path=tmp_path / "rd.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == len(GAM)
    assert (tmp_path / "rd.png").exists()
    fig = fp.loss_curves(sweep, hue="width", select={"gamma": 1.0, "gamma_prime": 0.0},
                         path=tmp_path / "loss.png")
    assert len(fig.axes[0].lines) == len(WIDTHS)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(),
                               sweep.loss.values[2, 1, 0, 0, 1:])


def test_run_figures(tmp_path, four_points):
    sc = fs.Scaling.from_gammas(1.75, 0.0, 40)
    prob = fs.Problem(fs.TwoLayer(40, sc, asi=True), four_points, seed=0)
    run = fs.solve(prob, "dopri5", t_end=100.0, progress=False).to_xarray()
    fig = fp.orientation_scatter(run, path=tmp_path / "o.png")
    offs = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(offs[:, 0], run["orientation_init"].values[:40])
    fig = fp.cosine_map(run, path=tmp_path / "c.png")
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (40, 40) and np.allclose(np.diag(img), 1.0)
    assert (tmp_path / "o.png").exists() and (tmp_path / "c.png").exists()


def test_layer_phase_diagrams(tmp_path):
    g2, g3 = np.array([-0.5, 0.0, 0.5]), np.array([0.5, 1.0, 1.5, 2.0])
    S1 = (g3[None, :] - 1.2 + 0 * g2[:, None])
    S2 = (g3[None, :] - 1.6 + 0.4 * g2[:, None])
    exps = xr.Dataset({"slope": (("quantity", "gamma2", "gamma3"), np.stack([S1, S2])),
                       "ci_low": (("quantity", "gamma2", "gamma3"), np.stack([S1, S2]) - 0.01),
                       "ci_high": (("quantity", "gamma2", "gamma3"), np.stack([S1, S2]) + 0.01),
                       "boot_low": (("quantity", "gamma2", "gamma3"), np.full((2, 3, 4), np.nan)),
                       "boot_high": (("quantity", "gamma2", "gamma3"), np.full((2, 3, 4), np.nan))},
                      coords={"quantity": ["rd_w1_final", "rd_w2_final"], "gamma2": g2,
                              "gamma3": g3})
    fig = fp.layer_phase_diagrams(exps, path=tmp_path / "three.png")
    assert len(fig.axes) >= 3 and (tmp_path / "three.png").exists()
    meshes = [c for a in fig.axes for c in a.collections if hasattr(c, "get_array")
              and c.get_array() is not None and c.get_array().size == 12]
    four = np.asarray(meshes[-1].get_array()).reshape(4, 3)       # (gamma3, gamma2)
    assert set(np.unique(four)) <= {-1, 0, 1, 2, 3}
    # low gamma3: both linear; high: both condensed
    assert four[0, 0] == 0 and four[-1, 0] == 3


def test_cli_analyze_and_plot(tmp_path, sweep, capsys):
    from flowsolve.cli import main

    path = tmp_path / "sweep.nc"
    fs.io.save(sweep, path)
    out = tmp_path / "exps.nc"
    assert main(["analyze", str(path), "--n-boot", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gamma*" in text and "agree with theory" in text
    exps = fs.io.load(out)
    np.testing.assert_allclose(exps["slope"].sel(quantity="rd_w_final"),
                               fa.scaling_exponents(sweep, n_boot=0)["slope"]
                               .sel(quantity="rd_w_final"))
    assert main(["plot", str(path), "--out-dir", str(tmp_path / "figs")]) == 0
    assert {"phase_diagram.png", "rd_vs_width.png", "loss_curves.png"} <= {
        p.name for p in (tmp_path / "figs").iterdir()}
    assert main(["analyze", str(tmp_path / "missing.nc")]) == 2
