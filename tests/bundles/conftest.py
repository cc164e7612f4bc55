"""Fixtures shared by the bundle tests."""
import pytest


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """A tiny synthetic cohort (8 cases, seed 0), written once per test session and only read by the tests."""
    from oct_foundation.data.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(str(out), cases=8, seed=0, size="tiny", progress=False)
    return out
