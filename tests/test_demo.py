"""`make demo` end to end, at the --quick widths (part 1 only, to keep CI short)."""

import os
import subprocess
import sys

import flowsolve as fs


def test_demo_quick_part1(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "flowsolve.cli", "demo", "--quick",
                        "--skip-phase-diagram", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rd_w_final at gamma' = 0" in r.stdout and "[L21]" in r.stdout
    files = sorted(os.listdir(out / "widths"))
    ncs = [f for f in files if f.endswith(".nc")]
    assert len(ncs) == 9
    assert (out / "rd_vs_width.png").stat().st_size > 10_000
    ds = fs.open_sweep(str(out / "widths"))
    assert (ds["status"].values == "success").all()
    # the printed slopes are the least-squares slopes of the files' RD*
    import numpy as np
    for g in (0.5, 1.75):
        rd = ds["rd_w_final"].sel(gamma=g, gamma_prime=0.0, seed=0).values
        slope = np.polyfit(np.log(ds.width.values), np.log(rd), 1)[0]
        assert f"{slope:8.3f}" in r.stdout
