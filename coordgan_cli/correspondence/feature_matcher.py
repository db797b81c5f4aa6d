"""``features`` matcher: a soft k-nearest-neighbour vote on pretrained hypercolumns.

Every reference is encoded once (``fit_arrays``): its hypercolumns at the working resolution
and its mask's class shares on the same grid, all references pooled into one candidate set
(optionally with left/right-mirrored copies). A query cell takes the k most similar reference
cells (cosine) and averages their class shares with softmax(cos / temperature) weights; an
optional position term adds ``position_weight``·(x, y) to every vector, so that, on aligned
data like faces, a match prefers the same place. The (K, h, w) probabilities are upsampled to
the query's own size.

Left/right parts look alike locally (a car's left door is a mirrored right door), so pooling the
references with their mirrored copies mixes the sides. ``side="view"`` makes the side a separate,
per-query decision: the pooled vote decides *what* a cell is with each left/right pair merged,
and the side of every paired part comes from whichever half of the candidates — the references
as given, or their mirrored copies — matches the query's cells better (mean similarity of the k
best matches, weighted by how likely each cell is a part). A whole view is seen from one side,
so this is one decision per query; the pairs are found from the names as for ``flip_swap``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from coordgan_cli.correspondence.hypercolumns import (HypercolumnEncoder, check_image, pca_basis, position_channels,
                                                      soft_labels)
from coordgan_cli.correspondence.backbone_matcher import BackboneMatcher
from coordgan_cli.correspondence.upsample import upsample_probabilities


class FeatureVoteMatcher(BackboneMatcher):
    """Soft kNN vote on backbone hypercolumns, references fused.

    Args:
        encoder: backbone at a working resolution.
        k: neighbours per query cell.
        temperature: softmax temperature on cosine similarities.
        position_weight: weight of the (x, y) cell position appended to the unit feature vector
            (0 = appearance only).
        flip_swap: None = no mirrored references; else class id → mirror id (``mirror_pairs``),
            and every reference is also used flipped left↔right with its classes renamed;
            "auto" = the table from the label names given to ``fit`` / ``fit_arrays(names=…)``.
        top_references: 0 = vote over every reference's cells; M > 0 = only over the M
            references (mirrored copies counted apart) whose layout is most like the query's:
            their (D, h, w) unit features average-pooled to a ``layout_grid``² grid, compared by
            cosine. Pooling keeps where things are, so a car facing left picks references facing
            left — which local features alone cannot tell (left and right doors look alike).
        layout_grid: side of that pooling grid.
        refine: snap the upsampled probabilities to the query's edges (guided filter).
        dims: project hypercolumns onto their first ``dims`` principal components, fitted on the
            references (0 = keep all C): the similarity costs O(dims) instead of O(C) per pair.
        side: "pooled" = every candidate votes for the side too; "view" = pairs merged for the
            vote, the side per query from the better-matching half (as given / mirrored), see the
            module doc. Only matters with mirrored references and left/right pairs.
        background_weight: the vote share of class 0 (background) is multiplied by this before
            the probabilities are normalised (< 1 = lean towards parts where the vote hesitates).
        class_balance: α of the part-class balancing: each part class's vote share is multiplied
            by (its share of the references' part area / the mean part share)^-α, so a small part
            (a mirror, a light) is not outvoted by a large one (a bumper) only because the
            references hold more of the large one's cells — a kNN vote's posterior carries the
            references' class frequencies as its prior. Background keeps weight 1 (leaning
            towards or away from it is ``background_weight``'s job). 0 = the plain vote.
        chunk: query cells per similarity block (bounds memory to chunk × reference cells).
    """

    name = "features"

    def __init__(self, encoder: HypercolumnEncoder, *, k: int = 16, temperature: float = 0.05,
                 position_weight: float = 0.5, flip_swap: Optional[dict[int, int] | str] = "auto",
                 refine: bool = True, dims: int = 128, top_references: int = 0, layout_grid: int = 4,
                 side: str = "pooled", background_weight: float = 1.0, class_balance: float = 0.5,
                 chunk: int = 1024) -> None:
        if side not in ("pooled", "view"):
            raise ValueError(f"side must be 'pooled' or 'view', got {side!r}")
        self.encoder = encoder
        self.k = int(k)
        self.temperature = float(temperature)
        self.position_weight = float(position_weight)
        self.flip_swap = flip_swap
        self.refine = bool(refine)
        self.dims = int(dims)
        self.top_references = int(top_references)
        self.layout_grid = int(layout_grid)
        self.side = side
        self.background_weight = float(background_weight)
        self.class_balance = self.check_class_balance(class_balance)
        self._balance: Optional[torch.Tensor] = None  # (K,) per-class vote weights
        self._pairs: list[tuple[int, int]] = []  # (index, index) of left/right classes in self.classes
        self._mirrored: Optional[torch.Tensor] = None  # (N,) bool: key from a mirrored reference
        self._owner: Optional[torch.Tensor] = None
        self._layouts: Optional[torch.Tensor] = None
        self.chunk = int(chunk)
        self._mean: Optional[torch.Tensor] = None
        self._basis: Optional[torch.Tensor] = None
        self.classes: list[int] = []
        self._keys: Optional[torch.Tensor] = None
        self._values: Optional[torch.Tensor] = None

    def settings(self) -> dict:
        """What the propagate resume key records."""
        return self.backbone_settings() | {
            "k": self.k, "temperature": self.temperature, "position_weight": self.position_weight,
            "dims": self.dims, "top_references": self.top_references, "refine": self.refine, "side": self.side,
            "background_weight": self.background_weight,
            "class_balance": self.class_balance}

    def fit_arrays(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   classes: Optional[Sequence[int]] = None, *,
                   names: Optional[dict[int, str]] = None) -> "FeatureVoteMatcher":
        """Encode references. images: (H, W, 3) uint8; masks: (H, W) uint8 ids of the same size;
        classes: the class ids to predict (default: the ids in the masks, 255 excluded), sorted."""
        originals = len(images)
        images, masks, swap = self.prepare_references(images, masks, classes, names)
        index = {c: i for i, c in enumerate(self.classes)}
        self._pairs = sorted({tuple(sorted((index[a], index[b]))) for a, b in (swap or {}).items()
                              if a != b and a in index and b in index})
        encoded = [self.encoder.encode([im])[0] for im in images]
        self._mean, self._basis = None, None
        if self.dims > 0:
            flat = torch.cat([F.normalize(f, dim=0).reshape(f.shape[0], -1) for f in encoded], dim=1).t()
            self._mean, self._basis = pca_basis(flat, self.dims)
        keys, values, owner, layouts = [], [], [], []
        for r, (raw, m) in enumerate(zip(encoded, masks)):
            feats = self._keys_of(raw)
            layouts.append(self._layout_of(feats))
            labels = torch.from_numpy(soft_labels(m, self.classes, self.encoder.grid))
            keep = labels.sum(dim=0).reshape(-1) > 0.5  # cells mostly ignored or of other classes add noise
            keys.append(feats.reshape(feats.shape[0], -1)[:, keep])
            values.append(labels.reshape(len(self.classes), -1)[:, keep].to(feats.device))
            owner.append(torch.full((int(keep.sum()),), r, dtype=torch.long))
        self._keys = torch.cat(keys, dim=1)  # (D, N)
        self._owner = torch.cat(owner).to(self._keys.device)  # (N,) reference index of each key
        self._mirrored = self._owner >= originals
        self._layouts = torch.stack(layouts)  # (R, L)
        self._values = torch.cat(values, dim=1).t().contiguous()  # (N, K)
        self._balance = self.balance_weights(self._values.sum(dim=0))
        return self

    def _keys_of(self, feats: torch.Tensor) -> torch.Tensor:
        """(C, h, w) hypercolumns → (D, h, w) unit vectors (plus the weighted position)."""
        feats = F.normalize(feats, dim=0)
        if self._basis is not None:
            c, h, w = feats.shape
            projected = (feats.reshape(c, -1).t() - self._mean) @ self._basis
            feats = F.normalize(projected.t().reshape(-1, h, w), dim=0)
        if self.position_weight > 0:
            pos = torch.from_numpy(position_channels(tuple(feats.shape[1:]))).to(feats.device)
            feats = torch.cat([feats, self.position_weight * pos], dim=0)
        return feats

    def _layout_of(self, feats: torch.Tensor) -> torch.Tensor:
        """(D, h, w) keys → (L,) unit layout descriptor (appearance channels pooled on a grid)."""
        appearance = feats[: feats.shape[0] - (2 if self.position_weight > 0 else 0)]
        pooled = F.adaptive_avg_pool2d(appearance[None], self.layout_grid)[0]
        return F.normalize(pooled.reshape(-1), dim=0)

    def candidate_keys(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys (D, N'), values (N', K), mirrored (N',) bool) a query (D, h, w) is matched
        against: all references' cells, or those of the ``top_references`` with the most similar
        layout."""
        if self.top_references <= 0 or self.top_references >= len(self._layouts):
            return self._keys, self._values, self._mirrored
        chosen = torch.topk(self._layouts @ self._layout_of(q), self.top_references).indices
        keep = torch.isin(self._owner, chosen)
        return self._keys[:, keep], self._values[keep], self._mirrored[keep]

    def predict_grid(self, image: np.ndarray) -> np.ndarray:
        """(K, h, w) float32 class probabilities on the working grid."""
        if self._keys is None:
            raise RuntimeError("call fit_arrays (or fit) before predicting")
        q = self._keys_of(self.encoder.encode([check_image(image)])[0])
        d, h, w = q.shape
        keys, values, mirrored = self.candidate_keys(q)
        q = q.reshape(d, -1).t()
        halves = (~mirrored, mirrored)
        by_view = self.side == "view" and bool(self._pairs) and all(bool(m.any()) for m in halves)
        if by_view:
            # Keys from mirrored references come last: one similarity block, three top-k's.
            out, given, mirror = self._vote(q, keys, values, split=int((~mirrored).sum()))
            # The side: the half (as given / mirrored) whose best matches are closer, over part cells.
            part = 1.0 - out[:, self.classes.index(0)] if 0 in self.classes else torch.ones_like(out[:, 0])
            fit = [float((part * sim).sum()) for _, sim in (given, mirror)]
            out = self.assign_sides(out, (mirror if fit[1] > fit[0] else given)[0])
        else:
            out = self._vote(q, keys, values)
        out = out * self._balance
        if self.background_weight != 1.0 and 0 in self.classes:
            out[:, self.classes.index(0)] *= self.background_weight
        out = out / out.sum(dim=1, keepdim=True).clamp_min(1e-8)
        return out.t().reshape(len(self.classes), h, w).cpu().numpy().astype(np.float32)

    def _vote(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, split: Optional[int] = None):
        """(n, K) normalised soft kNN vote of query cells (n, D) over keys (D, N). With ``split``,
        also the votes over keys[:, :split] and keys[:, split:] apart, each as (vote (n, K),
        (n,) mean cosine of each cell's k best matches)."""
        parts = [(0, keys.shape[1])] + ([] if split is None else [(0, split), (split, keys.shape[1])])
        votes = [torch.empty(q.shape[0], values.shape[1], device=q.device) for _ in parts]
        sims = [torch.empty(q.shape[0], device=q.device) for _ in parts]
        for s in range(0, q.shape[0], self.chunk):
            block = q[s:s + self.chunk] @ keys  # (n, N)
            for (lo, hi), vote, sim in zip(parts, votes, sims):
                top, idx = torch.topk(block[:, lo:hi], min(self.k, hi - lo), dim=1)
                weights = torch.softmax(top / self.temperature, dim=1)
                vote[s:s + self.chunk] = torch.einsum("nk,nkc->nc", weights, values[lo:hi][idx])
                sim[s:s + self.chunk] = top.mean(dim=1)
        votes = [v / v.sum(dim=1, keepdim=True).clamp_min(1e-8) for v in votes]
        if split is None:
            return votes[0]
        return votes[0], (votes[1], sims[1]), (votes[2], sims[2])

    def assign_sides(self, pooled: torch.Tensor, sided: torch.Tensor) -> torch.Tensor:
        """(n, K) pooled vote with each left/right pair's total share split as in ``sided`` (n, K).

        Where ``sided`` has no share of either, the pair's share is halved."""
        out = pooled.clone()
        for a, b in self._pairs:
            total = pooled[:, a] + pooled[:, b]
            ratio = (sided[:, a] + 1e-4) / (sided[:, a] + sided[:, b] + 2e-4)
            out[:, a], out[:, b] = total * ratio, total * (1 - ratio)
        return out

    def predict_proba(self, image: np.ndarray, *, name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        """(probs (K, H, W) float32 over ``self.classes``, confidence (H, W) float32) at the image's size."""
        image = check_image(image)
        probs = upsample_probabilities(self.predict_grid(image), image.shape[:2],
                                       image if self.refine else None)
        return probs, probs.max(axis=0)
