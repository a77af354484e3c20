import gzip
import struct

import numpy as np
import pytest

import flowsolve as fs


def test_four_points():
    d = fs.datasets.four_points()
    assert d.x.shape == (4, 1) and d.y.shape == (4,)
    np.testing.assert_allclose(d.x[:, 0], [-0.5, -1 / 6, 1 / 6, 0.5])
    np.testing.assert_allclose(d.y, d.x[:, 0] ** 2)
    assert d.x_tilde().shape == (4, 2) and (d.x_tilde()[:, 1] == 1).all()


def test_smooth_targets():
    d = fs.datasets.smooth(n=50, d=3, target="gauss", seed=1)
    assert d.x.shape == (50, 3)
    np.testing.assert_allclose(d.y, np.exp(-2 * (d.x**2).sum(1)))
    g = fs.datasets.smooth_1d(n=9, target="sin")
    np.testing.assert_allclose(g.x[:, 0], np.linspace(-1, 1, 9))
    with pytest.raises(fs.ConfigError, match="unknown target 'cubic'"):
        fs.datasets.smooth(10, target="cubic")


def test_digits_options():
    d = fs.datasets.digits(n=100, classes=[0, 1], normalise="unit", seed=0)
    assert d.x.shape == (100, 64)
    assert set(np.unique(d.y)) <= {0.0, 1.0}
    np.testing.assert_allclose(np.linalg.norm(d.x, axis=1), 1.0)
    p = fs.datasets.digits(n=50, label="parity")
    assert set(np.unique(p.y)) <= {-1.0, 1.0}
    with pytest.raises(fs.ConfigError, match="n must be at most"):
        fs.datasets.digits(n=10_000)
    with pytest.raises(fs.ConfigError, match="classes"):
        fs.datasets.digits(classes=[11])


def _write_idx(path, arr):
    codes = {np.uint8: 0x08}
    header = struct.pack(">HBB", 0, codes[arr.dtype.type], arr.ndim)
    header += struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(">u1").tobytes())


def test_mnist_idx_and_npz(tmp_path, rng):
    imgs = rng.integers(0, 256, size=(60, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, size=60).astype(np.uint8)
    ip = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(str(ip), imgs)
    _write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), labels)
    d = fs.datasets.load_mnist(str(ip), n=45, normalise="none")
    assert d.x.shape == (45, 784)
    np.testing.assert_allclose(d.x, imgs[:45].reshape(45, -1) / 255.0)
    np.testing.assert_array_equal(d.y, labels[:45])
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=imgs, y_train=labels)
    d2 = fs.datasets.load_mnist(str(npz), n=45, normalise="none")
    np.testing.assert_allclose(d2.x, d.x)
    with pytest.raises(fs.ConfigError, match="not found"):
        fs.datasets.load_mnist(str(tmp_path / "missing.npz"))


def test_bad_data():
    with pytest.raises(fs.ConfigError, match=r"x must be finite, got nan at index \(1, 0\)"):
        fs.Dataset(np.array([[0.0], [np.nan]]), np.zeros(2))
    with pytest.raises(fs.ConfigError, match="same number of samples"):
        fs.Dataset(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(fs.ConfigError, match="y must have shape"):
        fs.Dataset(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(fs.ConfigError, match="unknown data set"):
        fs.datasets.get("cifar")
