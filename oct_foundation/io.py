"""Paths that may be local files or fsspec URLs (``gs://`` through gcsfs, ``memory://`` in tests).

Every reader, datalist, checkpoint loader and writer in the package goes through these helpers, so a
``gs://bucket/x.nii.gz`` path works wherever a local path does. Writes are atomic: data goes to a
temporary sibling first and is moved into place only when complete, so an interrupted write never leaves
a truncated output behind and never replaces a finished one with a partial one.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from oct_foundation.errors import CheckpointError, OCTInputError

__all__ = [
    "is_url",
    "join",
    "exists",
    "open_file",
    "local_path",
    "sha256_file",
    "makedirs",
    "atomic_write",
    "atomic_output",
    "load_json",
    "save_json",
    "write_csv",
    "torch_load",
    "torch_save",
    "list_files",
]


def is_url(path) -> bool:
    """True for fsspec URLs other than plain local paths / ``file://``."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def _strip_file(path) -> str:
    s = str(path)
    return s[len("file://"):] if s.startswith("file://") else s


def join(base, *parts) -> str:
    """Join path parts; absolute paths and URLs in ``parts`` win, as with ``os.path.join``."""
    out = str(base)
    for p in parts:
        p = str(p)
        if "://" in p or os.path.isabs(p):
            out = p
        elif is_url(out):
            out = posixpath.join(out, p)
        else:
            out = os.path.join(_strip_file(out), p)
    return out


def dirname(path) -> str:
    s = str(path)
    if is_url(s):
        proto, rest = s.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(_strip_file(s)))


def _fs(path):
    fs, p = fsspec.core.url_to_fs(_strip_file(path) if not is_url(path) else str(path))
    return fs, p


def exists(path) -> bool:
    if not is_url(path):
        return os.path.exists(_strip_file(path))
    fs, p = _fs(path)
    return fs.exists(p)


def makedirs(path) -> None:
    if not is_url(path):
        os.makedirs(_strip_file(path), exist_ok=True)
        return
    fs, p = _fs(path)
    fs.makedirs(p, exist_ok=True)


def list_files(path, suffixes=None) -> list[str]:
    """Sorted files directly under a folder (local or URL), optionally filtered by suffix."""
    if not is_url(path):
        root = Path(_strip_file(path))
        files = [str(p) for p in root.iterdir() if p.is_file()]
    else:
        fs, p = _fs(path)
        proto = str(path).split("://", 1)[0]
        files = [f"{proto}://{f.lstrip('/')}" for f in fs.ls(p, detail=False) if fs.isfile(f)]
    if suffixes:
        files = [f for f in files if any(f.lower().endswith(s) for s in suffixes)]
    return sorted(files)


def open_file(path, mode: str = "rb"):
    """``fsspec.open`` for any path; a missing file raises :class:`OCTInputError` naming it."""
    if "r" in mode and not exists(path):
        raise OCTInputError(path, "file not found")
    return fsspec.open(_strip_file(path) if not is_url(path) else str(path), mode).open()


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (local path or fsspec URL), read in ``chunk``-byte pieces."""
    import hashlib

    h = hashlib.sha256()
    with open_file(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def local_path(path) -> Iterator[str]:
    """A local file path for ``path``: itself when local, else a temporary copy (removed afterwards).

    For libraries that only take a file name (eyepy, some nibabel paths).
    """
    if not is_url(path):
        p = _strip_file(path)
        if not os.path.exists(p):
            raise OCTInputError(path, "file not found")
        yield p
        return
    name = posixpath.basename(str(path))
    tmpdir = tempfile.mkdtemp(prefix="oct_fsspec_")
    try:
        local = os.path.join(tmpdir, name)
        with open_file(path, "rb") as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@contextlib.contextmanager
def atomic_output(path) -> Iterator[str]:
    """Yield a temporary local file name; on success move it to ``path`` (local or URL) in one step.

    On error the temporary file is removed and ``path`` is untouched.
    """
    target = str(path)
    suffix = "".join(Path(posixpath.basename(target)).suffixes)
    if is_url(target):
        tmpdir = tempfile.mkdtemp(prefix="oct_out_")
        tmp = os.path.join(tmpdir, f"part{suffix}")
        try:
            yield tmp
            fs, p = _fs(target)
            fs.makedirs(posixpath.dirname(p), exist_ok=True)
            fs.put_file(tmp, p)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return
    target = _strip_file(target)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.{uuid.uuid4().hex[:8]}.part{suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path, data: bytes | str) -> None:
    """Write bytes or text to ``path`` atomically."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)


def write_csv(rows, path, columns=None) -> None:
    """Write a list of dicts as CSV atomically: ``columns`` first, then any other keys in first-seen order;
    ``None`` becomes an empty cell."""
    import csv

    keys: list[str] = list(columns or [])
    for row in rows:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write(path, buf.getvalue())


def load_json(path) -> Any:
    with open_file(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise OCTInputError(path, f"not valid JSON ({e})") from None


def save_json(obj, path, indent: int = 2) -> None:
    atomic_write(path, json.dumps(obj, indent=indent, default=str) + "\n")


def torch_load(path, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only, never pickled code).

    A file that holds anything else (a pickled callable, a custom class) is refused with
    :class:`CheckpointError` naming the file.
    """
    import pickle

    import torch

    with open_file(path, "rb") as f:
        buf = io.BytesIO(f.read())
    try:
        return torch.load(buf, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # the file names code to run: refused, never unpickled
            raise CheckpointError(path, f"refused: the file would run code ({found.group(1)}); only plain weights "
                                        "(tensors, numbers, strings, containers) are loaded") from None
        raise CheckpointError(path, "not a readable PyTorch checkpoint (corrupt, or not a checkpoint)") from None
    except Exception as e:  # junk bytes can fail anywhere in the unpickler (IndexError, KeyError, struct.error...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({first})") from None


def torch_save(obj, path) -> None:
    import torch

    with atomic_output(path) as tmp:
        torch.save(obj, tmp)
