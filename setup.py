"""oct-foundation: 3D OCT foundation models as MONAI bundles."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = "0.2.0"

INSTALL_REQUIRES = [
    "torch==2.13.0",
    "monai==1.6.1",
    "pytorch-ignite==0.5.5",
    "numpy==2.4.6",
    "nibabel==5.4.2",
    "pydicom==3.0.2",
    "einops==0.8.2",
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
    "eyepy==0.21.0",
    "tensorboard==2.21.0",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
    "scikit-learn==1.9.1",
    "scikit-image==0.26.0",
    "scipy==1.17.1",
    "jsonschema==4.26.0",
    "safetensors==0.8.0",  # Hugging Face V-JEPA 2 weights
    "fire==0.7.1",  # command line of `python -m monai.bundle`
    "oct-converter==0.7.0",  # Topcon .fda/.fds, Zeiss .img, Heidelberg .e2e readers (oct_foundation.data.vendor)
]

setup(
    name="oct-foundation",
    version=VERSION,
    description="Pretrain and evaluate 3D OCT foundation models (V-JEPA, MAISI) as MONAI bundles",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["oct_foundation", "oct_foundation.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # transformers: the peer implementation scripts/benchmark.py compares against (VJEPA2Model built from a
        # config with random weights, never downloaded); the tests run that comparison too.
        "test": ["pytest==9.2.0", "transformers==5.23.0"],
        "bench": ["transformers==5.23.0"],
    },
    include_package_data=True,
)
