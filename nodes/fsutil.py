"""Durable file writes shared by the nodes that keep state on disk (risk's state file, the execution
journal's compaction): the whole buffer written, the file fsync'd, renamed over the old one, and the
directory fsync'd so the rename itself survives a crash."""
import os


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is out (a write may be partial)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def replace_durably(fd: int, tmp, path) -> None:
    """fsync the temp file ``tmp`` (open as ``fd``), rename it over ``path`` and fsync the
    directory: a crash at any point leaves either the old file or the new one, whole."""
    os.fsync(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
