"""The V-JEPA 2.1 predictor and objective against a reference rebuilt from the public code.

The reference below follows facebookresearch/vjepa2 ``app/vjepa_2_1/models/predictor.py``
(``VisionTransformerPredictor`` as ``src/hub/backbones.py`` builds it for the released files) step by step, written
out for the test: ``predictor_embed`` (``Linear(E, P)`` for one level, ``Linear(L*E, E)``, GELU, ``Linear(E, P)``
for ``L`` levels); one mask token per target; context and mask tokens concatenated and *sorted by token index*;
``video_mod_embed`` / ``img_mod_embed`` added to every token; blocks with 2.1 RoPE (adjacent pairs rotated by
``pos / 10000**(j / (a/2))`` per depth/height/width chunk of ``a = 2 * ((head_dim // 3) // 2)`` channels, token
indices split with the square grid side, height/width positions rescaled by ``(16 - 1) / (side - 1)`` with
``interpolate_rope``); ``predictor_norm``; unsorted; ``predictor_proj`` on the targets and
``predictor_proj_context`` on the context (``return_all_tokens``). The loss follows ``app/vjepa_2_1/train.py``:
the target encoder's hierarchical outputs (each through its ``norms_block``) layer-normed chunk by chunk, L1 on
the targets plus ``lambda`` times L1 on the context tokens, averaged over the masks.

Files are written in the released layout (``module.backbone.`` keys; the encoder under ``ema_encoder`` for the
distilled ViT-B/L, ``target_encoder`` for g/G; the predictor under ``predictor``) with random non-trivial weights
and tiny widths; everything else comes from the presets.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oct_foundation import io as oio
from oct_foundation.errors import CheckpointError
from oct_foundation.networks import MultiBlockMask3D, VJEPA3D
from oct_foundation.networks.pretrained import load_pretrained
from oct_foundation.networks.vit3d import VisionTransformer3D
from oct_foundation.networks.vjepa_presets import VJEPA_CHECKPOINT_FILES, get_checkpoint_preset
from tests.networks.rope21_reference import RefBlock, rope_block

E, DEPTH, HEADS = 48, 4, 2  # encoder head_dim 24
P, P_DEPTH, P_HEADS = 40, 2, 2  # predictor head_dim 20: three rotated chunks of 6 + 2 unrotated channels
TEACHER = 24  # stands in for the distilled files' 1664-channel ViT-G teacher
IMG = (4, 64, 64)
GRID = (2, 4, 4)  # square: the public predictor splits token indices with its square grid side
SIDE = 4


class Ref21Predictor(nn.Module):
    """The public 2.1 predictor's parameters and forward, for the test only."""

    def __init__(self, levels, out_dim, n_tokens=8, interpolate_rope=True):
        super().__init__()
        if levels == 1:
            self.predictor_embed = nn.Linear(E, P)
        else:
            self.predictor_embed = nn.Sequential(nn.Linear(levels * E, E), nn.GELU(), nn.Linear(E, P))
        self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, P)) for _ in range(n_tokens)])
        self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, P))
        self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, P))
        self.predictor_blocks = nn.ModuleList([RefBlock(P) for _ in range(P_DEPTH)])
        self.predictor_norm = nn.LayerNorm(P, eps=1e-6)
        self.predictor_proj = nn.Linear(P, levels * out_dim)
        self.predictor_proj_context = nn.Linear(P, levels * out_dim)
        self.interpolate_rope = interpolate_rope

    def forward(self, x, masks_x, masks_y, mod="video", mask_index=0):
        b = x.shape[0]
        x = self.predictor_embed(x)
        n_ctx = x.shape[1]
        token = self.mask_tokens[mask_index % len(self.mask_tokens)]
        pred = token.repeat(b, masks_y.shape[1], 1)  # the mask token gathered at the target positions
        x = torch.cat([x, pred], 1)
        masks = torch.cat([masks_x, masks_y], 1)
        order = torch.argsort(masks, dim=1)
        masks = torch.stack([masks[i, r] for i, r in enumerate(order)])
        x = torch.stack([x[i, r] for i, r in enumerate(order)])
        x = x + (self.img_mod_embed if mod == "image" else self.video_mod_embed)
        frame = masks // (SIDE * SIDE)
        height = (masks - frame * SIDE * SIDE) // SIDE
        width = masks - frame * SIDE * SIDE - height * SIDE
        d_pos, h_pos, w_pos = frame * 1.0, height * 1.0, width * 1.0
        if self.interpolate_rope:
            h_pos, w_pos = h_pos * (16 - 1) / (SIDE - 1), w_pos * (16 - 1) / (SIDE - 1)
        for blk in self.predictor_blocks:
            x = rope_block(blk, x, P_HEADS, (d_pos, h_pos, w_pos))
        x = self.predictor_norm(x)
        back = torch.argsort(order, dim=1)
        x = torch.stack([x[i, r] for i, r in enumerate(back)])
        return self.predictor_proj(x[:, n_ctx:]), self.predictor_proj_context(x[:, :n_ctx])


def _perturb(module, sharpen=None):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for blk in getattr(module, sharpen, []) if sharpen else []:  # sharp attention: positions matter
            blk.attn.qkv.weight.mul_(4.0)
    return module


def _preset(name, **over):
    """The preset's 2.1 encoder and predictor options on tiny widths (the distilled teacher width too)."""
    kw = get_checkpoint_preset(name)
    kw.update(img_size=IMG, embed_dim=E, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, predictor_embed_dim=P,
              predictor_depth=P_DEPTH, predictor_num_heads=P_HEADS)
    if kw["predictor_kwargs"].get("out_embed_dim") is not None:
        kw["predictor_kwargs"]["out_embed_dim"] = TEACHER
    for k, v in over.items():
        if k == "predictor_kwargs":
            kw[k].update(v)
        else:
            kw[k] = v
    torch.manual_seed(0)
    return VJEPA3D(**kw)


def _official_file(path, name, ref_pred):
    """A file in the released 2.1 layout: RGB encoder under the file's key, predictor under ``predictor``."""
    torch.manual_seed(3)
    enc = _perturb(VisionTransformer3D(in_chans=3, img_size=IMG, patch_size=16, tubelet_size=2, embed_dim=E,
                                       depth=DEPTH, num_heads=HEADS, rope_variant="rotary",
                                       **get_checkpoint_preset(name)["encoder_kwargs"]))
    key = VJEPA_CHECKPOINT_FILES[name]["encoder_key"]
    ckpt = {key: {f"module.backbone.{k}": v.clone() for k, v in enc.state_dict().items()},
            "predictor": {f"module.backbone.{k}": v.clone() for k, v in ref_pred.state_dict().items()},
            "epoch": 7}
    oio.torch_save(ckpt, path)
    return enc


def _masks(n_blocks=(2, 3), batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [MultiBlockMask3D(num_blocks=n)(batch, GRID, gen) for n in n_blocks]


@pytest.mark.parametrize("name,levels", [("vjepa2_1_vitb_384", 1), ("vjepa2_1_vitl_384", 1),
                                         ("vjepa2_1_vitg_384", 4), ("vjepa2_1_vitG_384", 4)])
def test_official_21_file_loads_encoder_and_predictor_strictly_and_predictor_matches(tmp_path, name, levels,
                                                                                    capsys):
    assert VJEPA_CHECKPOINT_FILES[name]["predictor"] is True
    model = _preset(name).eval()
    assert model.predictor.num_levels == levels and len(model.predictor.mask_tokens) == 8
    out = TEACHER if levels == 1 else E
    torch.manual_seed(1)
    ref = _perturb(Ref21Predictor(levels, out), "predictor_blocks").eval()
    path = str(tmp_path / "vjepa2_1.pt")
    enc = _official_file(path, name, ref)
    report = load_pretrained(model, path)  # strict, no allow-list
    assert not report.missing and not report.unexpected and not report.mismatched
    assert "predictor <- file 'predictor'" in report.notes
    assert capsys.readouterr().out.count("(format: ") == 1  # one report table
    for k, v in ref.state_dict().items():  # every predictor tensor as in the file, name for name
        torch.testing.assert_close(model.predictor.state_dict()[k], v, rtol=0, atol=0)
    assert torch.equal(model.target_encoder.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        for i, (ctx, tgt) in enumerate(_masks()):
            z = torch.randn(2, ctx.shape[1], levels * E)
            want_t, want_c = ref(z, ctx, tgt, mask_index=i)
            got = model.predictor(z, ctx, tgt, GRID, mask_index=i, return_context=True)
            assert got.shape == (2, ctx.shape[1] + tgt.shape[1], levels * out)
            torch.testing.assert_close(got[:, ctx.shape[1]:], want_t, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got[:, :ctx.shape[1]], want_c, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(model.predictor(z, ctx, tgt, GRID, mask_index=i), want_t, atol=1e-4,
                                       rtol=1e-4)
        # a single B-scan: image modality embedding, one token row
        ctx1, tgt1 = torch.tensor([[0, 2, 5, 7, 9, 12]]), torch.tensor([[1, 3, 4, 15]])
        z = torch.randn(1, 6, levels * E)
        grid1 = (1, SIDE, SIDE)
        got = model.predictor(z, ctx1, tgt1, grid1, mask_index=3, modality="image")
        torch.testing.assert_close(got, ref(z, ctx1, tgt1, mod="image", mask_index=3)[0], atol=1e-4, rtol=1e-4)
        assert (got - model.predictor(z, ctx1, tgt1, grid1, mask_index=3)).abs().max() > 1e-3


def test_predictor_options_each_matter_and_hub_style_rope():
    """interpolate_rope (the 2.1 training code's choice) and the hub builder's plain RoPE both reproduce the
    reference with the same option; mixing them, or dropping the modality embedding, changes the output."""
    torch.manual_seed(2)
    ref_i = _perturb(Ref21Predictor(4, E), "predictor_blocks").eval()
    ref_p = Ref21Predictor(4, E, interpolate_rope=False).eval()
    ref_p.load_state_dict(ref_i.state_dict())
    ctx, tgt = _masks(batch=1)[1]
    z = torch.randn(1, ctx.shape[1], 4 * E)
    with torch.no_grad():
        for interp, ref in ((True, ref_i), (False, ref_p)):
            m = _preset("vjepa2_1_vitg_384", predictor_kwargs=dict(interpolate_rope=interp)).eval()
            m.predictor.load_state_dict(ref_i.state_dict())
            got = m.predictor(z, ctx, tgt, GRID, return_context=True)
            torch.testing.assert_close(got[:, ctx.shape[1]:], ref(z, ctx, tgt)[0], atol=1e-4, rtol=1e-4)
        assert (ref_i(z, ctx, tgt)[0] - ref_p(z, ctx, tgt)[0]).abs().max() > 1e-2
        no_mod = _preset("vjepa2_1_vitg_384", predictor_kwargs=dict(modality_embedding=False)).eval()
        sd = {k: v for k, v in ref_i.state_dict().items() if "mod_embed" not in k}
        no_mod.predictor.load_state_dict(sd)
        with torch.no_grad():
            ref_i.video_mod_embed.normal_(std=0.5)
        assert (no_mod.predictor(z, ctx, tgt, GRID) - ref_i(z, ctx, tgt)[0]).abs().max() > 1e-2


def _official_loss(model, ref, x, masks, lam):
    """``app/vjepa_2_1/train.py``: targets = hierarchical outputs chunk-wise layer-normed; L1 on the targets plus
    ``lam`` times L1 on the context, each averaged over the masks."""
    with torch.no_grad():
        h = torch.cat(model.target_encoder.hierarchical_outputs(x), -1)
        h = torch.cat([F.layer_norm(h[..., i * E:(i + 1) * E], (E,)) for i in range(4)], -1)
    loss_pred = loss_ctx = 0.0
    for i, (ctx, tgt) in enumerate(masks):
        z = torch.cat(model.encoder.hierarchical_outputs(x, masks=ctx), -1)  # the encoder's training output
        z_pred, z_ctx = ref(z, ctx, tgt, mask_index=i)
        loss_pred = loss_pred + (z_pred - torch.gather(h, 1, tgt[..., None].expand(-1, -1, 4 * E))).abs().mean()
        loss_ctx = loss_ctx + (z_ctx - torch.gather(h, 1, ctx[..., None].expand(-1, -1, 4 * E))).abs().mean()
    return loss_pred / len(masks) + lam * loss_ctx / len(masks), loss_pred / len(masks)


def test_21_objective_uses_all_levels_and_the_context_tokens():
    model = _preset("vjepa2_1_vitg_384", dense_loss=True)
    assert model.context_loss_weight == 0.5
    _perturb(model.target_encoder, "blocks")
    _perturb(model.encoder, "blocks")
    _perturb(model.predictor, "predictor_blocks")
    ref = Ref21Predictor(4, E)
    ref.load_state_dict(model.predictor.state_dict())  # the package's predictor has the public names
    x = torch.rand(2, 1, *IMG)
    masks = _masks()
    pred, target = model.jepa_forward(x, [c for c, _ in masks], [t for _, t in masks])
    assert len(pred) == 4 and len(target) == 5  # targets of mask 0, 1, context of mask 0, 1; weights
    assert pred[0].shape == (2, masks[0][1].shape[1], 4 * E) and pred[2].shape == (2, masks[0][0].shape[1], 4 * E)
    torch.testing.assert_close(target[-1], torch.tensor([0.5, 0.5, 0.25, 0.25]))
    loss = model.jepa_loss(pred, target)
    want, want_pred_only = _official_loss(model, ref, x, masks, 0.5)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    # wiring checks: dropping the context term, or supervising the last level only, gives another loss
    assert (loss - want_pred_only).abs() > 1e-3
    last = torch.stack([(p[..., -E:] - t[..., -E:]).abs().mean() for p, t in zip(pred, target)])
    assert (loss - (last * target[-1]).sum()).abs() > 1e-3
    torch.testing.assert_close(model.jepa_loss([p.float() for p in pred], [t.float() for t in target]), loss)
    # the same masks without the dense loss: the target term alone
    p2, t2 = model.jepa_forward(x, [c for c, _ in masks], [t for _, t in masks], dense=False)
    torch.testing.assert_close(model.jepa_loss(p2, t2), want_pred_only, atol=1e-5, rtol=1e-5)
    # gradients reach the context projection and the shallowest level's norm (a predictor input)
    model.zero_grad()
    loss.backward()
    assert model.predictor.predictor_proj_context.weight.grad.abs().sum() > 0
    assert model.encoder.norms_block[0].weight.grad.abs().sum() > 0
    assert model.predictor.predictor_embed[0].weight.grad.abs().sum() > 0
    # the shallowest target level enters the loss: changing only its norm changes the loss
    with torch.no_grad():
        model.target_encoder.norms_block[0].weight.mul_(torch.linspace(0.2, 3.0, E))
        assert (model.jepa_loss(*model.jepa_forward(x, [c for c, _ in masks], [t for _, t in masks])) - loss
                ).abs() > 1e-4


def test_distilled_predictor_runs_but_trains_only_with_new_projections(tmp_path):
    model = _preset("vjepa2_1_vitl_384")
    ctx, tgt = _masks(batch=1)[0]
    x = torch.rand(1, 1, *IMG)
    with pytest.raises(ValueError, match="vjepa2_1_vitl_384_jepa"):
        model.jepa_forward(x, ctx, tgt)
    with torch.no_grad():
        z = model.context_features(x, ctx)
        assert model.predictor(z, ctx, tgt, GRID).shape == (1, tgt.shape[1], TEACHER)
    # the training preset: the file's encoder and predictor blocks, projections to the model's own width
    torch.manual_seed(1)
    ref = _perturb(Ref21Predictor(1, TEACHER))
    path = str(tmp_path / "vjepa2_1_vitl.pt")
    _official_file(path, "vjepa2_1_vitl_384", ref)
    from oct_foundation.networks.presets import get_preset

    kw = get_preset("vjepa2_1_vitl_384_jepa")
    assert kw["predictor_kwargs"]["out_embed_dim"] is None and kw["predictor_kwargs"]["num_levels"] == 1
    own = _preset("vjepa2_1_vitl_384", dense_loss=True, predictor_kwargs=dict(out_embed_dim=None))
    report = load_pretrained(own, path, allow_missing=["predictor.predictor_proj*"], print_report=False)
    assert sorted(report.allowed_mismatched) == ["predictor.predictor_proj.bias", "predictor.predictor_proj.weight",
                                                 "predictor.predictor_proj_context.bias",
                                                 "predictor.predictor_proj_context.weight"]
    assert torch.equal(own.predictor.predictor_blocks[1].mlp.fc1.weight, ref.predictor_blocks[1].mlp.fc1.weight)
    pred, target = own.jepa_forward(x, ctx, tgt)
    assert [p.shape[-1] for p in pred] == [E, E] and len(target) == 3
    assert torch.isfinite(own.jepa_loss(pred, target))


def test_21_predictor_file_into_20_predictor_fails_with_hint(tmp_path):
    torch.manual_seed(1)
    ref = _perturb(Ref21Predictor(4, E))
    path = str(tmp_path / "v.pt")
    _official_file(path, "vjepa2_1_vitg_384", ref)
    kw = get_checkpoint_preset("vjepa2_1_vitg_384")
    kw.update(img_size=IMG, embed_dim=E, depth=DEPTH, num_heads=HEADS, mlp_ratio=4.0, predictor_embed_dim=P,
              predictor_depth=P_DEPTH, predictor_num_heads=P_HEADS, predictor_kwargs={}, context_loss_weight=None)
    with pytest.raises(CheckpointError, match="V-JEPA 2.1 predictor"):
        load_pretrained(VJEPA3D(**kw), path, print_report=False)


def test_21_options_are_validated():
    with pytest.raises(ValueError, match="hierarchical_norms"):
        VJEPA3D(img_size=IMG, embed_dim=E, depth=DEPTH, num_heads=HEADS, predictor_embed_dim=P,
                predictor_depth=1, predictor_num_heads=P_HEADS, predictor_kwargs=dict(num_levels=4))
    with pytest.raises(ValueError, match="context_proj"):
        VJEPA3D(img_size=IMG, embed_dim=E, depth=DEPTH, num_heads=HEADS, predictor_embed_dim=P,
                predictor_depth=1, predictor_num_heads=P_HEADS, context_loss_weight=0.5)
    m = _preset("vjepa2_1_vitg_384")
    with pytest.raises(ValueError, match="channels"):
        m.predictor(torch.zeros(1, 3, E), torch.tensor([[0, 1, 2]]), torch.tensor([[3]]), GRID)
