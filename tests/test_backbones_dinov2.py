"""DINOv2 ViT backbones from a checkpoint file: the official and timm key layouts, the patch grid
and stride, features against a hand-written forward pass, size checks and one-line errors, and
``propagate --matcher features|classifier --backbone dinov2`` end to end (tiny random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coordgan_cli.backbones import backbone_names, load_backbone
from coordgan_cli.backbones.dinov2 import IMAGENET_MEAN, IMAGENET_STD, build_vit
from coordgan_cli.correspondence.hypercolumns import HypercolumnEncoder
from coordgan_cli.errors import UserError

timm = pytest.importorskip("timm")

from test_propagate_photos import photos, run  # noqa: E402,F401  (fixture: a folder of mixed-size JPEGs)

WIDTH, DEPTH, GRID = 128, 3, 4  # 2 heads of 64 (DINOv2's head width), a 4×4 position table (56 px)


def official_state(registers: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the facebookresearch/dinov2 key layout (the ``*_pretrain.pth`` files).

    Scales are large enough that every block, layer scale and norm changes the output."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    d, hidden = WIDTH, 4 * WIDTH
    state = {"cls_token": r(1, 1, d, scale=1.0), "pos_embed": r(1, 1 + GRID * GRID, d, scale=1.0),
             "mask_token": r(1, d), "patch_embed.proj.weight": r(d, 3, 14, 14, scale=0.05),
             "patch_embed.proj.bias": r(d), "norm.weight": r(d, scale=0.1, offset=1.0), "norm.bias": r(d)}
    if registers:
        state["register_tokens"] = r(1, registers, d, scale=1.0)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        state.update({
            p + "norm1.weight": r(d, scale=0.1, offset=1.0), p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d, scale=0.15), p + "attn.qkv.bias": r(3 * d),
            p + "attn.proj.weight": r(d, d, scale=0.1), p + "attn.proj.bias": r(d), p + "ls1.gamma": r(d, scale=0.5),
            p + "norm2.weight": r(d, scale=0.1, offset=1.0), p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(hidden, d, scale=0.1), p + "mlp.fc1.bias": r(hidden),
            p + "mlp.fc2.weight": r(d, hidden, scale=0.05), p + "mlp.fc2.bias": r(d), p + "ls2.gamma": r(d, scale=0.5),
        })
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """DINOv2's forward pass written out from the official tensors, for a normalised input of exactly
    the position table's size: per block, ((B, D, h, w) normed patch tokens, (B, D) normed class token)."""
    d = WIDTH
    heads = d // 64
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    ln = lambda t, name: F.layer_norm(t, (d,), state[name + ".weight"], state[name + ".bias"], eps=1e-6)  # noqa: E731
    t = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
    b, _, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([state["cls_token"].expand(b, -1, -1), t], dim=1) + state["pos_embed"]
    if registers:  # registers go in after the position embedding, between the class and patch tokens
        t = torch.cat([t[:, :1], state["register_tokens"].expand(b, -1, -1), t[:, 1:]], dim=1)
    outs = []
    for i in range(DEPTH):
        p = f"blocks.{i}."
        qkv = F.linear(ln(t, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.view(b, -1, 3, heads, 64).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8.0, dim=-1) @ v
        attn = F.linear(attn.transpose(1, 2).reshape(b, -1, d), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        t = t + state[p + "ls1.gamma"] * attn
        mlp = F.linear(F.gelu(F.linear(ln(t, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                       state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        t = t + state[p + "ls2.gamma"] * mlp
        normed = ln(t, "norm")
        patches = normed[:, 1 + registers:].transpose(1, 2).reshape(b, d, h, w)
        outs.append((patches, normed[:, 0]))
    return outs


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_registry_lists_the_dinov2_sizes():
    assert {"dinov2", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vits14_reg",
            "dinov2_vitb14_reg", "dinov2_vitl14_reg"} <= set(backbone_names())


@pytest.mark.parametrize("registers", [0, 4])
def test_official_checkpoint_gives_the_reference_forward_on_the_patch_grid(tmp_path, device, registers):
    state = official_state(registers)
    path = tmp_path / "tiny_pretrain.pth"
    torch.save(state, path)
    bb = load_backbone("dinov2", path, device, layers=["block0", "block2"])
    assert bb.stride == 14 and bb.grid_size(56, 56) == (GRID, GRID) and bb.channels == 2 * WIDTH
    x = torch.rand(2, 3, 56, 56)
    f = bb.features(x.to(device)).cpu()
    ref = reference_forward(state, normalise(x))
    want = torch.cat([F.normalize(ref[0][0], dim=1), F.normalize(ref[2][0], dim=1)], dim=1)
    assert f.shape == (2, 2 * WIDTH, GRID, GRID)
    assert torch.allclose(f, want, atol=1e-4), (f - want).abs().max()
    # Wrong block order or a skipped final norm would not pass this: blocks differ from each other.
    assert not torch.allclose(ref[0][0], ref[2][0], atol=1e-2)
    # The descriptor is the last block's class token after the final norm.
    d = bb.descriptor(x.to(device)).cpu()
    assert torch.allclose(d, F.normalize(ref[-1][1], dim=1), atol=1e-4)


def test_timm_layout_gives_timm_own_forward_at_any_input_size(tmp_path, device):
    net = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, embed_dim=WIDTH,
                            depth=DEPTH, num_heads=2, dynamic_img_size=True, init_values=0.5).eval()
    path = tmp_path / "timm.pth"
    torch.save(net.state_dict(), path)
    bb = load_backbone("dinov2", path, device, layers=["block1", "block2"])
    x = torch.rand(1, 3, 100, 60)
    f = bb.features(x.to(device)).cpu()
    # ⌈100/14⌉ × ⌈60/14⌉ patches: the input is resized to 8·14 × 5·14 and the position table
    # interpolated from 4×4.
    assert f.shape == (1, 2 * WIDTH, 8, 5) and bb.grid_size(100, 60) == (8, 5) and bb.input_size(100, 60) == (112, 70)
    resized = F.interpolate(x, size=(112, 70), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref = net.forward_intermediates(normalise(resized), indices=[1, 2], norm=True, intermediates_only=True)
    want = torch.cat([F.normalize(r, dim=1) for r in ref], dim=1)
    assert torch.allclose(f, want, atol=1e-4), (f - want).abs().max()


def test_both_layouts_and_a_training_checkpoint_of_the_same_weights_agree(tmp_path):
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = official_state(registers=4, seed=1)
    torch.save(state, tmp_path / "official.pth")
    # timm's own converter (the one its pretrained loader uses) gives the timm layout.
    model = build_vit({"width": WIDTH, "depth": DEPTH, "registers": 4, "grid": GRID, "mlp": 4 * WIDTH,
                       "layer_scale": True}, device="meta")  # only its shapes are read
    torch.save(checkpoint_filter_fn(dict(state), model), tmp_path / "timm.pth")
    # A DINOv2 training checkpoint: {"teacher": {"backbone.blocks.<chunk>.<i>.…", heads…}}.
    def chunk(key: str) -> str:  # blocks.N. → blocks.<N // 2>.N. (chunks of two blocks)
        if key.startswith("blocks."):
            n = int(key.split(".")[1])
            key = f"blocks.{n // 2}.{n}." + key.split(".", 2)[2]
        return "backbone." + key

    chunked = {chunk(k): v for k, v in state.items()}
    chunked["dino_head.last_layer.weight"] = torch.zeros(8, 4)
    assert "backbone.blocks.1.2.attn.qkv.weight" in chunked
    torch.save({"teacher": chunked}, tmp_path / "teacher_checkpoint.pth")
    x = torch.rand(1, 3, 70, 84)
    feats = [load_backbone("dinov2", tmp_path / n).features(x) for n in ("official.pth", "timm.pth",
                                                                          "teacher_checkpoint.pth")]
    assert torch.allclose(feats[0], feats[1], atol=1e-5) and torch.equal(feats[0], feats[2])


def test_stride_sets_the_grid_the_hypercolumn_encoder_expects(tmp_path):
    torch.save(official_state(), tmp_path / "w.pth")
    fine = load_backbone("dinov2", tmp_path / "w.pth", stride=7)
    coarse = load_backbone("dinov2", tmp_path / "w.pth")
    x = torch.rand(1, 3, 56, 56)
    # Stride 7 = the image enlarged twice at 14-px patches: an 8×8 grid for 56 px.
    upsampled = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False)
    assert torch.allclose(fine.features(x), coarse.features(upsampled), atol=1e-5)
    for bb, size in ((fine, 96), (coarse, 96), (coarse, 512)):
        enc = HypercolumnEncoder(bb, size)
        got = enc.encode([np.zeros((40, 30, 3), np.uint8)])
        assert tuple(got.shape[-2:]) == enc.grid == (-(-size // bb.stride),) * 2


def test_named_sizes_check_the_file_and_default_to_late_blocks(tmp_path):
    """timm's own ViT-S/14 DINOv2 (random weights) loads as dinov2_vits14 (blocks 5, 8, 11 by default);
    the same weights with registers are refused by name, pointing at dinov2_vits14_reg."""
    state = timm.create_model("vit_small_patch14_dinov2", pretrained=False).state_dict()
    assert state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    torch.save(state, tmp_path / "dinov2_vits14_pretrain.pth")
    bb = load_backbone("dinov2_vits14", tmp_path / "dinov2_vits14_pretrain.pth")
    assert bb.layers == ["block5", "block8", "block11"] and bb.channels == 3 * 384
    assert bb.features(torch.rand(1, 3, 28, 42)).shape == (1, 3 * 384, 2, 3)
    reg = dict(state, reg_token=torch.zeros(1, 4, 384), pos_embed=state["pos_embed"][:, 1:])
    torch.save(reg, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    with pytest.raises(UserError, match=r"dinov2_vits14_reg4_pretrain\.pth: not dinov2_vits14 weights .*"
                                        r"4 registers.*use --backbone dinov2_vits14_reg$"):
        load_backbone("dinov2_vits14", tmp_path / "dinov2_vits14_reg4_pretrain.pth")


def test_missing_and_wrong_files_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"dinov2_vitb14_pretrain\.pth: backbone weights file not found; place "
                                        r"the dinov2_vitb14 weights there \(the official DINOv2 file "
                                        r"dinov2_vitb14_pretrain\.pth, or timm's vit_base_patch14_dinov2"):
        load_backbone("dinov2_vitb14", tmp_path / "dinov2_vitb14_pretrain.pth")
    with pytest.raises(UserError, match=r"dinov2_vitl14_reg needs a weights file: pass --backbone-weights FILE "
                                        r"\(the official DINOv2 file dinov2_vitl14_reg4_pretrain\.pth"):
        load_backbone("dinov2_vitl14_reg")
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18\.pth: not a DINOv2 ViT state dict \(no patch_embed\.proj\.weight"):
        load_backbone("dinov2_vits14", tmp_path / "r18.pth")
    torch.save(official_state(), tmp_path / "tiny.pth")
    with pytest.raises(UserError, match=r"tiny\.pth: not dinov2_vits14 weights \(the file is a ViT of width 128, "
                                        r"3 blocks, 0 registers; dinov2_vits14 has 384, 12, 0\); use --backbone dinov2"):
        load_backbone("dinov2_vits14", tmp_path / "tiny.pth")
    broken = official_state()
    del broken["blocks.1.ls2.gamma"]
    broken["blocks.0.mlp.fc2.bias"] = torch.zeros(7)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(UserError, match=r"broken\.pth: not dinov2 weights \(missing \['blocks\.1\.ls2\.gamma'\]; "
                                        r"shape of blocks\.0\.mlp\.fc2\.bias is \(7,\), expected \(128,\)\)"):
        load_backbone("dinov2", tmp_path / "broken.pth")
    with pytest.raises(UserError, match=r"unknown layers \['block3'\]; choose from block0, block1, block2"):
        load_backbone("dinov2", tmp_path / "tiny.pth", layers=["block3"])


@pytest.mark.parametrize("matcher", ["features", "classifier"])
def test_propagate_runs_on_a_dinov2_checkpoint(photos, tmp_path, matcher):  # noqa: F811
    torch.save(official_state(registers=4), tmp_path / "tiny_reg4_pretrain.pth")
    out = tmp_path / "out"
    result = run(photos, out, "--matcher", matcher, "--backbone", "dinov2", "--backbone-weights",
                 str(tmp_path / "tiny_reg4_pretrain.pth"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["count"] == 3 and summary["matcher"] == matcher
    assert len(list((out / "labels").rglob("*.png"))) == 3


def test_propagate_names_the_dinov2_file_to_place(photos, tmp_path):  # noqa: F811
    result = run(photos, tmp_path / "out", "--matcher", "features", "--backbone", "dinov2_vits14")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dinov2_vits14_pretrain.pth" in errors[0], result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_suggest_picks_with_dinov2_class_tokens(tmp_path):
    from test_suggest_cli import _picture, _run

    from coordgan_cli.io.images import list_images, write_image
    from coordgan_cli.selection.descriptors import backbone_descriptors

    folder = tmp_path / "pool"
    for kind, n in {0: 3, 1: 2, 2: 2}.items():
        for v in range(n):
            write_image(folder / f"k{kind}_{v}.png", _picture(kind, v))
    torch.save(official_state(), tmp_path / "w.pth")
    summary = _run(folder, "--k", 3, "--out", tmp_path / "s", "--backbone", "dinov2", "--backbone-weights",
                   tmp_path / "w.pth")
    assert summary["descriptor"] == "dinov2" and len(summary["picks"]) == 3
    codes, kept = backbone_descriptors(list_images(folder), "dinov2", tmp_path / "w.pth", device=torch.device("cpu"))
    assert codes.shape == (7, WIDTH) and len(kept) == 7
    assert np.allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)


def test_train_matcher_data_adapts_a_head_on_dinov2(tmp_path):
    """``train-matcher --data`` on the ViT's hypercolumns, then ``propagate`` with that head."""
    from test_adapt import TINY, _run, smooth_image
    from PIL import Image

    from coordgan_cli.correspondence.projection_head import load_head

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(80, 100), (120, 90), (96, 96)]):
        Image.fromarray(smooth_image(h, w, i)).save(folder / f"p{i}.png")
    weights = tmp_path / "tiny_pretrain.pth"
    torch.save(official_state(), weights)
    out = tmp_path / "run"
    result = _run("train-matcher", "--data", folder, "--out", out, "--backbone", "dinov2", "--backbone-weights",
                  weights, *TINY, "--max-steps", "2")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["name"] == "dinov2"
    _, record = load_head(out / "latest.pt")
    assert record["layers"] == ["block0", "block1", "block2"] and record["channels"] == 3 * WIDTH
    (tmp_path / "q").mkdir()
    Image.fromarray(smooth_image(48, 80, 7)).save(tmp_path / "q" / "a.png")
    Image.fromarray(np.repeat(np.arange(2, dtype=np.uint8) + 1, 32)[None].repeat(64, 0), mode="L").save(
        tmp_path / "ref_mask.png")
    Image.fromarray(smooth_image(64, 64, 8)).save(tmp_path / "ref.png")
    labelled = _run("propagate", "--matcher", "features", "--matcher-ckpt", out / "latest.pt", "--backbone", "dinov2",
                    "--backbone-weights", weights, "--ref", tmp_path / "ref.png", "--mask", tmp_path / "ref_mask.png",
                    "--queries", tmp_path / "q", "--out", tmp_path / "labels", "--work-size", "96", "--json")
    assert labelled.exit_code == 0, labelled.output
    assert (tmp_path / "labels" / "labels" / "a.png").is_file()


def test_half_precision_file_loads_as_float32(tmp_path):
    state = official_state(registers=4)
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "half.pth")
    torch.save({k: v.half().float() for k, v in state.items()}, tmp_path / "full.pth")
    half, full = load_backbone("dinov2", tmp_path / "half.pth"), load_backbone("dinov2", tmp_path / "full.pth")
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in half.parameters())
    x = torch.rand(1, 3, 42, 56)
    assert torch.equal(half.features(x), full.features(x))
