"""vGPU's Python start-up hook: `vgpu run` puts this folder first on PYTHONPATH, so Python imports this module
at start (site.py's `sitecustomize`) in every Python process the program starts.

What it does, only under `vgpu run` (VGPU_RUN=1) and only on a machine without an NVIDIA device node:
JAX starts its CUDA backend only if /dev/nvidia0, /dev/nvidiactl or /dev/dxg exists
(jax._src.hardware_utils.has_visible_nvidia_gpu), a file check, without asking the driver. A client without a
GPU, which is what vGPU is for, has none, so JAX would silently run on the CPU. When that module is imported,
its check is made to answer True (the GPU is vGPU's), and one line on stderr says so. Nothing is imported ahead
of time and nothing else is changed; the sitecustomize this one hides (a distribution's or a virtual
environment's) is run afterwards.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEVICE_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")
_TARGET = "jax._src.hardware_utils"


def _patch(module):
    if getattr(module, "_vgpu_patched", False):
        return
    module.has_visible_nvidia_gpu = lambda: True
    module._vgpu_patched = True
    sys.stderr.write(
        "vgpu run: no /dev/nvidia* device node on this machine: JAX's check for one "
        "(jax._src.hardware_utils.has_visible_nvidia_gpu) answers True, the GPU being vGPU's\n"
    )


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module it made."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds jax._src.hardware_utils as the other finders would, with a loader that patches it."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def _install():
    if os.environ.get("VGPU_RUN") != "1":
        return
    if any(os.path.exists(d) for d in _DEVICE_NODES):
        return
    module = sys.modules.get(_TARGET)
    if module is not None:
        _patch(module)
    else:
        sys.meta_path.insert(0, _Finder())


def _run_next_sitecustomize():
    """The sitecustomize that would have run without this one (later on sys.path), if any."""
    path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


try:
    _install()
except Exception as e:  # noqa: BLE001 - a start-up hook must never stop the program
    sys.stderr.write(f"vgpu run: the Python start-up hook failed: {type(e).__name__}: {e}\n")

try:
    _run_next_sitecustomize()
except Exception as e:  # noqa: BLE001
    sys.stderr.write(f"vgpu run: the hidden sitecustomize failed: {type(e).__name__}: {e}\n")
