"""V-JEPA 2.1's dense predictive loss: predictions and targets at every token, context tokens included."""
import torch
import torch.nn.functional as F

from oct_foundation.networks import MultiBlockMask3D, VJEPA3D

IMG, GRID = (8, 32, 48), (4, 4, 6)


def _model(**kw):
    torch.manual_seed(0)
    return VJEPA3D(img_size=IMG, patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=4,
                   predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=4, **kw)


def test_dense_outputs_cover_context_then_targets():
    model = _model(dense_loss=True)
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, *IMG)
    ctx, tgt = MultiBlockMask3D(num_blocks=3)(2, GRID, torch.Generator().manual_seed(0))
    nc, nt = ctx.shape[1], tgt.shape[1]
    pred, target = model.jepa_forward(x, ctx, tgt)
    assert pred.shape == target.shape == (2, nc + nt, 32)
    full = F.layer_norm(model.target_encoder(x), (32,))
    idx = torch.cat([ctx, tgt], 1)
    torch.testing.assert_close(target, torch.gather(full, 1, idx[..., None].expand(-1, -1, 32)))
    # the target part equals the masked-only prediction; the context part is the predictor's output there
    pred_m, target_m = model.jepa_forward(x, ctx, tgt, dense=False)
    assert pred_m.shape == (2, nt, 32)
    torch.testing.assert_close(pred[:, nc:], pred_m)
    torch.testing.assert_close(target[:, nc:], target_m)
    z = model.encoder(x, masks=ctx)
    torch.testing.assert_close(pred, model.predictor(z, ctx, tgt, GRID, return_context=True))
    # the dense loss is a different objective: gradients flow from the context positions as well
    dense_loss = model.jepa_loss(pred, target)
    ctx_only = model.jepa_loss(pred[:, :nc], target[:, :nc])
    assert not torch.allclose(dense_loss, model.jepa_loss(pred_m, target_m))
    model.zero_grad()
    ctx_only.backward()
    assert model.predictor.predictor_proj.weight.grad.abs().sum() > 0
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_dense_with_two_mask_configurations_and_default_off():
    model = _model()
    assert model.dense_loss is False
    assert _model(dense_loss="false").dense_loss is False and _model(dense_loss="true").dense_loss is True
    x = torch.randn(1, 1, *IMG)
    gen = torch.Generator().manual_seed(1)
    masks = [MultiBlockMask3D(num_blocks=n)(1, GRID, gen) for n in (2, 4)]
    preds, targets = model.jepa_forward(x, [m[0] for m in masks], [m[1] for m in masks], dense=True)
    for (c, t), p, tg in zip(masks, preds, targets):
        assert p.shape == tg.shape == (1, c.shape[1] + t.shape[1], 32)
    preds, _ = model.jepa_forward(x, [m[0] for m in masks], [m[1] for m in masks])
    assert [p.shape[1] for p in preds] == [m[1].shape[1] for m in masks]
