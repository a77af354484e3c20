"""Squared norms for the relative-change observables, without state-sized temporaries."""

from __future__ import annotations

_BLOCK = 1 << 20


def diff_norms(xp, y, y0) -> tuple:
    """``(sum (y - y0)^2, sum y0^2)`` over two equal-length 1-D arrays, in float64.

    Streamed in blocks of ``2**20`` entries (no temporary of the state's size). This is the
    array-API default; backends may supply a faster one (``backend.diff_norms``, e.g. the
    Numba backend's single fused pass, which also keeps multithreaded BLAS calls out of a
    solve's step loop).
    """
    dd = bb = 0.0
    for s in range(0, y.shape[0], _BLOCK):
        blk = y[s:s + _BLOCK].astype(xp.float64)
        blk0 = y0[s:s + _BLOCK].astype(xp.float64)
        bb += float(blk0 @ blk0)
        blk -= blk0
        dd += float(blk @ blk)
    return dd, bb
