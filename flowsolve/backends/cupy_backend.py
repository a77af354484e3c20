"""The CuPy (GPU) backend: a placeholder that fails cleanly.

Creating :class:`CupyBackend` raises :class:`~flowsolve.errors.BackendUnavailable` with
the reason: CuPy is not installed, no CUDA device is visible, or (with both present) the
GPU kernels have not been written yet. ``available_backends()`` therefore never lists
``"cupy"`` on a machine where it cannot run.
"""

from __future__ import annotations

from ..errors import BackendUnavailable

__all__ = ["CupyBackend"]


class CupyBackend:
    """GPU backend (not yet implemented); see the module docstring."""

    name = "cupy"

    def __init__(self, **options):
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailable(
                f"the cupy backend needs CuPy (pip install 'flowsolve[gpu]'): {exc}") from exc
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            raise BackendUnavailable(f"the cupy backend found no usable CUDA device: {exc}"
                                     ) from exc
        if count == 0:
            raise BackendUnavailable("the cupy backend found no CUDA device")
        raise BackendUnavailable("the cupy backend's GPU kernels are not implemented yet; "
                                 "use backend='numba' or 'numpy'")
