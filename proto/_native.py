"""The optional C extension ``proto._speedups``, or None.

None when it was not built (no C compiler at install time), when ``TICKMESH_PURE_PYTHON`` is set to
anything but ``0``, or when the built module is older than this source (a checkout updated without
reinstalling: ``pip install -e .`` rebuilds it). Every user keeps a pure Python path."""
import os

API = ("configure", "decode", "pack_frame", "Unsupported", "configure_lines", "dump_line", "levels_in", "record_in", "record_out")


def load():
    if os.environ.get("TICKMESH_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from . import _speedups as sp
    except ImportError:
        return None
    if not all(hasattr(sp, a) for a in API):
        return None
    return sp


SP = load()
