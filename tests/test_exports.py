"""Every name a subpackage advertises resolves (bundle configs reference them as `oct_foundation.x.Name`)."""
import importlib

import pytest


@pytest.mark.parametrize("sub", ["data", "networks", "engines", "metrics"])
def test_all_exports_resolve(sub):
    mod = importlib.import_module(f"oct_foundation.{sub}")
    names = getattr(mod, "__all__", [])
    assert names, f"oct_foundation.{sub} advertises nothing"
    for name in names:
        assert getattr(mod, name) is not None, name
