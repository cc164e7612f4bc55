"""V-JEPA model: predictor, targets, loss, EMA, gradients, overfitting a fixed batch, autocast."""
import pytest
import torch
import torch.nn.functional as F

from oct_foundation.networks import MultiBlockMask3D, Predictor3D, VJEPA3D, default_mask_generators

IMG = (4, 32, 48)  # grid (2, 4, 6), 48 tokens
GRID = (2, 4, 6)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matrices: thread start-up costs more than it gains, and a shared machine makes it much worse
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(**kw):
    args = dict(
        img_size=IMG, patch_size=8, tubelet_size=2, embed_dim=32, depth=2, num_heads=4,
        predictor_embed_dim=32, predictor_depth=1, predictor_num_heads=4,
    )
    args.update(kw)
    return VJEPA3D(**args)


def _masks(batch=2, seed=0, **kw):
    return MultiBlockMask3D(num_blocks=3, **kw)(batch, GRID, torch.Generator().manual_seed(seed))


def test_forward_returns_encoder_tokens():
    model = _model().eval()
    x = torch.randn(2, 1, *IMG)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 48, 32)
    torch.testing.assert_close(out, model.encoder(x))
    assert model.grid_size(*IMG) == GRID
    assert model.encode(x).shape == (2, 32)
    torch.testing.assert_close(model.encode(x), out.mean(1))
    assert model.encode(x, pool=None).shape == (2, 48, 32)
    torch.testing.assert_close(model.encode(x, target=True, pool=None), model.target_encoder(x))
    with pytest.raises(ValueError):
        model.encode(x, pool="max")


def test_jepa_forward_targets_are_layer_normed_target_features():
    model = _model()
    x = torch.randn(2, 1, *IMG)
    ctx, tgt = _masks()
    with torch.no_grad():  # make the two encoders differ, so the test tells them apart
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pred, target = model.jepa_forward(x, ctx, tgt)
    assert pred.shape == target.shape == (2, tgt.shape[1], 32)
    full = F.layer_norm(model.target_encoder(x), (32,))
    torch.testing.assert_close(target, torch.gather(full, 1, tgt[..., None].expand(-1, -1, 32)))
    torch.testing.assert_close(target.mean(-1), torch.zeros_like(target[..., 0]), atol=1e-5, rtol=0)
    assert not target.requires_grad
    # the predictor sees the context encoder on the context tokens only
    z = model.encoder(x, masks=ctx)
    torch.testing.assert_close(pred, model.predictor(z, ctx, tgt, GRID, mask_index=0))
    loss = model.jepa_loss(pred, target)
    torch.testing.assert_close(loss, (pred - target).abs().mean())


def test_target_encoder_gets_no_gradient():
    model = _model()
    assert all(not p.requires_grad for p in model.target_encoder.parameters())
    x = torch.randn(2, 1, *IMG)
    ctx, tgt = _masks()
    model.jepa_loss(*model.jepa_forward(x, ctx, tgt)).backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    for name, p in model.predictor.named_parameters():
        # one mask configuration: only the first of the two mask tokens is used
        assert (p.grad is None) == (name == "mask_tokens.1"), name


def test_ema_update_matches_formula():
    model = _model()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before_t = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    ctx = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.ema_update(0.9)
    after = model.target_encoder.state_dict()
    for k in before_t:
        torch.testing.assert_close(after[k], 0.9 * before_t[k] + 0.1 * ctx[k])
    model.ema_update(0.0)
    for k, v in model.target_encoder.state_dict().items():
        torch.testing.assert_close(v, ctx[k])


def test_multiple_mask_configurations_share_one_target_pass():
    model = _model()
    x = torch.randn(2, 1, *IMG)
    g = torch.Generator().manual_seed(3)
    pairs = [m(2, GRID, g) for m in default_mask_generators()]
    calls = []
    model.target_encoder.register_forward_hook(lambda *a: calls.append(1))
    preds, targets = model.jepa_forward(x, [p[0] for p in pairs], [p[1] for p in pairs])
    assert len(calls) == 1 and len(preds) == len(targets) == 2
    for (c, t), p, tt in zip(pairs, preds, targets):
        assert p.shape == tt.shape == (2, t.shape[1], 32)
    expected = torch.stack([(p - t).abs().mean() for p, t in zip(preds, targets)]).mean()
    torch.testing.assert_close(model.jepa_loss(preds, targets), expected)
    # the second configuration uses the second mask token
    torch.testing.assert_close(
        preds[1], model.predictor(model.encoder(x, masks=pairs[1][0]), pairs[1][0], pairs[1][1], GRID, mask_index=1)
    )
    with pytest.raises(ValueError):
        model.jepa_forward(x, [pairs[0][0]], [p[1] for p in pairs])


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_predictor_is_position_aware_and_equivariant(pos_embed):
    # a larger init than V-JEPA's 0.02 makes attention far from uniform, so position effects are visible
    pred = Predictor3D(32, 32, depth=2, num_heads=4, pos_embed=pos_embed, zero_init_mask_tokens=False, init_std=0.3)
    pred.eval()
    ctx, tgt = _masks(batch=1)
    z = torch.randn(1, ctx.shape[1], 32)
    out = pred(z, ctx, tgt, GRID)
    assert out.shape == (1, tgt.shape[1], 32)
    # the same mask token at different positions gives different predictions
    assert (out[0, 0] - out[0, 1]).abs().max() > 0.05 * out[0, 0].abs().max()
    # permuting the target list permutes the predictions (each target keeps its own position)
    perm = torch.randperm(tgt.shape[1])
    torch.testing.assert_close(pred(z, ctx, tgt[:, perm], GRID), out[:, perm], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        pred(z, ctx[:, :-1], tgt, GRID)


def test_predictor_state_dict_names_follow_vjepa2():
    keys = set(Predictor3D(32, 16, depth=1, num_heads=2, num_mask_tokens=2).state_dict())
    assert {"predictor_embed.weight", "mask_tokens.0", "mask_tokens.1", "predictor_blocks.0.attn.qkv.weight",
            "predictor_norm.weight", "predictor_proj.weight"} <= keys


@pytest.mark.parametrize("pos_embed,steps,factor", [("rope", 60, 0.6), ("sincos", 30, 0.5)])
def test_loss_decreases_when_overfitting_a_fixed_batch(pos_embed, steps, factor):
    torch.manual_seed(0)
    model = _model(pos_embed=pos_embed)
    x = torch.randn(2, 1, *IMG)
    ctx, tgt = _masks()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model.jepa_loss(*model.jepa_forward(x, ctx, tgt))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.ema_update(0.99)
        losses.append(loss.item())
    # layer-normed targets start near mean |N(0, 1)| = 0.8; memorising the batch must drive the loss well below
    assert losses[-1] < factor * losses[0], losses


def test_bf16_autocast_training_step_on_cpu():
    model = _model()
    x = torch.randn(2, 1, *IMG)
    ctx, tgt = _masks()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred, target = model.jepa_forward(x, ctx, tgt)
        loss = model.jepa_loss(pred, target)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())


def test_activation_checkpointing_and_sdpa_flags_reach_all_parts():
    model = _model(use_activation_checkpointing=True, use_sdpa=False)
    assert model.encoder.use_activation_checkpointing and model.predictor.use_activation_checkpointing
    assert not model.encoder.use_sdpa and not model.predictor.predictor_blocks[0].attn.use_sdpa
    ref = _model()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(1, 1, *IMG)
    ctx, tgt = _masks(batch=1)
    a = model.jepa_loss(*model.jepa_forward(x, ctx, tgt))
    b = ref.jepa_loss(*ref.jepa_forward(x, ctx, tgt))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
