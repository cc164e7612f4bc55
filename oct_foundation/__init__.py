"""oct-foundation: pretrain and evaluate 3D OCT foundation models as MONAI bundles.

Subpackages are imported lazily so that ``import oct_foundation`` in a bundle config stays cheap and
``_target_: oct_foundation.data.SomeReader`` resolves through normal attribute access.
"""
import importlib

__version__ = "0.2.0"

_SUBPACKAGES = ("data", "networks", "engines", "metrics", "experiments", "errors", "io", "config")


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
