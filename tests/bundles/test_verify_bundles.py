"""The bundles pass ``scripts/verify_bundles.py`` (``oct_foundation.experiments.zoo.main``): metadata against the
schema, changelog and versions, README sections, ``verify_net_in_out``, TorchScript export (or a documented
reason), MONAI's train / infer property checks, and the collection checks (top-level metadata.json, file sizes)."""
from __future__ import annotations

BUNDLES = ["oct_vjepa_pretrain", "oct_maisi_vae_encode", "oct_layer_segmentation", "oct_disease_classification",
           "oct_latent_diffusion"]


def test_verify_bundles_command_passes(capsys):
    from oct_foundation.experiments.zoo import main

    rc = main(list(BUNDLES))
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(("(collection)", f"{len(BUNDLES)}"))]
    for name in BUNDLES:  # every check ran and passed; none skipped (every network exports to TorchScript)
        checks = {ln.split()[1]: " ".join(ln.split()[2:]) for ln in lines if ln.split()[0] == name}
        assert {"files", "metadata", "readme", "net_in_out", "torchscript", "properties_infer"} <= set(checks), out
        assert all(v == "ok" for v in checks.values()), out
    assert f"{len(BUNDLES) + 1} passed, 0 failed" in out
