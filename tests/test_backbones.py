"""Backbone registry: the shipped Inception, user weight files, and the errors for missing ones."""

from __future__ import annotations

import pytest
import torch
import torchvision

from coordgan_cli.backbones import backbone_names, load_backbone
from coordgan_cli.errors import UserError


def test_registry_lists_shipped_and_user_weight_backbones():
    names = backbone_names()
    assert "inception" in names and "resnet50" in names and "resnet18" in names


def test_inception_ships_and_gives_hypercolumns_at_its_stride(device):
    bb = load_backbone("inception", device=device, layers=["conv_4", "mixed_2"], stride=8)
    x = torch.rand(2, 3, 100, 84, device=device)
    f = bb.features(x)
    assert f.shape == (2, 192 + 288, 13, 11) == (2, bb.channels, *bb.grid_size(100, 84))
    # Each layer is unit-norm per position, so the column norm is √(number of layers).
    assert torch.allclose(f.norm(dim=1), torch.full((2, 13, 11), 2 ** 0.5, device=device), atol=1e-3)
    # Deterministic, and images differ → features differ.
    assert torch.equal(f, bb.features(x))
    assert not torch.allclose(f[0], f[1])


def test_inception_descriptor_is_unit_and_separates_images(device):
    bb = load_backbone("inception", device=device)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 96), indexing="ij")
    disc = (xx ** 2 + yy ** 2 < 0.4).float()
    a = torch.stack([disc, 1 - disc, 0.2 * torch.ones_like(disc)])[None]  # red disc on green
    stripes = (torch.sin(yy * 12) > 0).float()
    b = torch.stack([stripes, stripes, 1 - stripes])[None]  # yellow / blue stripes
    x = torch.cat([a, a * 0.9 + 0.05, b]).to(device)
    d = bb.descriptor(x)
    assert d.shape == (3, 2048)
    assert torch.allclose(d.norm(dim=1), torch.ones(3, device=device), atol=1e-4)
    sim = d @ d.t()
    assert sim[0, 1] > sim[0, 2]  # a dimmed copy is nearer than a different image


def test_user_weights_file_is_loaded(tmp_path, device):
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    bb = load_backbone("resnet18", path, device, layers=["layer1", "layer2", "layer3"], stride=8)
    assert torch.equal(bb.net.conv1.weight.cpu(), net.conv1.weight)
    f = bb.features(torch.rand(1, 3, 64, 48, device=device))
    assert f.shape == (1, 64 + 128 + 256, 8, 6)
    # Same weights → the same activations as torchvision's own forward pass up to layer3.
    net.eval()
    x = torch.rand(1, 3, 64, 64)
    ref = net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(bb.normalise_input(x.to(device)).cpu())))))))
    got = bb.layer_outputs(bb.normalise_input(x.to(device)), ["layer3"])[0]
    assert torch.allclose(got.cpu(), ref, atol=1e-5)


def test_missing_weights_file_names_the_file(tmp_path):
    missing = tmp_path / "resnet50-0676ba61.pth"
    with pytest.raises(UserError, match=r"resnet50-0676ba61\.pth: backbone weights file not found"):
        load_backbone("resnet50", missing)
    with pytest.raises(UserError, match="resnet50 needs a weights file: pass --backbone-weights"):
        load_backbone("resnet50")


def test_wrong_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=r"r18\.pth: not resnet50 weights"):
        load_backbone("resnet50", path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"junk\.pth: cannot read resnet18 weights"):
        load_backbone("resnet18", junk)


def test_unknown_backbone_and_layer():
    with pytest.raises(UserError, match="unknown backbone 'vit9'"):
        load_backbone("vit9")
    with pytest.raises(UserError, match="unknown layers"):
        load_backbone("inception", layers=["mixed_99"])
