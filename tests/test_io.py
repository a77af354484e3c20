import os

import numpy as np
import pytest
import xarray as xr

import flowsolve as fs


@pytest.fixture(scope="module")
def solution():
    s = fs.Scaling.from_gammas(gamma=1.0, gamma_prime=0.1, width=40)
    prob = fs.Problem(fs.TwoLayer(40, s, asi=True), fs.datasets.four_points(), seed=7)
    return fs.solve(prob, "dopri5", rtol=1e-6, atol=1e-9, t_end=1e3,
                    snapshots=[0.0, 10.0, 100.0], progress=False)


def test_dataset_layout(solution):
    ds = solution.to_xarray()
    for v in ("loss", "rd_w", "rd_a", "rd_theta", "rd_w_max"):
        assert ds[v].dims == ("time",)
        assert "long_name" in ds[v].attrs and "units" in ds[v].attrs
    assert ds.sizes["neuron"] == 80 and ds.sizes["component"] == 2
    assert ds["w_snapshot"].shape == (3, 80, 2)
    np.testing.assert_allclose(ds["w_snapshot"][0], ds["w_init"])
    np.testing.assert_allclose(ds["snapshot_time"], [0.0, 10.0, 100.0])
    for key in ("flowsolve_version", "model", "width", "activation", "asi", "alpha", "beta1",
                "beta2", "gamma", "gamma_prime", "dataset", "solver", "solver_rtol",
                "solver_atol", "seed", "status", "stats_nfev"):
        assert key in ds.attrs, key
    assert ds.attrs["seed"] == 7 and ds.attrs["solver"] == "dopri5"
    assert float(ds["rd_w_final"]) == pytest.approx(solution.final["rd_w"])


def test_file_reproduces_its_run(solution, tmp_path):
    path = fs.io.save(solution.to_xarray(), tmp_path / "run.nc")
    ds = fs.io.load(path)
    a = ds.attrs
    s = fs.Scaling(alpha=a["alpha"], beta1=a["beta1"], beta2=a["beta2"], width=a["width"])
    model = fs.TwoLayer(a["width"], s, activation=a["activation"], asi=bool(a["asi"]))
    prob = fs.Problem(model, fs.datasets.get(a["dataset"]), seed=int(a["seed"]))
    again = fs.solve(prob, a["solver"], rtol=a["solver_rtol"], atol=a["solver_atol"],
                     t_end=a["solver_t_end"], progress=False)
    np.testing.assert_array_equal(again.loss, ds["loss"].values)


def test_netcdf_round_trip_identical(solution, tmp_path):
    ds = solution.to_xarray()
    path = tmp_path / "run.nc"
    fs.io.save(ds, path)
    back = fs.io.load(path)
    xr.testing.assert_identical(ds, back)
    assert fs.io.validate(path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_keeps_previous_file(solution, tmp_path):
    path = tmp_path / "run.nc"
    fs.io.save(solution.to_xarray(), path)
    before = open(path, "rb").read()
    bad = solution.to_xarray()
    bad.attrs["unserialisable"] = {"a": object()}  # netCDF cannot store this
    with pytest.raises((TypeError, ValueError)):
        fs.io.save(bad, path)
    assert open(path, "rb").read() == before
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_write_atomic_npy_round_trip_and_failure(tmp_path):
    """``write_atomic`` (the benchmark caches use it): the temporary name ends like the
    target's, so ``np.save`` writes exactly ``path``; a writer that dies half-way leaves
    the previous file and no temporary; the file gets the umask's permissions."""
    path = tmp_path / "sub" / "ref.npy"              # the folder is created
    first = np.arange(5.0)
    assert fs.io.write_atomic(path, lambda tmp: np.save(tmp, first)) == str(path)
    np.testing.assert_array_equal(np.load(path), first)
    assert os.listdir(path.parent) == ["ref.npy"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask

    def dies(tmp):
        np.save(tmp, np.zeros(1000))
        raise KeyboardInterrupt                      # a killed run (BaseException)

    with pytest.raises(KeyboardInterrupt):
        fs.io.write_atomic(path, dies)
    np.testing.assert_array_equal(np.load(path), first)
    assert os.listdir(path.parent) == ["ref.npy"]
    z = tmp_path / "c.npz"
    fs.io.write_atomic(z, lambda tmp: np.savez(tmp, y=first))
    with np.load(z) as f:
        np.testing.assert_array_equal(f["y"], first)
    assert sorted(os.listdir(tmp_path)) == ["c.npz", "sub"]


def test_validate_detects_truncation(solution, tmp_path):
    path = tmp_path / "run.nc"
    fs.io.save(solution.to_xarray(), path)
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    assert not fs.io.validate(path)
    assert not fs.io.validate(tmp_path / "missing.nc")
    with pytest.raises(fs.ConfigError, match="no such file"):
        fs.io.load(tmp_path / "missing.nc")
