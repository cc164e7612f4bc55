import numpy as np
import pytest
import torch

from oct_foundation.engines import BatchInference, EmbeddingProcessor
from oct_foundation.errors import CheckpointError
from oct_foundation.networks import VJEPA3D
from oct_foundation.networks.weights import load_weights


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return VJEPA3D(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
                   predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)


def _write_nifti(path, d, h=32, w=32, seed=0):
    import nibabel as nib

    arr = np.random.default_rng(seed).random((d, h, w)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([0.1, 0.004, 0.012, 1.0])), str(path))


def test_full_depth_embeddings_npy_and_tokens(tmp_path):
    _write_nifti(tmp_path / "a.nii.gz", 9, seed=1)  # odd depth: padded to 10 by edge replication
    _write_nifti(tmp_path / "b.nii.gz", 12, h=40, w=48, seed=2)  # resized in-plane to 32x32
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    net = tiny_net()
    with torch.no_grad():  # make the EMA target encoder differ from the context encoder
        for p in net.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    proc = EmbeddingProcessor(net, image_size=(32, 32), save_tokens=True, fmt="npy")
    rows = BatchInference(str(tmp_path), str(tmp_path / "out"), proc, summary_name="manifest.csv",
                          progress=False).run()
    by_status = {r["status"] for r in rows}
    assert by_status == {"done", "error"}
    done = sorted((r for r in rows if r["status"] == "done"), key=lambda r: int(r["depth"]))
    assert [r["depth"] for r in done] == [10, 12] and [r["grid"] for r in done] == ["5x4x4", "6x4x4"]
    for r in done:
        emb = np.load(tmp_path / "out" / r["embedding"])
        tok = np.load(tmp_path / "out" / r["tokens"])
        assert emb.shape == (32,) and tok.shape == (r["n_tokens"], 32)
        np.testing.assert_allclose(emb, tok.mean(0), rtol=1e-5, atol=1e-6)
    bad = next(r for r in rows if r["status"] == "error")
    assert "bad.nii.gz" not in bad["reason"]  # the summary never holds input paths
    # the target encoder is what is encoded (V-JEPA evaluates with it): same result as encode(target=True)
    item = proc.transforms({"image": str(tmp_path / "b.nii.gz")})
    x = item["image"].as_tensor()[None]
    with torch.no_grad():
        ref = net.encode(x, pool="mean", target=True)[0]
        ctx = net.encode(x, pool="mean", target=False)[0]
    got = np.load(tmp_path / "out" / done[1]["embedding"])
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, ctx.numpy(), atol=1e-4)


def test_memory_output_and_weights(tmp_path, memfs):
    _write_nifti(tmp_path / "a.nii.gz", 8)
    net = tiny_net(seed=1)
    path = str(tmp_path / "model.pt")
    torch.save(net.state_dict(), path)
    fresh = tiny_net(seed=2)
    assert load_weights(fresh, path).ok
    assert torch.equal(fresh.encoder.blocks[0].attn.qkv.weight, net.encoder.blocks[0].attn.qkv.weight)
    torch.save({"wrong": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_weights(tiny_net(), str(tmp_path / "bad.pt"))
    proc = EmbeddingProcessor(fresh, image_size=(32, 32))
    rows = BatchInference([str(tmp_path / "a.nii.gz")], "memory://emb", proc, progress=False).run()
    assert rows[0]["status"] == "done"
    import fsspec

    with fsspec.open(f"memory://emb/{rows[0]['embedding']}", "rb") as f:
        import io

        emb = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert emb.shape == (32,) and torch.isfinite(emb).all()


def test_vjepa_embedding_network_matches_processor(tmp_path):
    """The inference ``network_def`` (VJEPAEmbedding) loads a VJEPA3D state_dict as is and returns the pooled
    embedding that the processor writes (through a MONAI inferer), for both encoders."""
    from monai.inferers import SimpleInferer

    from oct_foundation.networks.embedding import VJEPAEmbedding

    net = tiny_net(seed=3)
    kw = dict(img_size=(8, 32, 32), patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=2,
              predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=2)
    with torch.no_grad():
        for p in net.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    _write_nifti(tmp_path / "a.nii.gz", 8, seed=4)
    x = None
    for target in (True, False):
        emb_net = VJEPAEmbedding(use_target_encoder=target, **kw)
        emb_net.load_state_dict(net.state_dict(), strict=True)  # same parameter names as VJEPA3D
        proc = EmbeddingProcessor(emb_net, image_size=(32, 32), use_target_encoder=target, inferer=SimpleInferer())
        loaded = proc.transforms({"image": str(tmp_path / "a.nii.gz")})  # what a MONAI Dataset hands over
        x = loaded["image"].as_tensor()[None]
        row = proc(loaded, str(tmp_path / f"e{int(target)}"))
        got = torch.load(tmp_path / row["embedding"], weights_only=True)
        with torch.no_grad():
            ref = emb_net.eval()(x)[0]
        assert ref.shape == (32,)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ref, net.encode(x, pool="mean", target=target)[0].detach(), rtol=1e-4, atol=1e-5)
