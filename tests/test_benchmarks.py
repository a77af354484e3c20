"""The benchmark scripts users run to compare solvers (benchmarks/): they run end to end
on a small problem, and their bookkeeping of gradient descent's cost is right."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


beat_gd = _load("beat_gd")


def test_gd_cost_measured_extrapolated_or_lower_bound():
    # (dt, steps, error, wall): first order, so the target is extrapolated ('~')
    first_order = [(1.0, 10, 4e-3, 1.0), (0.5, 20, 2e-3, 2.0)]
    assert beat_gd.gd_cost(first_order, 1e-2) == (10, 1.0, "")
    n, wall, mark = beat_gd.gd_cost(first_order, 1e-4)
    assert mark == "~" and n == pytest.approx(400) and wall == pytest.approx(40.0)
    # the last halving cut the error by < 1.5x: only the finest run, as a lower bound
    stalled = [(1.0, 10, 4e-3, 1.0), (0.5, 20, 3e-3, 2.0)]
    assert beat_gd.gd_cost(stalled, 1e-4) == (20, 2.0, ">")
    assert beat_gd.gd_cost([(1.0, 10, math.inf, 1.0)], 1e-4)[2] == "?"


def test_beat_gd_at_a_fixed_horizon_runs_end_to_end_and_caches_its_reference(tmp_path, capsys):
    cache, out = tmp_path / "refs", tmp_path / "out.json"
    argv = ["--widths", "20", "--gammas", "0.5", "--methods", "sliding", "--t-end", "2",
            "--ref-tol", "1e-10", "--time-budget", "5", "--gd-max-steps", "400",
            "--ref-cache", str(cache), "--json", str(out)]
    beat_gd.main(argv)
    files = os.listdir(cache)
    assert files == ["four_points_m20_g0.5_sliding_1e-10_t2.npz"]   # no partial file left
    (row,) = json.loads(out.read_text())
    assert row["T"] == 2.0 and row["ref_err"] < 1e-8
    ladder = row["methods"]["sliding"]["ladder"]
    assert ladder[-1][1] < 1e-6                   # the ladder reaches 1e-6 at this width
    gd = row["methods"]["gd"]["points"]           # (dt, steps, error, wall), steps doubling
    assert [p[1] for p in gd] == [gd[0][1] * 2 ** k for k in range(len(gd))]
    ratio = gd[-2][2] / gd[-1][2]                 # first order: halving dt halves the error
    assert 1.7 < ratio < 2.3
    capsys.readouterr()
    beat_gd.main(argv + ["--ref-only"])           # the second run loads the reference
    assert "reference from" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["-1", "0", "inf"])
def test_beat_gd_rejects_a_horizon_that_is_not_a_positive_time(bad, capsys):
    with pytest.raises(SystemExit):
        beat_gd.main(["--t-end", bad, "--ref-only"])
    assert f"--t-end must be a positive finite time, got {float(bad):g}" in capsys.readouterr().err


def test_digits_runs_saves_each_run_and_tabulates_them(tmp_path, capsys):
    """benchmarks/digits_runs.py: one run per call, saved atomically; the table compares
    them with a reference run (m = 20 on digits, t = 1: seconds)."""
    digits_runs = _load("digits_runs")
    common = ["--width", "20", "--gamma", "0.5", "--t-end", "1", "--out", str(tmp_path)]
    for run in (["sliding", "1e-10"], ["sliding", "1e-7"], ["gd", "16"], ["gd", "64"]):
        digits_runs.main(common + ["run"] + run)
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"{stem}.{ext}" for stem in ("sliding_1e-10", "sliding_1e-7", "gd_16", "gd_64")
        for ext in ("npy", "json"))                       # no temporary files left
    with open(tmp_path / "gd_64.json") as fh:
        info = json.load(fh)
    assert info["steps"] == 64 and info["nfev"] == 65 and info["status"] == "success"
    rows = {name: (err, work) for name, err, work, _, _ in
            digits_runs.table(str(tmp_path), "sliding_1e-10")}
    assert rows["sliding_1e-10"][0] == 0.0
    assert 0 < rows["sliding_1e-7"][0] < 1e-4
    # GD near first order (3.1x less error for 4x the steps here), far behind sliding
    assert 2.5 < rows["gd_16"][0] / rows["gd_64"][0] < 5.0
    assert rows["gd_64"][0] > rows["sliding_1e-7"][0]
    digits_runs.main(common + ["table", "sliding_1e-10"])
    out = capsys.readouterr().out
    assert "errors against sliding_1e-10" in out and "gd_64" in out
    for bad in (["table", "nope"], ["run", "gd", "-3"], ["run", "sliding", "abc"]):
        with pytest.raises(SystemExit):
            digits_runs.main(common + bad)
    assert "no run 'nope'" in capsys.readouterr().err
