"""coordgan_cli.inference: loading, the structure path, codes, reconstructions, pairing errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coordgan_cli.errors import UserError
from coordgan_cli.inference import (
    check_generator_pairing, colourise_correspondence, load_correspondence_model, resolve_checkpoint,
)
from coordgan_cli.io.checkpoint import file_sha256, load_checkpoint

from tiny_checkpoints import make_encoder_checkpoint, make_generator_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inference")
    gen = make_generator_checkpoint(d / "gen.pt")
    enc = make_encoder_checkpoint(d / "enc.pt", gen)
    other = make_generator_checkpoint(d / "other.pt", seed=5)
    return {"gen": gen, "enc": enc, "other": other}


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + 7 * i, 36 - 3 * i, 3), dtype=np.uint8) for i in range(n)]


def test_structure_path_matches_reference(ckpts, device):
    model = load_correspondence_model(ckpts["enc"], device)
    images = _images(3)
    maps = model.correspondence_maps(images, sizes=[(17, 23), (32, 32), (64, 40)], batch_size=2)
    assert [m.shape for m in maps] == [(2, 17, 23), (2, 32, 32), (2, 64, 40)]
    assert all(m.dtype == np.float32 and np.abs(m).max() <= 1.0 for m in maps)
    # Straightforward reference: resize each image (no crop), encode alone, warp on its grid.
    for img, m, size in zip(images, maps, [(17, 23), (32, 32), (64, 40)]):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            w = model.encoder.encode_structure(x)
            ref = model.generator.warp(w, size)[0].cpu().numpy()
        np.testing.assert_allclose(m, ref, atol=1e-5)
    default = model.correspondence_maps(images[:1])
    assert default[0].shape == (2, model.map_size, model.map_size)


def test_codes_reconstruction_features(ckpts, device):
    model = load_correspondence_model(ckpts["enc"], device)
    images = _images(3, seed=1)
    ws, wt = model.encode(images, batch_size=2)
    assert ws.shape == (3, model.latent_dim) and wt.shape == (3, model.n_latent, model.latent_dim)
    # The structure path's code is the full encoder's structure code.
    s_only = model.structure_codes(images).cpu().numpy()
    np.testing.assert_allclose(s_only, ws, atol=1e-5)
    recon = model.reconstruct(images, batch_size=2)
    assert len(recon) == 3 and recon[0].shape == (32, 32, 3) and recon[0].dtype == np.uint8
    assert np.array_equal(recon[0], model.reconstruct(images[:1])[0])  # constant noise: deterministic
    feats = model.features(images)
    assert feats[0].shape == (32, 16, 16)


def test_encoder_checkpoint_records_its_generator(ckpts):
    data = load_checkpoint(ckpts["enc"])
    assert data["kind"] == "encoder"
    assert data["extra"]["generator_sha256"] == file_sha256(ckpts["gen"])
    check_generator_pairing(data, file_sha256(ckpts["gen"]), ckpts["enc"], ckpts["gen"])
    with pytest.raises(UserError, match="trained against the generator checkpoint"):
        check_generator_pairing(data, file_sha256(ckpts["other"]), ckpts["enc"], ckpts["other"])


def test_generator_checkpoint_is_refused_or_sampling_only(ckpts):
    with pytest.raises(UserError, match="needs? an encoder checkpoint"):
        load_correspondence_model(ckpts["gen"], "cpu")
    model = load_correspondence_model(ckpts["gen"], "cpu", allow_generator_only=True)
    assert model.encoder is None and model.kind == "generator"
    with pytest.raises(UserError, match="encoder checkpoint"):
        model.correspondence_maps(_images(1))
    w_s, w_plus = model.sample_codes(3)
    w_s2, _ = model.sample_codes(3)
    assert torch.equal(w_s, w_s2) and w_plus.shape == (1, model.n_latent, model.latent_dim)


def test_shipped_model_missing_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="not shipped"):
        resolve_checkpoint(None, "no-such-model")
    with pytest.raises(UserError, match="no model given"):
        resolve_checkpoint(None, None)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.pt"):
        load_correspondence_model(bad, "cpu")


def test_colourise_correspondence():
    m = np.stack([np.full((2, 3), -1.0), np.full((2, 3), 1.0)]).astype(np.float32)
    m[0, 0, 0] = 0.0
    rgb = colourise_correspondence(m)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[1, 1]) == (0, 255, 0)
    assert tuple(rgb[0, 0]) == (128, 255, 0)
