"""The model-zoo checks themselves, on a small bundle written here, and on every real bundle."""
import json
from pathlib import Path

from oct_foundation.experiments import zoo

ROOT = Path(__file__).resolve().parents[1]


def _meta(version="0.1.0"):
    import monai
    import numpy
    import torch

    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version,
        "changelog": {version: "first release"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "optional_packages_version": {"nibabel": "5.4.2"},
        "name": "Tiny check bundle",
        "task": "check the checks",
        "description": "a one-layer network",
        "authors": "oct-foundation",
        "copyright": "Copyright (c) oct-foundation contributors",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                                 "spatial_shape": ["8*n", "16*n", "16*n"], "dtype": "float32",
                                 "value_range": [0, 1]}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": ["8*n", "16*n", "16*n"], "dtype": "float32",
                                 "value_range": [0, 1]}},
        },
    }


README = "\n".join(f"# {s}\ntext\n" for s in
                   ("Overview", "Data", "Training configuration", "Input and output", "Performance", "Commands",
                    "References", "License"))


def _bundle(tmp_path: Path) -> Path:
    b = tmp_path / "tiny_bundle"
    (b / "configs").mkdir(parents=True)
    (b / "docs").mkdir()
    (b / "configs" / "metadata.json").write_text(json.dumps(_meta()))
    (b / "configs" / "logging.conf").write_text(LOGGING)
    net = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}
    common = {"imports": ["$import oct_foundation"], "bundle_root": str(b), "dataset_dir": "/tmp",
              "device": "$torch.device('cpu')", "network_def": net}
    infer = dict(common, inferer={"_target_": "SimpleInferer"}, preprocessing={"_target_": "Compose", "transforms": []},
                 dataset_data=[], dataset={"_target_": "Dataset", "data": "@dataset_data", "transform": "@preprocessing"},
                 evaluator={"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataset",
                            "network": "@network_def"})
    (b / "configs" / "inference.json").write_text(json.dumps(infer))
    (b / "docs" / "README.md").write_text(README)
    (b / "LICENSE").write_text("Apache-2.0")
    (b / "large_files.yml").write_text("large_files: []\n")
    return b


LOGGING = """[loggers]
keys=root
[handlers]
keys=consoleHandler
[formatters]
keys=fullFormatter
[logger_root]
level=INFO
handlers=consoleHandler
[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)
[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def test_valid_bundle_passes(tmp_path):
    chk = zoo.verify_bundle(_bundle(tmp_path))
    assert chk.ok, chk.results
    assert set(chk.results) >= {"files", "metadata", "readme", "net_in_out", "torchscript", "properties_infer"}


def test_each_defect_is_caught(tmp_path):
    b = _bundle(tmp_path)
    meta = _meta()
    meta["changelog"] = {"0.0.9": "older"}
    del meta["authors"]
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    (b / "configs" / "metadata.json").write_text(json.dumps(meta))
    (b / "docs" / "README.md").write_text("# Overview\n")
    (b / "LICENSE").unlink()
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    del cfg["evaluator"]
    (b / "configs" / "inference.json").write_text(json.dumps(cfg))
    chk = zoo.verify_bundle(b, export=False)
    assert not chk.ok
    assert "authors" in chk.results["metadata"]
    assert "LICENSE" in chk.results["files"]
    assert "performance" in chk.results["readme"]
    assert "output channel" in chk.results["net_in_out"]
    assert "evaluator" in chk.results["properties_infer"]
    meta["authors"] = "x"
    (b / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert "changelog has no entry" in zoo.verify_bundle(b, export=False).results["metadata"]
