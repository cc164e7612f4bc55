"""Command-line values typed where the config is read.

``python -m monai.bundle run training --config_file X --amp false`` hands the string ``'false'`` to the config
(``fire`` only converts Python literals, so ``false`` and ``"[false, false]"`` stay strings), and MONAI adds any
unknown ``--key`` silently. Every bundle config therefore runs :func:`check_cli` as the FIRST item of its
``initialize`` list: it types each command-line value by the type the key is declared with in the config files,
and rejects unknown keys (naming the nearest valid key) before any work starts.

Why an ``initialize`` item that looks at the call stack: MONAI 1.6.1 gives ``$`` expressions no handle on their
parser or on the command-line overrides, and a bundle carries no private Python (no custom workflow class to
name on every command line). ``ConfigWorkflow.initialize`` runs ``parser.parse(reset=True)`` and then each
``initialize#i`` item on its own, so an item that rewrites parser values and re-parses is seen by every later item.
The live ``ConfigWorkflow`` is found as ``self`` of its ``_run_expr`` frame and the overrides as ``_args`` (with
``config_file``) of the ``monai.bundle.scripts.create_workflow`` frame. MONAI is pinned in setup.py and
tests/test_cli_options.py fails if either stops being found. Used without ``create_workflow`` (a test that builds
a ``ConfigParser`` by hand), :func:`check_cli` finds nothing to check and returns ``None``.

Rules (the one place they live; other modules call :func:`parse_bool`):

- a key declared ``true``/``false`` (or a list of them) accepts ``true/false/yes/no/1/0`` in any case, a list as
  ``"[false, false]"``; anything else is an :class:`~oct_foundation.errors.OCTConfigError` naming key and value;
- a key declared as a number accepts numbers only (``--num_epochs ten`` is an error);
- values that start with ``$``, ``@`` or ``%`` are config expressions and are left to MONAI;
- an unknown key raises ``unknown key num_epoch; did you mean num_epochs?``; a nested ``a#b`` key is accepted
  when ``a`` exists and is a dict (or a list and ``b`` an index of it).
"""

from __future__ import annotations

import difflib
import inspect
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple


__all__ = ["OCTConfigError", "parse_bool", "check_cli", "type_overrides", "running_config", "RUN_ARGUMENTS"]

class OCTConfigError(ValueError):
    """A command-line key or value that the bundle config does not declare or cannot take."""


_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")

# arguments of monai.bundle.run / create_workflow / ConfigWorkflow that are not config keys
RUN_ARGUMENTS = frozenset(
    {
        "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
        "workflow_type", "workflow_name", "properties_path", "config_file", "bundle_root_check",
    }
)


def parse_bool(value: Any, key: str = "value") -> bool:
    """``True``/``False`` from a bool, 0/1 or ``true/false/yes/no/on/off/1/0`` (any case); else an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise OCTConfigError(
        f"--{key} {value!r} is not a boolean (not a yes/no value); use true or false (also yes/no, 1/0)"
    )


_AMP_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
               "half": "float16"}


def parse_amp_dtype(value: Any, key: str = "amp_dtype"):
    """The autocast ``torch.dtype`` named by ``value``: a ``torch.dtype``, or ``bfloat16``/``bf16`` or
    ``float16``/``fp16``/``half`` (any case, ``torch.`` prefix allowed); else an error naming ``key``."""
    import torch

    if isinstance(value, torch.dtype):
        if value in (torch.bfloat16, torch.float16):
            return value
    else:
        name = _AMP_DTYPES.get(str(value).strip().lower().replace("torch.", ""))
        if name is not None:
            return getattr(torch, name)
    raise OCTConfigError(f"--{key} {value!r} is not an autocast dtype; use bfloat16 (bf16) or float16 (fp16)")


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.strip()[:1] in ("$", "@", "%")


def _parse_list(value: Any, key: str) -> Any:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            import yaml

            return yaml.safe_load(value)
        except Exception:  # yaml is a MONAI dependency; fall back to JSON
            try:
                return json.loads(value)
            except ValueError as exc:
                raise OCTConfigError(f"--{key} {value!r} is not a list: {exc}") from None
    return value


def _type_like(declared: Any, value: Any, key: str) -> Any:
    """``value`` converted to the type of ``declared`` where the declaration says what it is."""
    if _is_expression(value):
        return value
    if isinstance(declared, bool):
        return parse_bool(value, key)
    if isinstance(declared, (int, float)):
        if isinstance(value, bool):
            raise OCTConfigError(f"--{key} {value!r} is not a number (declared {declared!r})")
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise OCTConfigError(f"--{key} {value!r} is not a number (declared {declared!r})") from None
            if isinstance(declared, int) and number.is_integer() and "." not in value and "e" not in value.lower():
                return int(number)
            return number
        raise OCTConfigError(f"--{key} {value!r} is not a number (declared {declared!r})")
    if isinstance(declared, list) and declared and all(isinstance(v, bool) for v in declared):
        parsed = _parse_list(value, key)
        if not isinstance(parsed, (list, tuple)):
            raise OCTConfigError(f"--{key} {value!r} is not a list of booleans, e.g. \"[false, true]\"")
        return [parse_bool(v, key) for v in parsed]
    if isinstance(declared, list):
        parsed = _parse_list(value, key)
        return parsed if isinstance(parsed, list) else value
    return value


def _lookup(config: Any, key: str) -> Tuple[bool, Any]:
    """(found, value) of a ``#``-separated key in a nested dict/list config."""
    node = config
    for part in key.split("#"):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _flat_keys(config: Dict[str, Any]) -> List[str]:
    return [k for k in config if not str(k).startswith("_")]


def type_overrides(declared_config: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Typed copy of ``overrides`` (``{key: value}`` from the command line) checked against ``declared_config``
    (the merged config files). Raises :class:`OCTConfigError` for an unknown key or a mistyped value."""
    typed: Dict[str, Any] = {}
    for key, value in overrides.items():
        key = str(key)
        if key in RUN_ARGUMENTS:
            continue
        found, declared = _lookup(declared_config, key)
        if not found:
            parent, _, leaf = key.rpartition("#")
            if parent:
                pfound, pnode = _lookup(declared_config, parent)
                if pfound and isinstance(pnode, dict):
                    typed[key] = value  # a new entry of an existing dict (e.g. a transform argument)
                    continue
            candidates = _flat_keys(declared_config)
            if parent:
                pfound, pnode = _lookup(declared_config, parent)
                if pfound and isinstance(pnode, dict):
                    candidates = [f"{parent}#{k}" for k in pnode]
            near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else "; see the keys at the top of the config file"
            raise OCTConfigError(f"unknown key {key}{hint}")
        typed[key] = _type_like(declared, value, key)
    return typed


def _find_frames() -> Tuple[Any, Optional[Sequence[str]], Optional[Dict[str, Any]]]:
    workflow, config_file, args = None, None, None
    from monai.bundle import ConfigWorkflow

    for info in inspect.stack(context=0):
        loc = info.frame.f_locals
        if workflow is None and info.function == "_run_expr" and isinstance(loc.get("self"), ConfigWorkflow):
            workflow = loc["self"]
        if args is None and info.function == "create_workflow" and "_args" in loc:
            args, config_file = loc["_args"], loc.get("config_file")
        if workflow is not None and args is not None:
            break
    return workflow, config_file, args


def check_cli() -> Optional[Dict[str, Any]]:
    """Type and check the command-line overrides of the running bundle workflow (see the module docstring).

    Placed first in every config's ``initialize`` list: ``"$oct_foundation.config.check_cli()"``. Returns the typed
    overrides that were written back, or ``None`` when not run under ``monai.bundle`` ``create_workflow``."""
    workflow, config_file, args = _find_frames()
    if workflow is None or args is None or config_file is None:
        return None
    from monai.bundle import ConfigParser

    declared = ConfigParser()
    declared.read_config(f=config_file)
    overrides = {k: v for k, v in args.items() if k not in RUN_ARGUMENTS}
    typed = type_overrides(declared.get(), overrides)
    parser = workflow.parser
    for key, value in typed.items():
        if value is not overrides[key]:
            parser[key] = value
    parser.parse(reset=True)
    return typed



def running_config() -> Optional[Dict[str, Any]]:
    """The config (files merged with the command-line overrides, as typed by :func:`check_cli`) of the bundle
    workflow whose ``initialize``/``run`` item is being evaluated, or ``None`` outside one."""
    workflow, _, _ = _find_frames()
    if workflow is None:
        return None
    return workflow.parser.get()
