"""Sweeps on a real Dask LocalCluster (2 worker processes): results equal serial solves,
resume after an interrupt runs every run exactly once, a killed worker, truncated files
and diverging runs do not stop a sweep, TOML round trip, the command line end to end."""

import logging
import os
import signal
import subprocess
import sys

import netCDF4
import numpy as np
import pytest

import flowsolve as fs
import flowsolve.cli

distributed = pytest.importorskip("distributed")

SOLVER = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "stop_at_loss": 1e-4, "t_end": 1e5}


@pytest.fixture(scope="module")
def cluster():
    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR)
    client = distributed.Client(lc)
    yield lc, client
    client.close()
    lc.close()


@pytest.fixture
def client(cluster):
    return cluster[1]


def small_spec(**kw):
    d = {"model": "two_layer", "data": "four_points",
         "grid": {"gamma": [0.5, 1.0], "gamma_prime": [0.0]}, "widths": [20, 60],
         "seeds": [0, 1], "solver": dict(SOLVER)}
    d.update(kw)
    return fs.SweepSpec(**d)


def serial(g, gp, m, seed, solver, activation="relu"):
    """The same run built directly from the public API, solved in this process."""
    s = fs.Scaling.from_gammas(gamma=g, gamma_prime=gp, width=m)
    prob = fs.Problem(fs.TwoLayer(m, s, activation=activation, asi=True),
                      fs.datasets.four_points(), seed=seed)
    return fs.solve(prob, save_at=fs.log_grid(solver.get("t_end", np.inf)), progress=False,
                    **solver)


def session_and_mtime(path):
    with netCDF4.Dataset(path) as nc:
        return nc.getncattr("sweep_session"), os.stat(path).st_mtime_ns


# -- spec --------------------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"grid": {}}, ["grid"]),
    ({"grid": {"gamma": [], "gamma_prime": [0.0]}}, ["gamma", "non-empty"]),
    ({"grid": {"gamma": [1.0], "gamma2": [0.0]}}, ["gamma2", "gamma_prime"]),
    ({"grid": {"gamma": [1.0, 1.0], "gamma_prime": [0.0]}}, ["repeat"]),
    ({"grid": {"gamma": [float("nan")], "gamma_prime": [0.0]}}, ["finite", "nan"]),
    ({"widths": []}, ["widths"]),
    ({"widths": [0]}, ["widths", "0"]),
    ({"widths": [10.5]}, ["widths", "10.5"]),
    ({"seeds": [-1]}, ["seeds", "-1"]),
    ({"solver": {**SOLVER, "rtoll": 1e-3}}, ["rtoll"]),
    ({"solver": {**SOLVER, "method": "rk99"}}, ["rk99"]),
    ({"solver": {**SOLVER, "rtol": -1.0}}, ["rtol"]),
    ({"solver": {"method": "dopri5"}}, ["t_end"]),
    ({"model": "four_layer"}, ["four_layer"]),
    ({"model_options": {"activaton": "relu"}}, ["activaton"]),
    ({"model_options": {"activation": "swish9"}}, ["swish9"]),
    ({"save": {"per_decad": 5}}, ["per_decad"]),
    ({"data": "mnist9"}, ["mnist9"]),
])
def test_spec_rejects_bad_config(change, words):
    with pytest.raises(fs.ConfigError) as err:
        small_spec(**change)
    for w in words:
        assert w in str(err.value)


def test_spec_from_dict_rejects_unknown_key():
    d = small_spec().to_dict()
    d["widht"] = [10]
    with pytest.raises(fs.ConfigError, match="widht"):
        fs.SweepSpec.from_dict(d)


def test_toml_round_trip(tmp_path):
    spec = small_spec(save={"params": False, "per_decade": 5, "snapshots": [0.0, 10.0]},
                      data="smooth_1d", data_options={"n": 8, "target": "sin"},
                      solver={**SOLVER, "t_end": float("inf"), "error_norm": "displacement"})
    path = tmp_path / "s.toml"
    spec.to_toml(path)
    back = fs.SweepSpec.from_toml(path)
    assert back.to_dict() == spec.to_dict()
    assert [r.name for r in back.runs()] == [r.name for r in spec.runs()]
    (tmp_path / "bad.toml").write_text('model = "two_layer"\n[grid]\ngamma = [1.0\n')
    with pytest.raises(fs.ConfigError, match="bad.toml"):
        fs.SweepSpec.from_toml(tmp_path / "bad.toml")


def test_runs_product_and_names():
    spec = small_spec(grid={"gamma": [0.5, 1.0, 1.5], "gamma_prime": [-0.2, 0.0]})
    runs = spec.runs()
    assert len(runs) == 3 * 2 * 2 * 2 == int(np.prod(spec.shape()))
    assert len({r.name for r in runs}) == len(runs)
    assert runs[0].name == "gamma=0.5,gamma_prime=-0.2,width=20,seed=0"
    for r in runs:
        assert np.ravel_multi_index(
            (spec.grid["gamma"].index(r.coords["gamma"]),
             spec.grid["gamma_prime"].index(r.coords["gamma_prime"]),
             spec.widths.index(r.width), spec.seeds.index(r.seed)), spec.shape()) == r.index


def test_explicit_scale_grid_store_without_dask(tmp_path):
    """open_sweep on files written in this process: scale coordinates, missing runs."""
    from flowsolve.sweep import _prepare_dir, execute_run

    spec = fs.SweepSpec(grid={"alpha": [10.0, 100.0], "beta1": [1.0], "beta2": [0.5, 1.0]},
                        widths=[10], solver={"t_end": 100.0, "rtol": 1e-4},
                        save={"params": False})
    _prepare_dir(spec, str(tmp_path))
    for r in spec.runs()[:3]:
        fs.io.save(execute_run(spec, r), tmp_path / r.filename)
    ds = fs.open_sweep(tmp_path)
    assert ds["loss"].dims == ("alpha", "beta1", "beta2", "width", "seed", "time")
    np.testing.assert_array_equal(ds["beta2"], [0.5, 1.0])
    a, b1, b2 = np.meshgrid(ds["alpha"], ds["beta1"], ds["beta2"], indexing="ij")
    kappa = ds["kappa"].isel(width=0, seed=0).values
    assert list(ds["status"].values.ravel()) == ["success"] * 3 + ["missing"]
    np.testing.assert_allclose(kappa.ravel()[:3], (b1 * b2 / a).ravel()[:3], rtol=1e-14)
    assert np.isnan(ds["loss"].values.reshape(4, -1)[3]).all()


# -- engine and store --------------------------------------------------------------------
def test_sweep_matches_serial_solves(client, tmp_path):
    spec = small_spec()
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    assert (rep.total, rep.ran, rep.skipped, rep.failed) == (8, 8, 0, [])
    ds = fs.open_sweep(tmp_path)
    assert ds["loss"].dims == ("gamma", "gamma_prime", "width", "seed", "time")
    assert ds["rd_w_final"].dims == ("gamma", "gamma_prime", "width", "seed")
    np.testing.assert_array_equal(ds["time"], spec.time_grid())
    for name in ("status", "nfev", "steps", "wall_time", "t_final", "rd_w_final", "rd_w_max"):
        assert name in ds
    assert (ds["status"] == "success").all()
    for g in spec.grid["gamma"]:
        for m in spec.widths:
            for seed in spec.seeds:
                sol = serial(g, 0.0, m, seed, SOLVER)
                run = ds.sel(gamma=g, gamma_prime=0.0, width=m, seed=seed)
                np.testing.assert_allclose(float(run["rd_w_final"]), sol.final["rd_w"],
                                           rtol=1e-12)
                np.testing.assert_allclose(float(run["t_final"]), sol.t_final, rtol=1e-12)
                assert int(run["nfev"]) == sol.stats.nfev
                on_grid = np.isin(sol.t, spec.time_grid())
                k = int(on_grid.sum())
                np.testing.assert_allclose(run["loss"].values[:k], sol["loss"][on_grid],
                                           rtol=1e-12)
                np.testing.assert_allclose(run["rd_w_max"].values[:k], sol["rd_w_max"][on_grid],
                                           rtol=1e-12)
                assert np.isnan(run["loss"].values[k:]).all()   # after t_final
    # a second call finds everything done; another spec in the same directory is refused
    assert fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False).skipped == 8
    with pytest.raises(fs.ConfigError, match="different sweep"):
        fs.run_sweep(small_spec(seeds=[0]), out=tmp_path, scheduler=client)


FAULTS = """
import resource, sys, numpy as np
from flowsolve.sweep import tune_malloc
def faults():
    def work():
        for _ in range(50):
            a = np.ones((200_000, 5)) * 2.0        # 8 MB temporaries
            a @ np.ones(5)
    work()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
before = faults()
ok = tune_malloc()
print(before, faults(), ok)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_tune_malloc_keeps_large_temporaries():
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536: then every 8 MB
    temporary goes back to the OS and is faulted in again (~800 page faults per loop);
    tune_malloc, called by every sweep task, stops that."""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    r = subprocess.run([sys.executable, "-c", FAULTS], env=env, check=True,
                       capture_output=True, text=True, timeout=120)
    before, after, ok = r.stdout.split()
    assert ok == "True"
    assert int(before) > 10_000 and int(after) < 1000, r.stdout


def test_truncated_file_is_redone(client, tmp_path):
    spec = small_spec(widths=[20], seeds=[0])
    fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    before = fs.open_sweep(tmp_path)
    victim, other = (tmp_path / r.filename for r in spec.runs())
    other_stamp = session_and_mtime(other)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert not fs.io.validate(victim)
    assert fs.open_sweep(tmp_path)["status"].values.ravel()[0] == "corrupt"
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    assert (rep.ran, rep.skipped) == (1, 1)
    assert fs.io.validate(victim) and session_and_mtime(other) == other_stamp
    after = fs.open_sweep(tmp_path)
    np.testing.assert_array_equal(after["rd_w"].values, before["rd_w"].values)


def test_subset_of_runs_then_the_rest(client, tmp_path):
    spec = small_spec(widths=[20])
    with pytest.raises(fs.ConfigError, match="indices"):
        fs.run_sweep(spec, out=tmp_path, scheduler=client, runs=[4])
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False, runs=[3, 0])
    assert (rep.total, rep.ran) == (2, 2)
    assert sorted(p.name for p in tmp_path.glob("*.nc")) == sorted(
        spec.runs()[i].filename for i in (0, 3))
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    assert (rep.total, rep.skipped, rep.ran) == (4, 2, 2)


def test_diverging_run_is_recorded_and_others_finish(client, tmp_path):
    solver = {"method": "gd", "lr": 3.0, "t_end": 1e3, "stop_at_loss": 1e-4}
    spec = small_spec(widths=[20], seeds=[0], solver=solver,
                      model_options={"activation": "tanh"})
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    assert rep.ran == 2 and len(rep.failed) == 1
    name, status, _ = rep.failed[0]
    assert name.startswith("gamma=0.5") and status == "non-finite state"
    ds = fs.open_sweep(tmp_path).sel(gamma_prime=0.0, width=20, seed=0)
    assert list(ds["status"].values) == ["non-finite state", "success"]
    ok = serial(1.0, 0.0, 20, 0, solver, activation="tanh")
    np.testing.assert_allclose(float(ds["loss_final"].sel(gamma=1.0)), ok.final["loss"],
                               rtol=1e-12)
    # a resume keeps the failure; redo_failed recomputes exactly that run
    assert fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False).ran == 0
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False, redo_failed=True)
    assert (rep.ran, rep.skipped) == (1, 1)


def test_raising_run_leaves_a_failure_record(client, tmp_path):
    spec = small_spec(widths=[20], seeds=[0])
    spec.solver["rtol"] = -1.0          # bypasses validation: every run raises on the worker
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    assert rep.ran == 2 and [f[1] for f in rep.failed] == ["failed", "failed"]
    ds = fs.open_sweep(tmp_path)
    assert (ds["status"] == "failed").all()
    assert all("ConfigError" in m and "rtol" in m for m in ds["message"].values.ravel())
    assert np.isnan(ds["loss"]).all()


class Interrupt(Exception):
    pass


def test_interrupt_then_resume_runs_each_run_once(client, tmp_path):
    spec = small_spec(grid={"gamma": [0.5, 1.0, 1.25], "gamma_prime": [0.0]}, widths=[20, 40])

    def stop_after_three(rec, done, total):
        if done >= 3:
            raise Interrupt

    # the embedded LocalCluster (default engine), torn down by the interrupt
    with pytest.raises(Interrupt):
        fs.run_sweep(spec, out=tmp_path, workers=2, progress=stop_after_three,
                     batch_seconds=0.01)
    files = {r.name: tmp_path / r.filename for r in spec.runs()}
    done_before = {n: session_and_mtime(p) for n, p in files.items()
                   if p.exists() and fs.io.validate(p)}
    assert 3 <= len(done_before) < len(files)
    seen = []
    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client,
                       progress=lambda rec, d, t: seen.append(rec["name"]))
    assert rep.skipped == len(done_before) and rep.ran == len(files) - len(done_before)
    assert sorted(seen) == sorted(set(files) - set(done_before))      # each run once
    stamps = {n: session_and_mtime(p) for n, p in files.items()}
    for n, stamp in done_before.items():
        assert stamps[n] == stamp                                        # not recomputed
    assert len({stamps[n][0] for n in seen}) == 1
    assert not list(tmp_path.glob(".tmp-*"))
    assert (fs.open_sweep(tmp_path)["status"] == "success").all()


def test_killed_worker_does_not_stop_the_sweep(client, tmp_path):
    spec = small_spec(grid={"gamma": [1.0, 1.25], "gamma_prime": [0.0]}, widths=[60, 100])
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one(rec, done, total):
        if not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    rep = fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=kill_one,
                       batch_seconds=0.01)
    assert killed and rep.ran == rep.total == 8 and rep.failed == []
    ds = fs.open_sweep(tmp_path)
    assert (ds["status"] == "success").all()
    sol = serial(1.25, 0.0, 100, 1, spec.solver)
    np.testing.assert_allclose(
        float(ds["rd_w_final"].sel(gamma=1.25, gamma_prime=0.0, width=100, seed=1)),
        sol.final["rd_w"], rtol=1e-12)
    client.wait_for_workers(2, timeout=60)


def test_three_layer_sweep_matches_serial(client, tmp_path):
    if not hasattr(fs, "ThreeLayer") or not hasattr(fs, "Scaling3"):
        pytest.skip("the three-layer model is not in this build")
    solver = {"method": "dopri5", "rtol": 1e-4, "atol": 1e-7, "stop_at_loss": 1e-3,
              "t_end": 1e4}
    spec = fs.SweepSpec(model="three_layer", grid={"gamma2": [0.0], "gamma3": [1.0, 1.5]},
                        widths=[8], seeds=[0], solver=solver, save={"params": False})
    fs.run_sweep(spec, out=tmp_path, scheduler=client, progress=False)
    ds = fs.open_sweep(tmp_path)
    assert ds["rd_w1"].dims == ("gamma2", "gamma3", "width", "seed", "time")
    for g3 in (1.0, 1.5):
        model = fs.ThreeLayer(8, fs.Scaling3.from_gammas(gamma2=0.0, gamma3=g3, width=8))
        sol = fs.solve(fs.Problem(model, fs.datasets.four_points(), seed=0),
                       save_at=fs.log_grid(1e4), progress=False, **solver)
        run = ds.sel(gamma2=0.0, gamma3=g3, width=8, seed=0)
        for k in ("rd_w1", "rd_w2", "loss"):
            np.testing.assert_allclose(float(run[k + "_final"]), sol.final[k], rtol=1e-12)


# -- command line ------------------------------------------------------------------------
def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flowsolve.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_sweep_and_solve(cluster, tmp_path, capsys):
    spec = small_spec(widths=[20], seeds=[0, 1])
    spec.to_toml(tmp_path / "sweep.toml")
    r = cli("sweep", tmp_path / "sweep.toml", "--out", tmp_path / "runs", "--scheduler",
            cluster[0].scheduler_address, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "4 runs" in r.stdout
    ds = fs.open_sweep(tmp_path / "runs")
    assert dict(ds["rd_w_final"].sizes) == {"gamma": 2, "gamma_prime": 1, "width": 1, "seed": 2}

    code = fs.cli.main(["solve", "--gamma", "1.0", "--width", "20", "--seed", "1",
                        "--method", "dopri5", "--rtol", "1e-4", "--atol", "1e-7",
                        "--stop-at-loss", "1e-4", "--t-end", "1e5",
                        "--out", str(tmp_path / "one.nc")])
    assert code == 0
    one = fs.io.load(tmp_path / "one.nc")
    out = capsys.readouterr().out
    assert one.attrs["status"] == "success" and "rd_w=" in out and "method=dopri5 " in out
    np.testing.assert_allclose(float(one["rd_w_final"]),
                               float(ds["rd_w_final"].sel(gamma=1.0, seed=1).squeeze()),
                               rtol=1e-12)

    one_toml = tmp_path / "one.toml"        # a single-run config with the sweep keys
    one_toml.write_text('widths = 20\nseeds = 1\n[grid]\ngamma = 1.0\ngamma_prime = 0.0\n'
                        '[solver]\nmethod = "dopri5"\nrtol = 1e-4\natol = 1e-7\n'
                        'stop_at_loss = 1e-4\nt_end = 1e5\n')
    assert fs.cli.main(["solve", "--config", str(one_toml), "--out", str(tmp_path / "two.nc"),
                        "--no-params"]) == 0
    two = fs.io.load(tmp_path / "two.nc")
    assert "w_final" not in two and "w_final" in one
    np.testing.assert_array_equal(two["loss"].values, one["loss"].values)

    (tmp_path / "bad.toml").write_text(spec.to_toml().replace("widths = [20]", "widths = [0]"))
    for args in (("sweep", tmp_path / "bad.toml", "--out", tmp_path / "x"),
                 ("solve", "--gamma", 1.0, "--width", 20, "--method", "rk99"),
                 ("solve", "--gamma", 1.0)):
        assert fs.cli.main([str(a) for a in args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], lines
    r = cli("solve", "--gamma", 1.0, "--width", 20, "--lr", 1.0)    # lr without gd
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "lr" in r.stderr


def test_print_run_prints_one_line_per_run(capsys):
    fs.sweep.print_run({"name": "gamma=1.0,width=20,seed=0", "status": "success",
                        "seconds": 1.234}, 3, 8)
    assert capsys.readouterr().out == "[3/8] gamma=1.0,width=20,seed=0: success (1.2 s)\n"
