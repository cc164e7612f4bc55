"""Command-line options mean what they say: every boolean key of every bundle config read as a user types it
(``--amp false``, ``--unet_attention_levels "[false, false]"``) is False, a bad value or a mistyped key fails before
any work starts. Through the real ``python -m monai.bundle run`` in a subprocess."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oct_foundation.config import OCTConfigError, parse_bool, type_overrides

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"

# (bundle, config files merged in this order); multi_gpu configs need torchrun and are covered by the bundle tests
CASES = [
    ("oct_vjepa_pretrain", ["train.json"]),
    ("oct_vjepa_pretrain", ["train.json", "evaluate.json"]),
    ("oct_vjepa_pretrain", ["inference.json"]),
    ("oct_disease_classification", ["train.json"]),
    ("oct_disease_classification", ["inference.json"]),
    ("oct_layer_segmentation", ["train.json"]),
    ("oct_layer_segmentation", ["inference.json"]),
    ("oct_maisi_vae_encode", ["inference.json", "evaluate.json"]),
    ("oct_maisi_vae_encode", ["inference.json", "decode.json"]),
    ("oct_latent_diffusion", ["train_autoencoder.json"]),
    ("oct_latent_diffusion", ["train_diffusion.json"]),
    ("oct_latent_diffusion", ["inference.json", "evaluate.json"]),
]


def _merged(bundle, files):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(f=[str(BUNDLES / bundle / "configs" / f) for f in files])
    return parser.get()


def _bool_keys(config):
    out = {}
    for key, value in config.items():
        if isinstance(value, bool):
            out[key] = "false"
        elif isinstance(value, list) and value and all(isinstance(v, bool) for v in value):
            out[key] = "[" + ", ".join(["false"] * len(value)) + "]"
    return out


def _cli(bundle, files, *args, timeout=240):
    cfg = BUNDLES / bundle / "configs"
    paths = [str(cfg / f) for f in files]
    config_arg = paths[0] if len(paths) == 1 else "[" + ",".join(f"'{p}'" for p in paths) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg,
           "--meta_file", str(cfg / "metadata.json"), "--logging_file", str(cfg / "logging.conf"), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout)


def test_unknown_key_fails_before_any_work_naming_the_nearest_key(tmp_path):
    root = tmp_path / "root"
    proc = _cli("oct_vjepa_pretrain", ["train.json"], "--bundle_root", str(root), "--num_epoch", "1")
    assert proc.returncode != 0
    assert "unknown key num_epoch; did you mean num_epochs?" in proc.stderr
    assert not root.exists(), "work started before the unknown key was reported"


def test_bad_boolean_value_is_an_error_naming_key_and_value(tmp_path):
    proc = _cli("oct_vjepa_pretrain", ["inference.json"], "--output_dir", str(tmp_path / "o"), "--overwrite", "maybe")
    assert proc.returncode != 0
    assert "--overwrite 'maybe' is not a boolean" in proc.stderr


def test_type_overrides_rules():
    declared = {"amp": False, "levels": [True, True], "num_epochs": 10, "lr": 1e-3, "name": "x",
                "train": {"trainer": {"max_epochs": 1}}, "items": [1, 2]}
    got = type_overrides(declared, {"amp": "False", "levels": "[false, no]", "num_epochs": "3", "lr": "2e-4",
                                    "name": "false", "train#trainer#max_epochs": 2, "train#trainer#new": 1,
                                    "items#1": 5, "meta_file": "m.json"})
    assert got == {"amp": False, "levels": [False, False], "num_epochs": 3, "lr": 2e-4, "name": "false",
                   "train#trainer#max_epochs": 2, "train#trainer#new": 1, "items#1": 5}
    assert type_overrides(declared, {"amp": "$torch.cuda.is_available()"}) == {"amp": "$torch.cuda.is_available()"}
    for bad, message in [({"amp": "maybe"}, "--amp 'maybe' is not a boolean"),
                         ({"num_epochs": "ten"}, "--num_epochs 'ten' is not a number"),
                         ({"levels": "[false, perhaps]"}, "--levels 'perhaps' is not a boolean"),
                         ({"nme": 1}, "unknown key nme; did you mean name?"),
                         ({"trian#trainer#max_epochs": 1}, "unknown key trian#trainer#max_epochs"),
                         ({"amp#x": 1}, "unknown key amp#x")]:
        with pytest.raises(OCTConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
            type_overrides(declared, bad)
    assert [parse_bool(v) for v in ("true", "FALSE", "Yes", "no", "1", "0", 1, 0, True)] == \
        [True, False, True, False, True, False, True, False, True]


def _probe(config):
    """A ``run`` list that prints every boolean key of ``config`` (as the workflow resolves it) in one line."""
    keys = _bool_keys(config)
    return "[\"$print('PROBE', repr({" + ", ".join(f"'{k}': @{k}" for k in keys) + "}))\"]", keys


# every config as it is run: the diffusion training config only with the inference config it extends
BOOL_CASES = [(b, ["inference.json", "train_diffusion.json"] if f == ["train_diffusion.json"] else f) for b, f in CASES]


@pytest.mark.parametrize("bundle,files", BOOL_CASES, ids=[f"{b}:{'+'.join(f)}" for b, f in BOOL_CASES])
def test_every_boolean_key_typed_false_on_the_command_line_is_false(bundle, files, tmp_path):
    """``--key false`` (and ``"[false, false]"`` for lists) for every boolean key at once, on the real command
    line; ``initialize`` is only the command-line check (no data or weights needed), ``run`` prints the values."""
    config = _merged(bundle, files)
    run, keys = _probe(config)
    assert keys, f"{bundle} {files}: no boolean keys found"
    args = ["--bundle_root", str(tmp_path / "root"), "--initialize", '["$oct_foundation.config.check_cli()"]',
            "--run", run]
    for key, value in keys.items():
        args += [f"--{key}", value]
    proc = _cli(bundle, files, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next((l for l in proc.stdout.splitlines() if l.startswith("PROBE ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    got = ast.literal_eval(line[len("PROBE "):])
    assert set(got) == set(keys)
    for key, value in got.items():
        declared = config[key]
        expected = [False] * len(declared) if isinstance(declared, list) else False
        assert value == expected and all(v is False for v in (value if isinstance(value, list) else [value])), \
            f"--{key} {keys[key]} reached the config as {value!r}"


def test_freeze_false_means_no_frozen_encoder_parameter(tmp_path):
    """``--freeze false`` for both downstream bundles: the built network trains every encoder parameter."""
    tiny = ["--d_target", "4", "--image_size", "[32, 32]", "--patch_size", "8", "--embed_dim", "32", "--depth", "2",
            "--num_heads", "2", "--encoder_source", "random"]
    for bundle in ("oct_disease_classification", "oct_layer_segmentation"):
        run = "[\"$print('PROBE', all(p.requires_grad for p in @network_def.encoder.parameters()))\"]"
        proc = _cli(bundle, ["train.json"], "--bundle_root", str(tmp_path / bundle), "--freeze", "false",
                    "--initialize", '["$oct_foundation.config.check_cli()"]', "--run", run, *tiny)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "PROBE True" in proc.stdout, (bundle, proc.stdout[-2000:])
