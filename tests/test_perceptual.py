"""Perceptual backends: frozen eval modules, (B,) distances, offline behaviour of lpips / stlpips."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from coordgan_cli.errors import UserError
from coordgan_cli.perceptual import build_perceptual, torchvision_backbone_file


def _images(b: int = 2, size: int = 32, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=gen) * 2 - 1
    y = (x + 0.5 * torch.randn(b, 3, size, size, generator=gen)).clamp(-1, 1)
    return x.to(device), y.to(device)


def _check_backend(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    y = y.clone().requires_grad_(True)
    d = module(x, y)
    assert d.shape == (x.shape[0],)
    assert (d > 0).all()
    assert torch.allclose(module(x, x), torch.zeros_like(d), atol=1e-6)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0  # gradients reach the images …
    assert not any(p.requires_grad for p in module.parameters())  # … but never the network
    module.train()  # a parent's .train() must not switch dropout on
    assert not module.training and not any(m.training for m in module.modules())


def test_random_tiny(device: torch.device) -> None:
    module = build_perceptual("random-tiny", device)
    x, y = _images(device=device)
    _check_backend(module, x, y)
    assert torch.equal(build_perceptual("random-tiny", device)(x, y), module(x, y))  # fixed seed


def test_lpips_missing_backbone_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert torchvision_backbone_file("vgg") == expected
    with pytest.raises(UserError) as err:
        build_perceptual("lpips-vgg")
    assert str(expected) in err.value.message and "stlpips-vgg" in err.value.message
    assert not expected.exists()  # nothing was downloaded or created


def test_lpips_loads_a_placed_backbone_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    features = models.alexnet(weights=None).features.state_dict()
    path = torchvision_backbone_file("alex")
    path.parent.mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in features.items()}, path)
    module = build_perceptual("lpips-alex")
    assert torch.equal(module.net.net.slice1[0].weight, features["0.weight"])
    assert torch.equal(getattr(module.net.net.slice5, "10").weight, features["10.weight"])
    x, y = _images(size=64)
    _check_backend(module, x, y)
    path.write_bytes(b"not a weight file")
    with pytest.raises(UserError, match="alexnet-owt"):
        build_perceptual("lpips-alex")


def test_stlpips_works_offline() -> None:
    module = build_perceptual("stlpips-alex")
    x, y = _images(size=64)
    _check_backend(module, x, y)
    # Stand-ins for undeclared imports never stay behind.
    for name in ("IPython", "torchsummary"):
        mod = sys.modules.get(name)
        assert mod is None or getattr(mod, "__file__", None) is not None


def test_unknown_backend() -> None:
    with pytest.raises(UserError, match="unknown perceptual backend"):
        build_perceptual("vgg-ish")
