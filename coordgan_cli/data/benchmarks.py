"""Benchmark dataset layouts for ``coordgan evaluate``: find images and masks, pair them, and
choose references and queries the way the CoordGAN paper did.

Expected trees (ROOT is what ``--root`` names):

``dgan-face`` — the DatasetGAN release (``annotation/`` from its download), face-34::

    ROOT/[annotation/]training_data/face_processed/image_0.jpg, image_mask0.npy, image_1.jpg, …
    ROOT/[annotation/]testing_data/face_34_class/<name>.png|.jpg, <name>.npy, …

``dgan-car`` — the same release, car-20::

    ROOT/[annotation/]training_data/car_processed/image_<i>.jpg, image_mask<i>.npy, …
    ROOT/[annotation/]testing_data/car_20_class/<name>.png|.jpg, <name>.npy, …

Masks are ``.npy`` (H, W) integer id arrays. ``image_mask<i>.npy`` pairs with ``image_<i>.*``;
any other mask pairs with the image of the same stem.

``celebamask-hq`` — CelebA-HQ images and CelebAMask-HQ per-part masks::

    ROOT/CelebA-HQ-img/<idx>.jpg                                  (1024², idx 0..29999)
    ROOT/CelebAMask-HQ-mask-anno/<idx // 2000>/<idx:05d>_<part>.png  (512², part white on black)

Parts are merged to 7 classes — 0 background, 1 mouth (mouth, u_lip, l_lip), 2 eye (l_eye,
r_eye), 3 brow, 4 ear (l_ear, r_ear), 5 nose, 6 skin — painted in the order skin, lips, eyes,
brows, ears, nose, mouth (skin first, so every other part sits on top of it).

``folder`` — any labelled folder of photos (``data.folder``; ``scripts/convert_realdata.py``
writes the shared real sets this way)::

    ROOT/images/<name>.<jpg|png|…>   any size    ROOT/masks/<name>.png (or .npy), same H×W
    ROOT/labels.json                 id → name (and colour)

References: ``--refs`` by name, else the first ``num_refs`` (default 5) names; from another
labelled folder with ``ref_root`` (e.g. a train split, the queries being ROOT, the test split);
``leave_one_out``: every image labelled from all the others. Scored over the classes present in
the queries' ground truth (``Benchmark.present_only``).

``synthetic`` — ``coordgan synth`` output::

    ROOT/images/NNNNNN.png   ROOT/masks/NNNNNN.png   ROOT/labels.json
    ROOT/keypoints.json      ROOT/correspondence.h5  (ground-truth store; rows named NNNNNN.png)

Images and masks are always paired by file stem, never by sort order.

Paper choices (from the reference evaluation code): DatasetGAN — the first 5 training images in
its listing order (``.jpg`` then ``.png``, each sorted by name: image_0, image_1, image_10,
image_11, image_12) are the references, every other training and testing image a query;
CelebAMask-HQ — references 1, 100, 10000, 10001, 10003 and queries the 100th–199th names of the
30 000 names sorted as strings; synthetic (ours) — the first 5 names are references, every
other image a query.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from PIL import Image

from coordgan_cli.errors import UserError
from coordgan_cli.io.images import IMAGE_EXTENSIONS

DATASETS = ("dgan-face", "dgan-car", "celebamask-hq", "synthetic")
PAPER_REFERENCES = 5

FACE_34_CLASSES = [
    "background", "head", "cheek", "chin", "ear", "ear helix", "ear lobule", "eye bottom lid",
    "eyelashes", "iris", "pupil", "sclera", "tear duct", "eye top lid", "eyebrow", "forehead",
    "frown", "hair", "sideburns", "jaw", "moustache", "inferior lip", "oral commissure",
    "superior lip", "teeth", "neck", "nose", "ala of nose", "nose bridge", "nose tip", "nostril",
    "philtrum", "temple", "wrinkles",
]
FACE_34_EXCLUDE = frozenset({17, 25})  # hair, neck: left out of the paper's mean (31 classes scored)

CAR_20_CLASSES = [
    "background", "back bumper", "bumper", "car body", "car lights", "door", "fender", "grilles",
    "handles", "hood", "licence plate", "mirror", "roof", "running boards", "tail light", "tire",
    "trunk lid", "wheel hub", "window", "windshield",
]

CELEBA_7_CLASSES = ["background", "mouth", "eye", "brow", "ear", "nose", "skin"]
# Painting order: later parts overwrite earlier ones; skin goes first.
CELEBA_PARTS: list[tuple[str, int]] = [
    ("skin", 6), ("u_lip", 1), ("l_lip", 1), ("l_eye", 2), ("r_eye", 2), ("l_brow", 3),
    ("r_brow", 3), ("l_ear", 4), ("r_ear", 4), ("nose", 5), ("mouth", 1),
]
CELEBA_COUNT = 30000
CELEBA_PER_FOLDER = 2000


def celeba_paper_split() -> tuple[list[str], list[str]]:
    """The paper's CelebAMask-HQ image names: (5 references, 100 queries).

    The reference code indexes the list of all 30 000 image paths sorted as strings with
    [1, 3, 5, 6, 8] (references) and 100..199 (queries).
    """
    names = sorted(f"{i}.jpg" for i in range(CELEBA_COUNT))
    return [names[i] for i in (1, 3, 5, 6, 8)], names[100:200]


@dataclass(frozen=True)
class Sample:
    """One image with its ground truth.

    Attributes:
        name: POSIX path of the image relative to ROOT (shown in output).
        image: the image file.
        mask: the mask file (None for CelebAMask-HQ, whose truth is ``parts``).
        parts: CelebAMask-HQ (part name, file) pairs.
        keys: names to try, in order, when looking the image up in a correspondence store.
    """

    name: str
    image: Path
    mask: Optional[Path] = None
    parts: tuple[tuple[str, Path], ...] = ()
    keys: tuple[str, ...] = ()


@dataclass
class Benchmark:
    """A resolved benchmark: classes, references, queries and how they were chosen."""

    dataset: str
    root: Path
    class_names: list[str]
    exclude: frozenset[int]
    references: list[Sample]
    queries: list[Sample]
    choice: str
    keypoints_path: Optional[Path] = None
    truth_store_path: Optional[Path] = None
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # The mean over the classes present in the queries' ground truth (issue 18's protocol for
    # labelled folders) instead of every class 1..C-1 (the paper's).
    present_only: bool = False
    # Leave-one-out and the like: (references, queries) runs scored as one query set (ΣI/ΣU
    # over all of them); None = one run, ``references`` → ``queries``.
    folds: Optional[list[tuple[list[Sample], list[Sample]]]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read_mask(self, sample: Sample) -> np.ndarray:
        """(H, W) uint8 class ids of ``sample`` (255 = ignore)."""
        if self.dataset == "celebamask-hq":
            return merge_celeba_parts(sample)
        assert sample.mask is not None
        return read_id_mask(sample.mask, self.num_classes)


def read_id_mask(path: Path, num_classes: int) -> np.ndarray:
    """Read a mask (palette/greyscale PNG or .npy) and check its ids fit the class list."""
    from coordgan_cli.io.masks import read_mask

    mask = read_mask(path)
    bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes)) - {255})
    if bad:
        raise UserError(f"{path}: class id(s) {bad} are outside this benchmark's {num_classes} classes")
    return mask


def _read_part(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except OSError as exc:
        raise UserError(f"{path}: cannot read part mask ({exc})") from exc
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > 0


def merge_celeba_parts(sample: Sample) -> np.ndarray:
    """Merge CelebAMask-HQ part masks into the 7-class id map (skin painted first)."""
    lookup = dict(sample.parts)
    shape: Optional[tuple[int, int]] = None
    out: Optional[np.ndarray] = None
    for part, class_id in CELEBA_PARTS:
        path = lookup.get(part)
        if path is None:
            continue
        region = _read_part(path)
        if out is None:
            shape = region.shape
            out = np.zeros(shape, dtype=np.uint8)
        elif region.shape != shape:
            raise UserError(f"{path}: part mask is {region.shape[1]}×{region.shape[0]}, "
                            f"other parts of {sample.name} are {shape[1]}×{shape[0]}")
        out[region] = class_id
    if out is None:
        # Only non-scored parts (hair, neck, cloth, …): an all-background truth of the usual size.
        any_part = sample.parts[0][1] if sample.parts else None
        if any_part is None:
            raise UserError(f"{sample.name}: no CelebAMask-HQ part masks")
        out = np.zeros(_read_part(any_part).shape, dtype=np.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Finding files


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _dgan_partner_stem(mask_stem: str) -> str:
    match = re.fullmatch(r"image_mask(\d+)", mask_stem)
    return f"image_{match.group(1)}" if match else mask_stem


def _paper_listing_key(path: Path) -> tuple[int, str]:
    # The reference code lists ``*.jpg`` (sorted) and then ``*.png`` (sorted).
    order = {".jpg": 0, ".png": 1}.get(path.suffix.lower(), 2)
    return order, path.name


def _pair_folder(folder: Path, root: Path, problems: list[str]) -> list[Sample]:
    """Pair images and ``.npy`` masks of one DatasetGAN folder by stem."""
    images = {p.stem: p for p in folder.iterdir() if _is_image(p)}
    masks = {_dgan_partner_stem(p.stem): p for p in folder.iterdir() if p.suffix == ".npy" and p.is_file()}
    if not images and not masks:
        problems.append(f"{folder}: no images and no .npy masks")
        return []
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"{masks[stem]}: mask without an image (expected {folder / stem}.jpg or .png)")
    for stem in sorted(set(images) - set(masks)):
        expect = f"image_mask{stem[6:]}.npy" if re.fullmatch(r"image_\d+", stem) else f"{stem}.npy"
        problems.append(f"{images[stem]}: image without a mask (expected {folder / expect})")
    samples = []
    for stem in sorted(set(images) & set(masks), key=lambda s: _paper_listing_key(images[s])):
        image = images[stem]
        rel = image.relative_to(root).as_posix()
        samples.append(Sample(name=rel, image=image, mask=masks[stem],
                              keys=(rel, image.relative_to(folder).as_posix(), image.stem)))
    return samples


def _find_dir(root: Path, candidates: Sequence[str]) -> Optional[Path]:
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    return None


def _load_dgan(root: Path, category: str) -> tuple[list[Sample], list[Sample], list[str], frozenset[int]]:
    train_name, test_name = (("face_processed", "face_34_class") if category == "face"
                             else ("car_processed", "car_20_class"))
    train_rel = f"training_data/{train_name}"
    test_rel = f"testing_data/{test_name}"
    problems: list[str] = []
    train = _find_dir(root, [f"annotation/{train_rel}", train_rel])
    test = _find_dir(root, [f"annotation/{test_rel}", test_rel])
    if train is None:
        problems.append(f"missing folder {train_rel}/ (or annotation/{train_rel}/) with image_<i>.jpg + image_mask<i>.npy")
    if test is None:
        problems.append(f"missing folder {test_rel}/ (or annotation/{test_rel}/) with <name>.png + <name>.npy")
    train_samples = _pair_folder(train, root, problems) if train is not None else []
    test_samples = _pair_folder(test, root, problems) if test is not None else []
    if problems:
        raise UserError(f"{root}: not a usable DatasetGAN {category} tree: " + "; ".join(problems))
    classes = FACE_34_CLASSES if category == "face" else CAR_20_CLASSES
    exclude = FACE_34_EXCLUDE if category == "face" else frozenset()
    return train_samples, test_samples, classes, exclude


def _celeba_sample(root: Path, image_name: str) -> tuple[Sample, list[str]]:
    problems: list[str] = []
    image = root / "CelebA-HQ-img" / image_name
    if not image.is_file():
        problems.append(f"CelebA-HQ-img/{image_name}")
    stem = Path(image_name).stem
    parts: list[tuple[str, Path]] = []
    if stem.isdigit():
        idx = int(stem)
        folder = root / "CelebAMask-HQ-mask-anno" / str(idx // CELEBA_PER_FOLDER)
        found = sorted(folder.glob(f"{idx:05d}_*.png")) if folder.is_dir() else []
        parts = [(p.stem[len(f"{idx:05d}_"):], p) for p in found]
        if not parts:
            problems.append(f"CelebAMask-HQ-mask-anno/{idx // CELEBA_PER_FOLDER}/{idx:05d}_<part>.png (no part masks)")
    else:
        problems.append(f"CelebA-HQ-img/{image_name} (CelebA-HQ names are <index>.jpg)")
    rel = f"CelebA-HQ-img/{image_name}"
    return Sample(name=rel, image=image, parts=tuple(parts), keys=(rel, image_name, stem)), problems


def _celeba_available(root: Path) -> list[str]:
    folder = root / "CelebA-HQ-img"
    names = [p.name for p in folder.iterdir() if _is_image(p) and p.stem.isdigit()]
    return sorted(names, key=lambda n: int(Path(n).stem))


def _match(name: str, pool: Sequence[str]) -> Optional[str]:
    """Find ``name`` in ``pool`` by full name, then file name, then stem."""
    if name in pool:
        return name
    for key in (lambda c: Path(c).name, lambda c: Path(c).stem):
        for cand in pool:
            if key(cand) == name:
                return cand
    return None


def _resolve_refs(requested: Sequence[str], pool: Sequence[str], where: str) -> list[str]:
    out, unknown = [], []
    for r in requested:
        hit = _match(r, pool)
        (out if hit is not None else unknown).append(hit if hit is not None else r)
    if unknown:
        examples = ", ".join(list(pool)[:5])
        raise UserError(f"--refs: {', '.join(unknown)} not found in {where} (names look like: {examples})")
    if len(set(out)) != len(out):
        raise UserError("--refs: a reference is named twice")
    return out


def _choose(ordered: list[Sample], default_refs: list[Sample], default_queries: list[Sample],
            refs: Optional[Sequence[str]], queries: Optional[int], where: str,
            default_choice: str) -> tuple[list[Sample], list[Sample], str]:
    """Apply ``--refs`` / ``--queries`` to the paper's default split."""
    by_name = {s.name: s for s in ordered}
    notes = []
    if refs:
        ref_names = _resolve_refs(refs, [s.name for s in ordered], where)
        references = [by_name[n] for n in ref_names]
        notes.append(f"references from --refs: {', '.join(ref_names)}")
        pool = [s for s in ordered if s.name not in set(ref_names)]
    else:
        references = default_refs
        notes.append(default_choice)
        pool = None
    if queries is not None:
        if queries < 1:
            raise UserError("--queries must be at least 1")
        chosen = {s.name for s in references}
        pool = [s for s in ordered if s.name not in chosen]
        if len(pool) < queries:
            raise UserError(f"--queries {queries}: only {len(pool)} non-reference images in {where}")
        query_list = pool[:queries]
        notes.append(f"queries: the first {queries} non-reference images")
    elif refs:
        chosen = {s.name for s in references}
        query_list = [s for s in default_queries + default_refs if s.name not in chosen]
        query_list = sorted(query_list, key=lambda s: [x.name for x in ordered].index(s.name))
        notes.append(f"queries: every other image ({len(query_list)})")
    else:
        query_list = default_queries
    if not references:
        raise UserError(f"{where}: no reference images")
    if not query_list:
        raise UserError(f"{where}: no query images")
    return references, query_list, "; ".join(notes)


def _require_dir(root: Path) -> None:
    if not root.exists():
        raise UserError(f"--root {root}: folder not found")
    if not root.is_dir():
        raise UserError(f"--root {root}: not a folder")


# A layout's loader: loader(root, *, refs, queries, **options) → Benchmark (options: the layout's
# own settings, e.g. a number of references); it raises UserError with ONE message listing
# everything missing or unpaired.
DatasetLoader = Callable[..., Benchmark]
_LOADERS: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Make ``load_benchmark(name, ...)`` (``coordgan evaluate --dataset name``) use ``loader``."""
    _LOADERS[name] = loader


def available_datasets() -> list[str]:
    return list(_LOADERS)


def load_benchmark(dataset: str, root: str | Path, *, refs: Optional[Sequence[str]] = None,
                   queries: Optional[int] = None, **options: Any) -> Benchmark:
    """Resolve a benchmark tree into references and queries.

    Args:
        dataset: a registered layout (``available_datasets()``; built in: ``DATASETS``).
        root: the tree's top folder (see the module docstring for each layout).
        refs: names (path, file name or stem) overriding the paper's references.
        queries: use only the first N non-reference images as queries.
        options: the layout's own settings, passed to its loader.

    Raises UserError with ONE message listing everything missing or unpaired.
    """
    root = Path(root)
    _require_dir(root)
    if dataset not in _LOADERS:
        raise UserError(f"--dataset {dataset!r}: unknown; choose one of {', '.join(_LOADERS)}")
    return _LOADERS[dataset](root, refs=refs, queries=queries, **options)


def _load_dgan_layout(root: Path, *, refs: Optional[Sequence[str]], queries: Optional[int],
                      dataset: str) -> Benchmark:
    category = "face" if dataset == "dgan-face" else "car"
    train, test, classes, exclude = _load_dgan(root, category)
    if len(train) < PAPER_REFERENCES and not refs:
        raise UserError(f"{root}: the paper's protocol takes {PAPER_REFERENCES} references from the training "
                        f"folder, found {len(train)} annotated training images (use --refs to choose)")
    ordered = train + test
    references, query_list, choice = _choose(
        ordered, train[:PAPER_REFERENCES], train[PAPER_REFERENCES:] + test, refs, queries, str(root),
        f"paper references: the first {PAPER_REFERENCES} training images; queries: every other "
        f"training and testing image")
    return Benchmark(dataset, root, list(classes), exclude, references, query_list, choice)


def _load_celeba(root: Path, *, refs: Optional[Sequence[str]], queries: Optional[int]) -> Benchmark:
    missing = [f"{d}/" for d in ("CelebA-HQ-img", "CelebAMask-HQ-mask-anno") if not (root / d).is_dir()]
    if missing:
        raise UserError(f"{root}: not a CelebAMask-HQ tree; missing: {', '.join(missing)} "
                        f"(expected CelebA-HQ-img/<idx>.jpg and CelebAMask-HQ-mask-anno/<idx//2000>/<idx:05d>_<part>.png)")
    paper_refs, paper_queries = celeba_paper_split()
    if refs or queries is not None:
        available = _celeba_available(root)
        if refs:
            ref_names = _resolve_refs(refs, available, f"{root}/CelebA-HQ-img")
        else:
            ref_names = paper_refs
        if queries is not None:
            if queries < 1:
                raise UserError("--queries must be at least 1")
            pool = [n for n in available if n not in set(ref_names)]
            if len(pool) < queries:
                raise UserError(f"--queries {queries}: only {len(pool)} non-reference images in {root}/CelebA-HQ-img")
            query_names = pool[:queries]
            q_note = f"queries: the first {queries} non-reference images by index"
        else:
            query_names = [n for n in paper_queries if n not in set(ref_names)]
            q_note = "paper queries (100 images)"
        choice = (f"references from --refs: {', '.join(ref_names)}" if refs
                  else "paper references 1, 100, 10000, 10001, 10003") + "; " + q_note
    else:
        ref_names, query_names = paper_refs, paper_queries
        choice = ("paper references 1, 100, 10000, 10001, 10003; queries: names 100–199 of the "
                  "30 000 names sorted as strings")
    problems: list[str] = []
    references, query_list = [], []
    for names, out in ((ref_names, references), (query_names, query_list)):
        for n in names:
            sample, p = _celeba_sample(root, n)
            problems.extend(p)
            out.append(sample)
    if problems:
        shown = problems[:12]
        more = f" … and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise UserError(f"{root}: the CelebAMask-HQ tree lacks files this protocol needs: "
                        f"{', '.join(shown)}{more} (use --refs/--queries to evaluate a partial set)")
    return Benchmark("celebamask-hq", root, list(CELEBA_7_CLASSES), frozenset(), references, query_list, choice)


def _load_synthetic(root: Path, *, refs: Optional[Sequence[str]], queries: Optional[int]) -> Benchmark:
    from coordgan_cli.io.masks import read_labels

    missing = []
    if not (root / "images").is_dir():
        missing.append("images/")
    if not (root / "masks").is_dir():
        missing.append("masks/")
    if not (root / "labels.json").is_file():
        missing.append("labels.json")
    if missing:
        raise UserError(f"{root}: not a `coordgan synth` folder; missing: {', '.join(missing)} "
                        f"(expected images/NNNNNN.png, masks/NNNNNN.png, labels.json, keypoints.json, correspondence.h5)")
    labels = read_labels(root / "labels.json")
    images_dir, masks_dir = root / "images", root / "masks"
    images = {}
    for p in sorted(images_dir.rglob("*")):
        if _is_image(p):
            rel = p.relative_to(images_dir)
            images[rel.with_suffix("").as_posix()] = p
    masks = {}
    for p in sorted(masks_dir.rglob("*")):
        if p.is_file() and (p.suffix.lower() in (".png", ".npy")) and not p.name.startswith("."):
            masks[p.relative_to(masks_dir).with_suffix("").as_posix()] = p
    problems = []
    if not images:
        problems.append("images/ has no images")
    for stem in sorted(set(images) - set(masks)):
        problems.append(f"{images[stem]}: image without a mask (expected masks/{stem}.png)")
    for stem in sorted(set(masks) - set(images)):
        problems.append(f"{masks[stem]}: mask without an image (expected images/{stem}.png)")
    if problems:
        shown = problems[:12]
        more = f" … and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise UserError(f"{root}: " + "; ".join(shown) + more)
    ordered = []
    for stem in sorted(images, key=lambda s: images[s].relative_to(images_dir).as_posix()):
        img = images[stem]
        name = img.relative_to(images_dir).as_posix()
        ordered.append(Sample(name=name, image=img, mask=masks[stem], keys=(name, f"images/{name}", img.stem)))
    if len(ordered) < 2:
        raise UserError(f"{root}: needs at least 2 images (a reference and a query), found {len(ordered)}")
    n_ref = min(PAPER_REFERENCES, len(ordered) - 1)
    references, query_list, choice = _choose(
        ordered, ordered[:n_ref], ordered[n_ref:], refs, queries, str(root / "images"),
        f"references: the first {n_ref} names; queries: every other image")
    ids = labels.ids
    num = labels.num_classes
    names = [labels.name(i) if i in labels.names else f"class {i}" for i in range(num)]
    kp = root / "keypoints.json"
    store = root / "correspondence.h5"
    return Benchmark("synthetic", root, names, frozenset(), references, query_list, choice,
                     keypoints_path=kp if kp.is_file() else None,
                     truth_store_path=store if store.is_file() else None,
                     colours={i: tuple(labels.colours[i]) for i in ids if i in labels.colours})


def read_keypoints(path: str | Path) -> dict[str, np.ndarray]:
    """Read COCO-keypoint JSON (``coordgan synth``'s ``keypoints.json``) → image name → (K, 3).

    Each row is (x, y, visibility) in the image's pixels. Image names are the ``file_name`` of
    COCO's ``images`` relative to ``images/`` (a leading ``images/`` is dropped).
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(img["id"]): str(img["file_name"]) for img in data["images"]}
        out: dict[str, np.ndarray] = {}
        for ann in data["annotations"]:
            name = files[int(ann["image_id"])]
            if name.startswith("images/"):
                name = name[len("images/"):]
            kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            out[name] = kp
    except FileNotFoundError as exc:
        raise UserError(f"{path}: keypoints file not found") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a COCO keypoints file ({type(exc).__name__}: {exc})") from exc
    return out


register_dataset("dgan-face", lambda root, **kw: _load_dgan_layout(root, dataset="dgan-face", **kw))
register_dataset("dgan-car", lambda root, **kw: _load_dgan_layout(root, dataset="dgan-car", **kw))
register_dataset("celebamask-hq", _load_celeba)
register_dataset("synthetic", _load_synthetic)
register_dataset("folder", lambda root, **kw: _load_folder(root, **kw))


def _folder_samples(root: Path) -> tuple[Any, list[Sample]]:
    """(LabelSet, samples sorted by name) of a labelled folder, every mask checked to have its
    image's size (headers only; ids are checked when read)."""
    from coordgan_cli.data.folder import read_folder_dataset
    from coordgan_cli.io.images import image_size

    data = read_folder_dataset(root)
    samples = []
    for image, mask in zip(data.image_paths, data.mask_paths):
        size = image_size(image)
        mask_size = _mask_size(mask)
        if tuple(mask_size) != tuple(size):
            raise UserError(f"{mask}: mask is {mask_size[1]}×{mask_size[0]} but its image {image.name} is "
                            f"{size[1]}×{size[0]}; masks must match their images")
        name = image.relative_to(root / "images").as_posix()
        samples.append(Sample(name=name, image=image, mask=mask, keys=(name, f"images/{name}", image.stem)))
    return data.labels, samples


def _mask_size(path: Path) -> tuple[int, int]:
    """(H, W) of a mask file from its header."""
    if path.suffix.lower() == ".npy":
        try:
            return tuple(np.load(path, mmap_mode="r").shape[:2])  # type: ignore[return-value]
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read mask ({exc})") from exc
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except OSError as exc:
        raise UserError(f"{path}: cannot read mask ({exc})") from exc


def _load_folder(root: Path, *, refs: Optional[Sequence[str]], queries: Optional[int],
                 num_refs: Optional[int] = None, ref_root: Optional[Path] = None,
                 leave_one_out: bool = False) -> Benchmark:
    """A labelled folder (module docstring, ``folder``)."""
    labels, ordered = _folder_samples(root)
    if num_refs is not None and num_refs < 1:
        raise UserError(f"--num-refs must be at least 1, got {num_refs}")
    if leave_one_out:
        if refs or ref_root is not None or num_refs is not None:
            raise UserError("--leave-one-out labels every image from all the others: drop --refs, --num-refs "
                            "and --ref-root")
        pool = ordered if queries is None else ordered[:max(queries, 0)]
        if queries is not None and queries < 1:
            raise UserError("--queries must be at least 1")
        if len(ordered) < 2:
            raise UserError(f"{root}: leave-one-out needs at least 2 images, found {len(ordered)}")
        folds = [([s for s in ordered if s is not q], [q]) for q in pool]
        choice = (f"leave-one-out: each of {len(pool)} images labelled from the other {len(ordered) - 1}")
        bench = Benchmark("folder", root, [], frozenset(), list(ordered), list(pool), choice, folds=folds)
    elif ref_root is not None:
        ref_root = Path(ref_root)
        if not ref_root.is_dir():
            raise UserError(f"--ref-root {ref_root}: folder not found")
        ref_labels, ref_samples = _folder_samples(ref_root)
        if dict(ref_labels.names) != dict(labels.names):
            raise UserError(f"{ref_root / 'labels.json'}: names other classes than {root / 'labels.json'}; "
                            "references and queries must share one labels file")
        k = num_refs or PAPER_REFERENCES
        if refs:
            names = _resolve_refs(refs, [s.name for s in ref_samples], str(ref_root / "images"))
            references = [next(s for s in ref_samples if s.name == n) for n in names]
            choice = f"references from --refs in {ref_root}: {', '.join(names)}"
        else:
            if len(ref_samples) < k:
                raise UserError(f"--num-refs {k}: {ref_root} has only {len(ref_samples)} labelled images")
            references = ref_samples[:k]
            choice = f"references: the first {k} names of {ref_root}"
        if queries is not None:
            if queries < 1:
                raise UserError("--queries must be at least 1")
            query_list = ordered[:queries]
            choice += f"; queries: the first {len(query_list)} images of {root}"
        else:
            query_list = list(ordered)
            choice += f"; queries: every image of {root} ({len(query_list)})"
        bench = Benchmark("folder", root, [], frozenset(), references, query_list, choice)
    else:
        k = num_refs or PAPER_REFERENCES
        if len(ordered) < 2:
            raise UserError(f"{root}: needs at least 2 labelled images (a reference and a query), found {len(ordered)}")
        if not refs and len(ordered) <= k:
            raise UserError(f"--num-refs {k}: {root} has only {len(ordered)} labelled images, none left to query "
                            f"(use a smaller --num-refs, --ref-root or --leave-one-out)")
        references, query_list, choice = _choose(
            ordered, ordered[:k], ordered[k:], refs, queries, str(root / "images"),
            f"references: the first {k} names; queries: every other image")
        bench = Benchmark("folder", root, [], frozenset(), references, query_list, choice)
    bench.class_names = [labels.name(i) if i in labels.names else f"class {i}" for i in range(labels.num_classes)]
    bench.colours = {i: tuple(labels.colours[i]) for i in labels.ids if i in labels.colours}
    bench.present_only = True
    return bench
