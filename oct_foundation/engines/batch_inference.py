"""Per-file batch inference for collaborators: anonymised outputs, resumable, never stops on one bad file.

``BatchInference`` owns everything that is the same for every inference bundle (listing inputs, naming
outputs, skipping finished work, catching per-file errors, the summary CSV, progress); a *processor* owns
what is specific (read, run the network, write its outputs). A processor is any object with

* ``outputs(out_stem) -> list[str]``: the files it writes for one input (all present = finished);
* ``__call__(item, out_stem) -> dict``: process ``item`` (``{"image": path, ...}``), write every output
  atomically to a path starting with ``out_stem``, return the summary fields of this input.

The package's processors derive from one base, :class:`oct_foundation.engines.processors.InferenceProcessor`
(reading, device, autocast, inferer, output names, writers).

Privacy: output names are a hash of the input path (or the value of a user-given ID map), the summary
holds IDs and never input paths, and error reasons have the input path replaced by ``<input>``. The
mapping ID -> input path is written only where the user asks (``index_file``), ideally outside the
folder that is shared.
"""
from __future__ import annotations

import csv
import hashlib
import io as _pyio
import logging
import os
import posixpath
from typing import Any, Callable, Iterable, Mapping, Sequence

from oct_foundation import io
from oct_foundation.data.suffixes import OCT_SUFFIXES
from oct_foundation.errors import OCTInputError

__all__ = ["BatchInference", "anonymous_id", "as_bool", "list_inputs", "IMAGE_SUFFIXES"]

logger = logging.getLogger("oct_foundation.inference")

#: File types the readers understand (every suffix of :class:`~oct_foundation.data.readers.OCTVolumeReader`:
#: NIfTI, DICOM, Heidelberg, NumPy, the vendor formats, video and TIFF); files without a suffix are included too
#: (DICOM often has none), and so are sub-folders of ``.png`` frames (one 2D+time input each).
IMAGE_SUFFIXES = OCT_SUFFIXES
_SKIP_SUFFIXES = (".csv", ".json", ".txt", ".md", ".log", ".yml", ".yaml", ".png", ".part")


def as_bool(value, key: str = "value") -> bool:
    """``True``/``False`` from a bool or a command-line spelling (``--overwrite false``); the one rule lives in
    :func:`oct_foundation.config.parse_bool` (anything but true/false/yes/no/1/0 is an error naming the key)."""
    from oct_foundation.config import parse_bool

    return parse_bool(value, key)


def anonymous_id(path: str, length: int = 16) -> str:
    """A stable identifier for ``path`` that does not reveal it: the first ``length`` hex digits of sha256 of the
    absolute path (local paths), so that a folder given as a relative or an absolute path gives the same IDs."""
    p = str(path)
    if not io.is_url(p):
        p = os.path.abspath(p[len("file://"):] if p.startswith("file://") else p)
    return hashlib.sha256(p.encode("utf-8")).hexdigest()[:length]


def _check_id(out_id: str, source) -> str:
    """An output ID from an ID map must be a plain file-name stem: it cannot point outside ``output_dir``."""
    i = str(out_id).strip()
    bad = (not i or i in (".", "..") or i.startswith(".") or any(c in i for c in "/\\:\x00")
           or os.path.isabs(i))
    if bad:
        raise OCTInputError(source, f"ID {out_id!r} is not a plain name (no '/', '\\', ':', leading '.' or empty "
                                    "ID): outputs must stay inside the output folder")
    return i


def _entry_problem(path: str) -> str | None:
    """Why a local folder entry cannot be an input (``None``: it can be tried)."""
    import errno

    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return "symbolic link loop"
            return "dangling symbolic link (its target does not exist)"
    if os.path.isdir(path):
        return None
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def _is_candidate(path: str, suffixes: Sequence[str]) -> bool:
    name = os.path.basename(str(path)).lower()
    if name.startswith("."):
        return False
    if any(name.endswith(s) for s in suffixes):
        return True
    return "." not in name  # suffix-less files (DICOM) are tried; a bad one is reported, not fatal


def list_inputs(inputs, datalist_key: str = "test", suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[dict]:
    """Items ``{"image": path, ...}`` from a folder, a datalist JSON, a path list or an item list.

    Folders and datalists may be local or fsspec URLs. A datalist without ``datalist_key`` raises an error
    naming the file and the keys it has.
    """
    if isinstance(inputs, (list, tuple)):
        return [dict(x) if isinstance(x, Mapping) else {"image": str(x)} for x in inputs]
    src = str(inputs)
    if src.lower().endswith(".json"):
        from oct_foundation.data.datalist import load_datalist

        data = io.load_json(src)
        if isinstance(data, list):  # a bare JSON list of paths or items, relative to its folder
            base = io.dirname(src)
            return [{**(dict(x) if isinstance(x, Mapping) else {"image": x}),
                     "image": io.join(base, x["image"] if isinstance(x, Mapping) else x)} for x in data]
        return load_datalist(src, key=datalist_key)
    if not io.exists(src):
        raise OCTInputError(src, "input folder not found")
    if not io.is_url(src) and not os.path.isdir(src.replace("file://", "")):
        return [{"image": src}]
    if io.is_url(src):
        files = [{"image": p} for p in io.list_files(src) if _is_candidate(p, suffixes)]
        return sorted(files + [{"image": d} for d in _frame_folders(src)], key=lambda it: it["image"])
    # a local folder: every entry that could be meant as an input is listed; one that cannot be read (a dangling
    # or looping link, no read permission, a folder that is not a folder of .png frames) carries its reason
    root = src.replace("file://", "")
    frames = set(_frame_folders(root))
    items = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith("."):
            continue
        problem = _entry_problem(path)
        if problem is None and os.path.isdir(path):
            if path in frames:
                items.append({"image": path})
            elif not _is_output_folder(path):
                items.append({"image": path, "error": "a folder, not an input (only folders of .png frames are "
                                                      "read as one video each)"})
            continue
        if problem is not None:
            items.append({"image": path, "error": problem})
        elif _is_candidate(path, suffixes):
            items.append({"image": path})
    return items


def _is_output_folder(path: str) -> bool:
    """A folder this package wrote (a summary / manifest CSV inside): not an input and not worth a warning."""
    try:
        return any(n.endswith(".csv") for n in os.listdir(path))
    except OSError:
        return False


def _frame_folders(src: str) -> list[str]:
    """Sub-folders of ``src`` (local or URL) that hold ``.png`` frames and nothing else (hidden files aside):
    each is one video input. A folder with other files too (e.g. an output folder with grids and a CSV) is not."""

    def frames_only(names) -> bool:
        names = [posixpath.basename(str(n).rstrip("/")) for n in names]
        names = [n for n in names if not n.startswith(".")]
        return bool(names) and all(n.lower().endswith(".png") for n in names)

    if io.is_url(src):
        import fsspec

        fs, root = fsspec.core.url_to_fs(src)
        proto = src.split("://", 1)[0]
        subs = [d for d in fs.ls(root, detail=False) if fs.isdir(d)]
        return [f"{proto}://{d.lstrip('/')}" for d in subs if frames_only(fs.ls(d, detail=False))]
    root = src.replace("file://", "")
    out = []
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if not name.startswith(".") and os.path.isdir(d) and frames_only(os.listdir(d)):
            out.append(d)
    return out


def _load_id_map(id_map) -> dict[str, str]:
    if id_map is None or id_map == "" or isinstance(id_map, Mapping):
        return dict(id_map or {})
    path = str(id_map)
    if path.lower().endswith(".json"):
        data = io.load_json(path)
        if not isinstance(data, Mapping):
            raise OCTInputError(path, "ID map JSON must be an object {input name: id}")
        return {str(k): str(v) for k, v in data.items()}
    with io.open_file(path, "rb") as f:
        rows = list(csv.reader(_pyio.StringIO(f.read().decode("utf-8"))))
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["input", "id"], ["image", "id"]):
        rows = rows[1:]
    out = {}
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise OCTInputError(path, f"ID map row {i + 1} needs two columns: input, id")
        out[r[0].strip()] = r[1].strip()
    return out


class BatchInference:
    """Run a processor over many inputs; see the module docstring for the contract.

    Args:
        inputs: folder, datalist JSON, list of paths or list of items (local paths or fsspec URLs).
        output_dir: where outputs and the summary go (local or URL); created if missing.
        processor: object with ``outputs(out_stem)`` and ``__call__(item, out_stem)``.
        loader: optional transform applied to each item before the processor (read + preprocess); a
            MONAI ``Dataset`` given as ``inputs`` supplies its ``transform`` here and its ``data`` as items.
        datalist_key: list to read from a datalist JSON.
        overwrite: redo inputs whose outputs all exist (default: skip them).
        id_map: dict or CSV/JSON file mapping input path or file name to an output ID.
        summary_name: summary CSV file name inside ``output_dir``.
        index_file: optional file (local or URL) that receives the ID -> input path table.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        inputs,
        output_dir: str,
        processor: Callable[[dict, str], dict],
        loader: Callable[[dict], dict] | None = None,
        datalist_key: str = "test",
        overwrite: bool = False,
        id_map=None,
        summary_name: str = "summary.csv",
        index_file: str | None = None,
        progress: bool = True,
    ):
        if not hasattr(processor, "outputs"):
            raise TypeError("processor needs an outputs(out_stem) method listing the files it writes")
        if hasattr(inputs, "data") and hasattr(inputs, "transform") and not isinstance(inputs, (str, list)):
            loader = loader if loader is not None else inputs.transform
            inputs = list(inputs.data)
        self.inputs = inputs
        self.loader = loader
        self.output_dir = str(output_dir)
        self.processor = processor
        self.datalist_key = datalist_key
        self.overwrite = as_bool(overwrite, "overwrite")
        self.id_map = _load_id_map(id_map)
        self.summary_path = io.join(self.output_dir, summary_name)
        self.index_file = index_file or None
        self.progress = as_bool(progress, "progress_bar")

    def _id_for(self, path: str) -> str:
        for key in (path, os.path.basename(path)):
            if key in self.id_map:
                return _check_id(self.id_map[key], "id_map")
        return anonymous_id(path)

    def _check_output_dir(self) -> None:
        try:
            io.makedirs(self.output_dir)
            probe = io.join(self.output_dir, ".write_test")
            io.atomic_write(probe, b"")
            if not io.is_url(probe):
                os.remove(probe)
        except OSError as e:
            raise OCTInputError(self.output_dir, f"output folder is not writable ({e.strerror or e})") from None

    def _write_summary(self, rows: list[dict]) -> None:
        io.write_csv([{k: _fmt(v) for k, v in r.items()} for r in rows], self.summary_path)

    def _previous_rows(self) -> dict[str, dict]:
        if not io.exists(self.summary_path):
            return {}
        with io.open_file(self.summary_path, "rb") as f:
            return {r["id"]: r for r in csv.DictReader(_pyio.StringIO(f.read().decode("utf-8")))}

    def _refuse_mixed(self, ids: list[str]) -> None:
        """Before any work: finished outputs that would be kept must have been made with this run's settings
        (a processor with ``existing_mismatch(out_stem)`` says); otherwise the folder would mix two runs."""
        check = getattr(self.processor, "existing_mismatch", None)
        if self.overwrite or check is None:
            return
        stale = []
        for out_id in ids:
            out_stem = io.join(self.output_dir, out_id)
            if all(io.exists(p) for p in self.processor.outputs(out_stem)):
                why = check(out_stem)
                if why:
                    stale.append((out_id, why))
        if stale:
            out_id, why = stale[0]
            raise OCTInputError(self.output_dir, f"{len(stale)} finished output(s) were made with other settings "
                                                 f"(first: {out_id}: {why}); pass --overwrite true to redo them, "
                                                 "or write to another --output_dir")

    def run(self) -> list[dict]:
        """Process every input; returns the summary rows (also written to ``summary_name``)."""
        items = list_inputs(self.inputs, self.datalist_key)
        if not items:
            raise OCTInputError(self.inputs, "no inputs found (files of a known format, or folders of .png frames)")
        self._check_output_dir()
        previous = self._previous_rows()
        ids = [self._id_for(str(it["image"])) for it in items]
        seen: dict[str, int] = {}
        for pos, (out_id, it) in enumerate(zip(ids, items)):
            if out_id in seen:
                first = seen[out_id]
                same = str(items[first]["image"]) == str(it["image"])
                raise OCTInputError(
                    self.inputs, f"inputs #{first} and #{pos} ({'the same entry listed twice: ' if same else ''}"
                                 f"{items[first]['image']}{'' if same else ' and ' + str(it['image'])}) map to the "
                                 f"same output ID {out_id!r}; remove the duplicate or fix the ID map")
            seen[out_id] = pos
        if self.index_file:
            io.write_csv([{"id": i, "input": it["image"], "position": pos}
                          for pos, (i, it) in enumerate(zip(ids, items))], self.index_file)

        self._refuse_mixed(ids)
        rows: list[dict] = []
        counts = {"done": 0, "skipped": 0, "error": 0}
        iterator: Iterable = zip(ids, items)
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(list(iterator), desc="inference", unit="file")
        for pos, (out_id, item) in enumerate(iterator):
            out_stem = io.join(self.output_dir, out_id)
            if item.get("error"):  # listed by list_inputs with the reason it cannot be read
                row = {"id": out_id, "position": pos, "status": "error", "reason": f"<input #{pos}>: {item['error']}"}
                counts["error"] += 1
                logger.warning("input #%d (%s) cannot be read: %s", pos, out_id, item["error"])
            elif not self.overwrite and all(io.exists(p) for p in self.processor.outputs(out_stem)):
                row = dict(previous.get(out_id, {}))
                row.update({"id": out_id, "position": pos, "status": "skipped",
                            "reason": "outputs exist (use overwrite to redo)"})
                counts["skipped"] += 1
            else:
                try:
                    streams = getattr(self.processor, "streams", None)
                    if self.loader is not None and not (streams is not None and streams(item)):
                        data = self.loader(dict(item))
                    else:  # no loader, or the processor reads this input itself, piece by piece
                        data = item
                    fields = self.processor(data, out_stem) or {}
                    row = {"id": out_id, "position": pos, "status": "done", "reason": ""}
                    row.update(fields)
                    counts["done"] += 1
                except Exception as e:  # one bad file must not stop the batch; it is listed with its reason
                    e = _root_cause(e)
                    reason = _scrub(f"{type(e).__name__}: {e}" if not isinstance(e, OCTInputError) else str(e),
                                    str(item["image"]), f"<input #{pos}>")
                    row = {"id": out_id, "position": pos, "status": "error", "reason": reason}
                    counts["error"] += 1
                    logger.warning("input #%d (%s) failed: %s", pos, out_id, reason)
            rows.append(row)
            self._write_summary(rows)
        logger.info(
            "inference finished: %d done, %d skipped, %d failed; summary at %s",
            counts["done"], counts["skipped"], counts["error"], self.summary_path,
        )
        print(f"inference: {counts['done']} done, {counts['skipped']} skipped, {counts['error']} failed "
              f"-> {self.summary_path}")
        return rows


def _root_cause(e: BaseException) -> BaseException:
    """The error that started it all: MONAI's ``apply_transform`` wraps errors in "applying transform ..."."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or (e.__context__ if not e.__suppress_context__ else None)
        if nxt is None:
            break
        e = nxt
    return e


def _scrub(text: str, path: str, label: str = "<input>") -> str:
    """Replace the input path and its file name in a message by ``label`` (they may carry patient names); the
    label names the input by its position, which is also its row in the index file."""
    for s in sorted({path, path.replace("file://", ""), os.path.basename(path)}, key=len, reverse=True):
        if s:
            text = text.replace(s, label)
    return text.replace("\n", " ")


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() else str(x) for x in v)
    return v
