"""The GPU path: CUDA bf16 autocast and fp16 with GradScaler JEPA steps, the SDPA flash / memory-efficient kernels
against the math kernel, MAISI ``norm_float16`` under CUDA autocast, and a one-process ``nccl`` DDP step. Every test
skips without CUDA; ``scripts/gpu_check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import pytest
import torch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _net():
    from oct_foundation.networks import VJEPA3D

    torch.manual_seed(0)
    return VJEPA3D(img_size=(8, 64, 64), patch_size=16, tubelet_size=2, embed_dim=128, depth=2, num_heads=4,
                   predictor_embed_dim=64, predictor_depth=1, predictor_num_heads=4)


def _step(net, x, dtype, scaler=None):
    from oct_foundation.networks.masking import MultiBlockMask3D

    ctx, tgt = MultiBlockMask3D()(x.shape[0], net.grid_size(*x.shape[2:]), torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cuda", dtype=dtype):
        pred, target = net.jepa_forward(x, ctx.cuda(), tgt.cuda())
        loss = net.jepa_loss(pred.float(), target.float())
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return float(loss)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_jepa_step_under_cuda_autocast_matches_float32(dtype):
    x = torch.rand(2, 1, 8, 64, 64, device="cuda")
    net32 = _net().cuda()
    from oct_foundation.networks.masking import MultiBlockMask3D

    ctx, tgt = MultiBlockMask3D()(2, net32.grid_size(8, 64, 64), torch.Generator().manual_seed(0))
    with torch.no_grad():
        p32, t32 = net32.jepa_forward(x, ctx.cuda(), tgt.cuda())
        ref = float(net32.jepa_loss(p32, t32))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loss = _step(_net().cuda(), x, dtype, scaler)
    assert abs(loss - ref) < 0.05 * abs(ref) + 1e-3, (loss, ref)


@cuda
@pytest.mark.parametrize("backend", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
def test_sdpa_kernels_agree_with_math(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = _net().cuda().eval()
    x = torch.rand(2, 1, 8, 64, 64, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.MATH]):
            ref = net.encoder(x).float()
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            got = net.encoder(x).float()
    assert torch.allclose(got, ref, atol=3e-2, rtol=3e-2), (got - ref).abs().max()


@cuda
def test_maisi_norm_float16_under_cuda_autocast():
    from oct_foundation.networks.maisi import StackedVideoVAE

    torch.manual_seed(0)
    small = {"num_channels": [8, 8, 8], "num_res_blocks": [1, 1, 1], "norm_num_groups": 8}
    ref = StackedVideoVAE(small).cuda().eval()
    half = StackedVideoVAE({**small, "norm_float16": True}, autocast="fp16").cuda().eval()
    half.autoencoder.load_state_dict(ref.autoencoder.state_dict())
    x = torch.rand(1, 1, 8, 32, 32, device="cuda")
    with torch.no_grad():
        z_ref, z_half = ref.encode(x), half.encode(x)
    assert z_half.shape == z_ref.shape and torch.isfinite(z_half).all()
    assert (z_half.float() - z_ref).abs().mean() < 0.05 * z_ref.abs().mean() + 1e-3


@cuda
def test_nccl_ddp_step_one_process(tmp_path):
    import torch.distributed as dist

    from oct_foundation.networks.vjepa3d import JEPAObjective

    if not dist.is_nccl_available():
        pytest.skip("nccl not available")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        net = _net().cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(JEPAObjective(net), device_ids=[0])
        from oct_foundation.networks.masking import MultiBlockMask3D

        x = torch.rand(2, 1, 8, 64, 64, device="cuda")
        ctx, tgt = MultiBlockMask3D()(2, net.grid_size(8, 64, 64), torch.Generator().manual_seed(0))
        pred, target = ddp(x, ctx.cuda(), tgt.cuda())
        net.jepa_loss(pred, target).backward()
        assert all(p.grad is not None for p in net.encoder.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
