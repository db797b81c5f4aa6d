"""``classifier`` matcher: a DatasetGAN-style pixel classifier trained on the references.

``fit_arrays`` encodes the references' hypercolumns, projects them onto their first
``dims`` principal components (fitted on the references, so training and inference are cheap),
and trains an ensemble of small MLPs (dims [+ position] → hidden → hidden → K) to predict each
cell's class from its feature, seconds on a CPU. ``predict_proba`` runs the ensemble on the
query's cells: the probabilities are the members' mean, and the confidence is that mean's
winning share times the fraction of members whose own argmax agrees (low where they disagree).
Cells are trained at ``label_scale``× the feature grid (features bilinearly upsampled) so small
parts (lights, eyes) keep some cells.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from coordgan_cli.correspondence.hypercolumns import (HypercolumnEncoder, check_image, pca_basis, position_channels,
                                                      soft_labels)
from coordgan_cli.correspondence.backbone_matcher import BackboneMatcher
from coordgan_cli.correspondence.upsample import upsample_probabilities


def _mlp(inputs: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
                         nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.BatchNorm1d(hidden // 2),
                         nn.Linear(hidden // 2, classes))


class PixelClassifierMatcher(BackboneMatcher):
    """Ensemble of small MLPs on hypercolumns (+ position), trained on the references.

    Args:
        encoder: backbone at a working resolution.
        members: MLPs in the ensemble (each its own seed and data order).
        dims: PCA components kept (0 = raw hypercolumns).
        hidden: first hidden width.
        steps: optimiser steps per member; batch: cells per step; lr: Adam learning rate.
        position: append (x, y) (and ``position_frequencies`` sin/cos octaves) to every cell.
        label_scale: training/inference grid = feature grid × this.
        flip_swap, refine: as in ``FeatureVoteMatcher`` (mirrored references; edge refinement).
        seed: base seed; member m uses seed + m.
        class_balance: α of the part-class balancing of the ensemble's probabilities (as in
            ``FeatureVoteMatcher``: the classifier learns the references' class frequencies as
            its prior; 0 = keep them).
    """

    name = "classifier"

    def __init__(self, encoder: HypercolumnEncoder, *, members: int = 4, dims: int = 128, hidden: int = 128,
                 steps: int = 300, batch: int = 2048, lr: float = 3e-3, position: bool = True,
                 position_frequencies: int = 0, position_scale: float = 1.0, label_scale: int = 2,
                 flip_swap: Optional[dict[int, int] | str] = "auto", refine: bool = True,
                 seed: int = 0, class_balance: float = 0.5) -> None:
        self.encoder = encoder
        self.class_balance = self.check_class_balance(class_balance)
        self._balance: Optional[torch.Tensor] = None
        self.members = int(members)
        self.dims = int(dims)
        self.hidden = int(hidden)
        self.steps = int(steps)
        self.batch = int(batch)
        self.lr = float(lr)
        self.position = bool(position)
        self.position_frequencies = int(position_frequencies)
        self.position_scale = float(position_scale)
        self.label_scale = int(label_scale)
        self.flip_swap = flip_swap
        self.refine = bool(refine)
        self.seed = int(seed)
        self.classes: list[int] = []
        self._mean: Optional[torch.Tensor] = None
        self._basis: Optional[torch.Tensor] = None
        self._models: list[nn.Module] = []

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.encoder.grid
        return h * self.label_scale, w * self.label_scale

    def _cells(self, feats: torch.Tensor) -> torch.Tensor:
        """(C, h, w) hypercolumns → (h'·w', D) inputs on the label grid (PCA, position)."""
        c, h, w = feats.shape
        flat = feats.reshape(c, -1).t()
        if self._basis is not None:
            flat = (flat - self._mean) @ self._basis
        x = flat.t().reshape(-1, h, w)
        if self.label_scale != 1:
            x = F.interpolate(x[None], size=self.grid, mode="bilinear", align_corners=False)[0]
        if self.position:
            pos = torch.from_numpy(position_channels(self.grid, self.position_frequencies)).to(x.device)
            x = torch.cat([x, self.position_scale * pos], dim=0)
        return x.reshape(x.shape[0], -1).t().contiguous()

    def settings(self) -> dict:
        """What the propagate resume key records."""
        return self.backbone_settings() | {
            "members": self.members, "dims": self.dims, "hidden": self.hidden, "steps": self.steps,
            "position": self.position, "refine": self.refine, "seed": self.seed,
            "class_balance": self.class_balance}

    def fit_arrays(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   classes: Optional[Sequence[int]] = None, *,
                   names: Optional[dict[int, str]] = None) -> "PixelClassifierMatcher":
        """Train the ensemble. images: (H, W, 3) uint8; masks: (H, W) uint8 ids of the same size;
        classes: ids to predict (default: those in the masks, 255 excluded), sorted."""
        images, masks, _ = self.prepare_references(images, masks, classes, names)
        feats = [self.encoder.encode([im])[0] for im in images]
        self._mean, self._basis = None, None
        if self.dims > 0:
            flat = torch.cat([f.reshape(f.shape[0], -1) for f in feats], dim=1).t()
            self._mean, self._basis = pca_basis(flat, self.dims, self.seed)
        xs, ys = [], []
        for f, m in zip(feats, masks):
            x = self._cells(f)
            shares = soft_labels(m, self.classes, self.grid).reshape(len(self.classes), -1)
            keep = shares.sum(axis=0) > 0.5
            xs.append(x[torch.from_numpy(keep).to(x.device)])
            ys.append(torch.from_numpy(shares.argmax(axis=0)[keep]).to(x.device))
        x, y = torch.cat(xs), torch.cat(ys)
        self._scale = x.std(dim=0).clamp_min(1e-6)
        self._shift = x.mean(dim=0)
        x = (x - self._shift) / self._scale
        self._balance = self.balance_weights(torch.bincount(y, minlength=len(self.classes)))
        self._models = [self._train_member(x, y, self.seed + m) for m in range(self.members)]
        return self

    def _train_member(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        torch.manual_seed(seed)
        model = _mlp(x.shape[1], self.hidden, len(self.classes)).to(x.device)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, self.steps))
        model.train()
        n = x.shape[0]
        for _ in range(self.steps):
            idx = torch.randint(0, n, (min(self.batch, n),), generator=gen).to(x.device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return model.eval()

    @torch.inference_mode()
    def predict_grid(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs (K, h', w'), agreement (h', w')) float32 on the label grid."""
        if not self._models:
            raise RuntimeError("call fit_arrays (or fit) before predicting")
        x = (self._cells(self.encoder.encode([check_image(image)])[0]) - self._shift) / self._scale
        member_probs = torch.stack([torch.softmax(m(x), dim=1) for m in self._models])  # (M, n, K)
        member_probs = member_probs * self._balance.to(member_probs.device)  # the references' prior out
        member_probs = member_probs / member_probs.sum(dim=2, keepdim=True).clamp_min(1e-8)
        mean = member_probs.mean(dim=0)
        winner = mean.argmax(dim=1)
        agreement = (member_probs.argmax(dim=2) == winner).float().mean(dim=0)
        h, w = self.grid
        return (mean.t().reshape(len(self.classes), h, w).cpu().numpy().astype(np.float32),
                agreement.reshape(h, w).cpu().numpy().astype(np.float32))

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        """(probs (K, H, W) float32 over ``self.classes``, confidence (H, W) float32) at the image's size.

        confidence = winning mean share × fraction of members agreeing with the winner.
        """
        image = check_image(image)
        grid_probs, agreement = self.predict_grid(image)
        probs = upsample_probabilities(grid_probs, image.shape[:2], image if self.refine else None)
        import cv2

        agree = cv2.resize(agreement, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return probs, (probs.max(axis=0) * agree).astype(np.float32)
