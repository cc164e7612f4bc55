"""Paths that may be local files or fsspec URLs (``gs://`` through gcsfs, ``memory://`` in tests).

Every reader, datalist, checkpoint loader and writer in the package goes through these helpers, so a
``gs://bucket/x.nii.gz`` path works wherever a local path does. Writes are atomic: data goes to a
temporary sibling first and is moved into place only when complete, so an interrupted write never leaves
a truncated output behind and never replaces a finished one with a partial one.

Remote paths fail fast: every call that asks a remote filesystem (anything but local files and ``memory://``)
about a path (connect, exists, list, open, small reads, remove) runs under a deadline of :func:`remote_timeout`
seconds (default 30, environment variable ``OCT_FOUNDATION_REMOTE_TIMEOUT``), so an endpoint that refuses or never
answers gives an :class:`~oct_foundation.errors.OCTInputError` naming the URL instead of minutes of retries or a
hang. Whole-file transfers (a full read, an upload) may take longer than that; HTTP(S) and Google Cloud Storage
get the same number as their socket timeouts, so a transfer that stalls fails too.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import posixpath
import shutil
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from oct_foundation.errors import CheckpointError, OCTInputError

__all__ = [
    "is_url",
    "join",
    "isdir",
    "remove",
    "remote_timeout",
    "REMOTE_TIMEOUT_ENV",
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


REMOTE_TIMEOUT_ENV = "OCT_FOUNDATION_REMOTE_TIMEOUT"
DEFAULT_REMOTE_TIMEOUT = 30.0
# fsspec protocols that never leave this process or machine: no deadline needed
_IN_PROCESS = ("memory", "file", "local")


def remote_timeout() -> float:
    """Seconds a remote filesystem call may take before it fails: ``$OCT_FOUNDATION_REMOTE_TIMEOUT`` or 30."""
    raw = os.environ.get(REMOTE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_REMOTE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise OCTInputError(REMOTE_TIMEOUT_ENV, f"{raw!r} is not a number of seconds") from None
    if not value > 0:
        raise OCTInputError(REMOTE_TIMEOUT_ENV, f"{raw!r} must be a positive number of seconds")
    return value


def _protocol(path) -> str:
    return str(path).split("://", 1)[0].lower() if is_url(path) else "file"


def _is_remote(path) -> bool:
    return is_url(path) and _protocol(path) not in _IN_PROCESS


def _remote(url, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` for remote ``url``, failing after :func:`remote_timeout` seconds with an error
    naming the URL (the call runs in a daemon thread, so a socket that never answers cannot hold the process)."""
    if not _is_remote(url):
        return fn(*args, **kwargs)
    timeout = remote_timeout()
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    worker = threading.Thread(target=target, name=f"oct-remote:{url}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise OCTInputError(url, f"no answer within {timeout:g} s while {what} (offline, or the endpoint does not "
                                 f"respond); set {REMOTE_TIMEOUT_ENV} to wait longer") from None
    if "error" in box:
        e = box["error"]
        if isinstance(e, (OCTInputError, CheckpointError, FileNotFoundError)):
            raise e
        if isinstance(e, (OSError, TimeoutError)) or type(e).__module__.split(".")[0] in ("aiohttp", "asyncio",
                                                                                       "requests", "google"):
            raise OCTInputError(url, f"cannot reach it while {what} ({type(e).__name__}: {e})") from None
        raise e
    return box.get("value")


def _storage_options(path) -> dict:
    """Socket timeouts for the remote filesystems that take them (the deadline of :func:`_remote` covers all)."""
    proto = _protocol(path)
    t = remote_timeout() + 5.0  # a little over the deadline, so a stalled metadata call is reported by it
    if proto in ("http", "https"):
        try:
            import aiohttp
        except ImportError:  # fsspec's HTTP filesystem needs aiohttp anyway
            return {}
        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)}}
    if proto in ("gs", "gcs"):
        return {"requests_timeout": t}
    return {}


def _fs(path):
    if not is_url(path):
        return fsspec.core.url_to_fs(_strip_file(path))
    return _remote(path, "connecting", fsspec.core.url_to_fs, str(path), **_storage_options(path))


def exists(path) -> bool:
    if not is_url(path):
        return os.path.exists(_strip_file(path))

    def check():
        fs, p = _fs(path)
        return fs.exists(p)

    return _remote(path, "checking that it exists", check)


def isdir(path) -> bool:
    """True for a local folder or a URL prefix that holds files."""
    if not is_url(path):
        return os.path.isdir(_strip_file(path))

    def check():
        fs, p = _fs(path)
        return fs.isdir(p)

    return _remote(path, "checking that it is a folder", check)


def remove(path) -> None:
    """Remove one file (local or URL); a missing file is not an error."""
    if not is_url(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(_strip_file(path))
        return

    def rm():
        fs, p = _fs(path)
        if fs.exists(p):
            fs.rm_file(p)

    _remote(path, "removing it", rm)


def makedirs(path) -> None:
    if not is_url(path):
        os.makedirs(_strip_file(path), exist_ok=True)
        return

    def mk():
        fs, p = _fs(path)
        fs.makedirs(p, exist_ok=True)

    _remote(path, "creating the folder", mk)


def list_files(path, suffixes=None) -> list[str]:
    """Sorted files directly under a folder (local or URL), optionally filtered by suffix."""
    if not is_url(path):
        root = Path(_strip_file(path))
        files = [str(p) for p in root.iterdir() if p.is_file()]
    else:
        def ls():
            fs, p = _fs(path)
            return [f for f in fs.ls(p, detail=False) if fs.isfile(f)]

        proto = str(path).split("://", 1)[0]
        files = [f"{proto}://{f.split('://', 1)[-1].lstrip('/')}" for f in _remote(path, "listing the folder", ls)]
    if suffixes:
        files = [f for f in files if any(f.lower().endswith(s) for s in suffixes)]
    return sorted(files)


class _DeadlineFile:
    """A remote file object whose reads and writes fail after :func:`remote_timeout` seconds, naming the URL."""

    def __init__(self, f, url: str) -> None:
        self._f = f
        self._url = url

    _SMALL = 16 * 1024 * 1024  # reads up to this size run under the deadline; larger ones are transfers

    def read(self, size: int = -1):
        if size is None or size < 0 or size > self._SMALL:
            return self._f.read(size)
        return _remote(self._url, "reading it", self._f.read, size)

    def readinto(self, b):
        if len(b) > self._SMALL:
            return self._f.readinto(b)
        return _remote(self._url, "reading it", self._f.readinto, b)

    def readline(self, *args):
        return _remote(self._url, "reading it", self._f.readline, *args)

    def write(self, data):
        return self._f.write(data)

    def close(self):  # may upload the last part of a written file: a transfer, under the socket timeouts
        return self._f.close()

    def __iter__(self):
        return iter(self.readline, b"" if "b" in getattr(self._f, "mode", "rb") else "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def open_file(path, mode: str = "rb"):
    """``fsspec.open`` for any path; a missing file raises :class:`OCTInputError` naming it. Remote files are
    opened, read and written under the :func:`remote_timeout` deadline."""
    if "r" in mode and not exists(path):
        raise OCTInputError(path, "file not found")
    if not is_url(path):
        return fsspec.open(_strip_file(path), mode).open()
    f = _remote(path, "opening it", lambda: fsspec.open(str(path), mode, **_storage_options(path)).open())
    return _DeadlineFile(f, str(path)) if _is_remote(path) else f


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
            def put():
                fs, p = _fs(target)
                fs.makedirs(posixpath.dirname(p), exist_ok=True)
                fs.put_file(tmp, p)

            _remote(target, "connecting", _fs, target)  # an endpoint that never answers fails here, fast
            put()
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
    except OSError as e:
        if e.errno in _FULL_ERRNOS:  # disk full, quota, file-size limit: say which file, leave nothing behind
            raise OSError(e.errno, f"{os.strerror(e.errno)}: could not write {target} (no partial file left)") \
                from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _first_line_of(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


#: errno values of a full disk, an exceeded quota or file-size limit
_FULL_ERRNOS = tuple(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n))


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


def _not_a_checkpoint(head: bytes, size: int) -> str | None:
    """Why bytes starting with ``head`` (of a file of ``size`` bytes) cannot be a PyTorch checkpoint, or None."""
    if size == 0:
        return "empty file (0 bytes), not a PyTorch checkpoint"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip format / legacy pickle
        return None
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in stripped[:1024]:
        return ("an HTML/XML page, not a PyTorch checkpoint (a download that returned an error or sign-in page "
                "instead of the file?)")
    sample = head[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        if first.startswith("version https://git-lfs"):
            return "a Git LFS pointer (text), not the weights it points to; fetch the file itself"
        return f"a text file, not a PyTorch checkpoint (it starts with {first!r})"
    return None


def torch_load(path, map_location="cpu", mmap: bool = False):
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only, never pickled code).

    Every refusal is a :class:`CheckpointError` naming the file and the problem: a file that would run code (a
    pickled callable, a custom class), an empty file, a text file, an HTML error page, a Git LFS pointer, a
    truncated archive or junk bytes. ``mmap=True`` memory-maps a local file (tensors are read when used).
    """
    import pickle

    import torch

    local = not is_url(path)
    if local:
        p = _strip_file(path)
        if not os.path.isfile(p):
            raise OCTInputError(path, "file not found" if not os.path.exists(p) else "a folder, not a file")
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(4096)
        source = p if mmap else None
    else:
        with open_file(path, "rb") as f:
            data = f.read()
        size, head, source = len(data), data[:4096], None
    problem = _not_a_checkpoint(head, size)
    if problem:
        raise CheckpointError(path, problem)
    try:
        if source is not None:
            return torch.load(source, map_location=map_location, weights_only=True, mmap=True)
        if local:
            with open(p, "rb") as f:
                buf = io.BytesIO(f.read())
        else:
            buf = io.BytesIO(data)
        return torch.load(buf, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:  # the file names code to run: refused, never unpickled
            raise CheckpointError(path, f"refused: the file would run code ({found.group(1)}); only plain weights "
                                        "(tensors, numbers, strings, containers) are loaded") from None
        raise CheckpointError(path, "not a readable PyTorch checkpoint (corrupt, or not a checkpoint)") from None
    except Exception as e:  # junk bytes can fail anywhere in the unpickler (IndexError, KeyError, struct.error...)
        msg = str(e).strip()
        if "central directory" in msg or "zip archive" in msg or "file_read_error" in msg.lower():
            raise CheckpointError(path, f"truncated or corrupt: the checkpoint's zip archive is incomplete "
                                        f"({size} bytes; {msg.splitlines()[0]})") from None
        first = msg.splitlines()[0] if msg else type(e).__name__
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None


def torch_save(obj, path, buffered: bool = False) -> None:
    """``torch.save`` to ``path`` (local or URL) atomically. A failed write (disk full, quota, size limit) raises
    an ``OSError`` naming ``path`` and leaves no partial file. ``buffered``: serialise in memory first and write
    the bytes from Python, so the error carries the system's reason (for small objects such as latents; a
    checkpoint is written directly, and PyTorch's writer error is reported as a failed write of ``path``)."""
    import torch

    with atomic_output(path) as tmp:
        if buffered:
            buf = io.BytesIO()
            torch.save(obj, buf)
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
            return
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # PyTorch's C++ writer: "iostream error", "unexpected pos", ...
            raise OSError(errno.EIO, f"could not write {path} ({_first_line_of(e)}; disk full?)") from None
