"""MONAI-style datalists (``{"training": [...], "validation": [...], "test": [...]}``) on local paths or URLs."""
from __future__ import annotations

from typing import Sequence

from oct_foundation import io as oio
from oct_foundation.errors import OCTInputError

__all__ = ["load_datalist", "datalist_from_folder", "training_datalist", "DEFAULT_PATH_KEYS"]

#: Item keys whose values are file paths (resolved relative to the datalist's folder).
DEFAULT_PATH_KEYS = ("image", "label")


def _resolve(base: str, value):
    if isinstance(value, str):
        return oio.join(base, value)
    if isinstance(value, (list, tuple)):
        return [oio.join(base, v) if isinstance(v, str) else v for v in value]
    return value


def load_datalist(
    path, key: str = "training", path_keys: Sequence[str] = DEFAULT_PATH_KEYS, check_files: bool = False
) -> list[dict]:
    """Items of list ``key`` in the JSON datalist at ``path`` (local or fsspec URL).

    Values of ``path_keys`` that are relative paths are joined to the datalist's folder; absolute paths and
    URLs are kept. A plain string item becomes ``{"image": path}``. Other fields (``class``, ``device`` ...)
    are passed through. A missing file, invalid JSON, missing ``key`` or malformed item raises
    :class:`OCTInputError` naming the datalist; with ``check_files`` a listed file that does not exist
    raises naming that file.
    """
    data = oio.load_json(path)
    if not isinstance(data, dict):
        raise OCTInputError(path, f"datalist must be a JSON object with lists, got {type(data).__name__}")
    if key not in data:
        raise OCTInputError(path, f"datalist has no {key!r} list (available: {', '.join(map(str, data)) or 'none'})")
    items = data[key]
    if not isinstance(items, list):
        raise OCTInputError(path, f"datalist entry {key!r} must be a list, got {type(items).__name__}")
    base = oio.dirname(path)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict):
            raise OCTInputError(path, f"{key}[{i}] must be an object or a path, got {type(item).__name__}")
        item = dict(item)
        for k in path_keys:
            if k in item:
                item[k] = _resolve(base, item[k])
        if check_files:
            for k in path_keys:
                for p in ([item[k]] if isinstance(item.get(k), str) else item.get(k) or []):
                    if isinstance(p, str) and not oio.exists(p):
                        raise OCTInputError(p, f"file not found (listed in {path} {key}[{i}].{k})")
        out.append(item)
    return out


def datalist_from_folder(folder, suffixes: Sequence[str] | None = None) -> list[dict]:
    """``[{"image": path}, ...]`` for the OCT files directly under ``folder`` (local or URL), sorted.

    ``suffixes`` defaults to every format :class:`~oct_foundation.data.readers.OCTVolumeReader` reads.
    """
    from oct_foundation.data.readers import OCT_SUFFIXES

    if not oio.exists(folder):
        raise OCTInputError(folder, "folder not found")
    sfx = tuple(s.lower() for s in (suffixes or OCT_SUFFIXES))
    files = oio.list_files(folder, sfx)
    if not files:
        raise OCTInputError(folder, f"no files with suffix {', '.join(sfx)}")
    return [{"image": f} for f in files]


def training_datalist(datalist, dataset_dir, sections: Sequence[str] = ("training", "validation"),
                      label_key: str | None = None, label_dir: str = "labels", needs: str | None = None,
                      val_every: int = 10):
    """The training items of every bundle, by one rule: the datalist JSON when it exists, else a folder scan.

    Returns what :func:`oct_foundation.data.preflight_datalist` checks: the datalist path when it exists (every
    section is then read from it), else ``{section: items, "_source": folder}`` from a scan:

    * ``dataset_dir`` is scanned (:func:`datalist_from_folder`; its ``images/`` subfolder when there is
      one). With ``label_key`` each image is paired with the file of the same name in ``dataset_dir/label_dir``
      (a missing one is an error naming both files), and every ``val_every``-th pair goes to ``validation``.
    * ``needs``: what a scan cannot provide (e.g. the ``class`` of each volume): without a datalist that is an
      error naming the expected datalist and what it must hold.
    """
    if datalist and oio.exists(datalist):
        return str(datalist)
    if needs:
        raise OCTInputError(datalist or dataset_dir, f"datalist not found: {needs}, which a folder of images "
                                                     "cannot provide (see the bundle's docs for the format)")
    images = oio.join(dataset_dir, "images")
    folder = images if oio.exists(images) and oio.isdir(images) else dataset_dir
    items = datalist_from_folder(folder)
    if label_key:
        paired = []
        for it in items:
            name = it["image"].replace("\\", "/").rsplit("/", 1)[-1]
            label = oio.join(dataset_dir, label_dir, name)
            if not oio.exists(label):
                raise OCTInputError(it["image"], f"no label {label} of the same name (a folder without a datalist "
                                                 f"pairs {folder}/<name> with {oio.join(dataset_dir, label_dir)}/<name>)")
            paired.append({**it, label_key: label})
        items = paired
        every = max(2, int(val_every))
        out = {"training": [it for i, it in enumerate(items) if len(items) < 2 or i % every],
               "validation": [it for i, it in enumerate(items) if len(items) >= 2 and not i % every]}
    else:
        out = {"training": items, "validation": []}
    out = {s: out.get(s, []) for s in sections}
    out["_source"] = str(dataset_dir)
    return out

