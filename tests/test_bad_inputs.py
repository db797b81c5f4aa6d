"""A catalogue of bad inputs, each run through the CLI: exit status 2, one ``error:`` line naming
the file, no traceback, and nothing left behind that the command created.

Every case is a row of CASES: (id, argument builder, text the error line must hold). The builder
gets the module's shared fixtures (tiny checkpoints, broken images, a synthetic store) and a
fresh temporary folder. Output folders that cannot be written: tests often run as root, where
``chmod`` does not stop a write, so the catalogue uses paths whose parent is a regular FILE
(ENOTDIR for everyone) and, where present, a folder under /sys (EPERM even for root); as a
non-root user a chmod 0o555 folder is used instead.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from coordgan_cli.cli import app
from coordgan_cli.io.images import write_image

from tiny_checkpoints import TINY, make_encoder_checkpoint, make_generator_checkpoint, make_images, \
    make_matcher_checkpoint

runner = CliRunner()


def _png_claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) with its header patched to claim width × height pixels (CRC fixed)."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def _unwritable_folder(root: Path) -> Path | None:
    """A folder this process cannot create files in, or None where there is none to be had."""
    if os.geteuid() != 0:
        folder = root / "readonly"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        return folder
    sys_dir = Path("/sys")
    if sys_dir.is_dir():
        try:
            (sys_dir / "coordgan-probe").mkdir()
        except OSError:
            return sys_dir
        (sys_dir / "coordgan-probe").rmdir()
    return None


@dataclass
class Fx:
    """The shared inputs (built once per module)."""

    root: Path
    gen: Path
    enc: Path
    matcher: Path
    images: Path          # a folder of 4 good images
    good: Path
    bomb: Path            # claims 30000 × 30000 pixels: Pillow's decompression-bomb guard
    truncated: Path
    zero: Path
    text: Path            # a text file named .png
    random_pt: Path       # random bytes named .pt
    zero_pt: Path
    afile: Path           # a regular file (as an output it is "not a folder"; below it nothing can be made)
    recipe: Path          # tiny recipe training on ``images``
    bad_key: Path         # a recipe with a misspelt key
    bad_toml: Path        # not TOML
    store: Path           # a synthetic correspondence store with images/ beside it
    readonly: Path | None


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Fx:
    root = tmp_path_factory.mktemp("bad")
    gen = make_generator_checkpoint(root / "gen.pt")
    enc = make_encoder_checkpoint(root / "enc.pt", gen)
    matcher = make_matcher_checkpoint(root / "matcher.pt")
    images = root / "images"
    make_images(images, 4, sub_every=0)
    good = root / "good.png"
    write_image(good, np.full((16, 16, 3), 100, np.uint8))
    png = good.read_bytes()
    broken = root / "broken"
    broken.mkdir()
    (broken / "bomb.png").write_bytes(_png_claiming(png, 30000, 30000))
    (broken / "truncated.png").write_bytes(png[: len(png) // 2])
    (broken / "zero.png").write_bytes(b"")
    (broken / "text.png").write_text("this is not an image\n")
    (root / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "zero.pt").write_bytes(b"")
    (root / "afile").write_text("a regular file\n")
    recipe = root / "recipe.toml"
    recipe.write_text(TINY.read_text().replace('[data]', f'[data]\npath = "{images.as_posix()}"'))
    (root / "bad_key.toml").write_text(TINY.read_text().replace("batch = 4", "bacth = 4"))
    (root / "bad.toml").write_text("this is [not toml\n")
    synth = root / "synth"
    result = runner.invoke(app, ["--quiet", "synth", str(synth), "--category", "faces", "--count", "2", "--size", "16"])
    assert result.exit_code == 0, result.output
    return Fx(root=root, gen=gen, enc=enc, matcher=matcher, images=images, good=good, bomb=broken / "bomb.png",
              truncated=broken / "truncated.png", zero=broken / "zero.png", text=broken / "text.png",
              random_pt=root / "random.pt", zero_pt=root / "zero.pt", afile=root / "afile", recipe=recipe,
              bad_key=root / "bad_key.toml", bad_toml=root / "bad.toml", store=synth / "correspondence.h5",
              readonly=_unwritable_folder(root))


Args = Callable[[Fx, Path], list[str]]
BROKEN = ("bomb", "truncated", "zero", "text")


def _store_without_images(fx: Fx, tmp: Path) -> list[str]:
    lonely = tmp / "lonely" / "correspondence.h5"
    lonely.parent.mkdir()
    shutil.copy(fx.store, lonely)
    return ["train-matcher", str(fx.recipe), "--out", str(tmp / "m"), "--store", str(lonely)]


def _corrupt_latest(fx: Fx, tmp: Path) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    shutil.copy(fx.gen, run / "ckpt-0000002.pt")
    shutil.copy(fx.random_pt, run / "latest.pt")
    return ["train", str(fx.recipe), "--out", str(run)]


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _empty_folder(tmp: Path) -> Path:
    return _folder(tmp / "empty")


def _propagate(fx: Fx, tmp: Path, *extra: str, ref: Path | None = None, mask: Path | None = None,
               queries: Path | None = None, out: Path | None = None, store: Path | None | bool = True) -> list[str]:
    """``propagate`` on the synthetic set beside ``fx.store`` (one reference, its maps from the store),
    with one part swapped for a bad one. ``store=False``: no --store (for correlation runs)."""
    synth = fx.store.parent
    args = ["propagate", "--ref", str(ref or synth / "images" / "000000.png"),
            "--mask", str(mask or synth / "masks" / "000000.png"), "--queries", str(queries or synth / "images"),
            "--out", str(out or tmp / "o")]
    if store is not False:
        args += ["--store", str(fx.store if store is True else store)]
    return [*args, *extra]


def _correlation(fx: Fx, tmp: Path, *extra: str, **parts) -> list[str]:
    return _propagate(fx, tmp, "--matcher", "correlation", "--matcher-ckpt", str(fx.matcher), *extra, store=False,
                      **parts)


def _file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _other_size_mask(fx: Fx, tmp: Path) -> Path:
    from coordgan_cli.io.masks import read_labels, read_mask, write_mask

    mask = np.kron(read_mask(fx.store.parent / "masks" / "000000.png"), np.ones((2, 2), np.uint8))
    write_mask(tmp / "big_mask.png", mask, read_labels(fx.store.parent / "labels.json"))
    return tmp / "big_mask.png"


def _synth_copy(fx: Fx, tmp: Path, **replace: Path) -> Path:
    """A copy of the synthetic set beside ``fx.store`` with files replaced: {"images/000001.png": bad}
    (given as images__000001_png=bad)."""
    copy = tmp / "set"
    shutil.copytree(fx.store.parent, copy)
    for key, bad in replace.items():
        folder, name = key.split("__")
        shutil.copy(bad, copy / folder / name.replace("_png", ".png"))
    return copy


def _evaluate(fx: Fx, tmp: Path, *extra: str, root: Path | None = None, store: Path | None | bool = True,
              correlation: bool = False) -> list[str]:
    """``evaluate`` on the synthetic set beside ``fx.store`` (1 reference, 1 query), maps from the store."""
    args = ["evaluate", "--dataset", "synthetic", "--root", str(root or fx.store.parent)]
    if store is not False:
        args += ["--store", str(fx.store if store is True else store)]
    return [*args, *([] if correlation else ["--no-correlation"]), *extra]


def _photos(tmp: Path, broken: str = "") -> Path:
    """A labelled folder of 3 small JPEGs (images/, masks/, labels.json) with one thing broken:
    ``no-masks``, ``no-labels``, ``mask-size`` (a mask of another size) or ``mask-missing``."""
    from PIL import Image

    root = tmp / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "labels.json").write_text('{"0": "background", "1": "hood"}')
    for i, (h, w) in enumerate(((24, 32), (30, 20), (28, 28))):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"p{i}.jpg")
        mask = np.zeros((h, w) if not (broken == "mask-size" and i == 1) else (h + 2, w), np.uint8)
        mask[: h // 2] = 1
        Image.fromarray(mask, mode="L").save(root / "masks" / f"p{i}.png")
    if broken == "no-masks":
        shutil.rmtree(root / "masks")
    elif broken == "no-labels":
        (root / "labels.json").unlink()
    elif broken == "mask-missing":
        (root / "masks" / "p2.png").unlink()
    return root


def _evaluate_photos(tmp: Path, broken: str = "", *extra: str) -> list[str]:
    return ["evaluate", "--dataset", "folder", "--root", str(_photos(tmp, broken)), "--num-refs", "1",
            "--matchers", "features", *extra]


def _demo(fx: Fx, tmp: Path, out: Path, *extra: str) -> list[str]:
    return ["demo", str(out), "--count", "1", "--size", "16", "--matcher", "correlation", *extra]


# (id, arguments, what the error line must contain: a str, or a function of (fx, tmp) giving it)
CASES: list[tuple[str, Args, object]] = [
    # --- synth ---------------------------------------------------------------------------------
    ("synth-out-is-a-file", lambda fx, t: ["synth", str(fx.afile), "--category", "faces", "--count", "1"],
     lambda fx, t: str(fx.afile)),
    ("synth-out-under-a-file", lambda fx, t: ["synth", str(fx.afile / "set"), "--category", "faces", "--count", "1"],
     lambda fx, t: str(fx.afile)),
    # --- swap ----------------------------------------------------------------------------------
    ("swap-out-under-a-file", lambda fx, t: ["swap", str(fx.gen), "--structure", "seed:1", "--texture", "seed:2",
                                             "--out", str(fx.afile / "grid.png")], lambda fx, t: str(fx.afile)),
    ("swap-out-is-a-folder", lambda fx, t: ["swap", str(fx.gen), "--structure", "seed:1", "--texture", "seed:2",
                                            "--out", str(_folder(t / "grid.png"))], "grid.png"),
    *[(f"swap-structure-{kind}", (lambda k: lambda fx, t: ["swap", str(fx.enc), "--structure", str(getattr(fx, k)),
                                                            "--texture", "seed:2", "--out", str(t / "g.png")])(kind),
       (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    ("swap-texture-missing", lambda fx, t: ["swap", str(fx.enc), "--structure", "seed:1", "--texture",
                                            str(t / "nope.png"), "--out", str(t / "g.png")], "nope.png"),
    ("swap-ckpt-random-bytes", lambda fx, t: ["swap", str(fx.random_pt), "--structure", "seed:1", "--texture",
                                              "seed:2", "--out", str(t / "g.png")], lambda fx, t: str(fx.random_pt)),
    ("swap-ckpt-zero-bytes", lambda fx, t: ["swap", str(fx.zero_pt), "--structure", "seed:1", "--texture",
                                            "seed:2", "--out", str(t / "g.png")], lambda fx, t: str(fx.zero_pt)),
    ("swap-ckpt-missing", lambda fx, t: ["swap", str(t / "none.pt"), "--structure", "seed:1", "--texture",
                                         "seed:2", "--out", str(t / "g.png")], "none.pt"),
    ("swap-ckpt-is-a-matcher", lambda fx, t: ["swap", str(fx.matcher), "--structure", "seed:1", "--texture",
                                              "seed:2", "--out", str(t / "g.png")], lambda fx, t: str(fx.matcher)),
    # --- invert --------------------------------------------------------------------------------
    ("invert-out-under-a-file", lambda fx, t: ["invert", str(fx.enc), str(fx.images), "--out", str(fx.afile / "m.h5")],
     lambda fx, t: str(fx.afile)),
    ("invert-out-is-not-a-store", lambda fx, t: [
        "invert", str(fx.enc), str(fx.images), "--out", str(shutil.copy(fx.afile, t / "maps.h5"))], "maps.h5"),
    ("invert-empty-folder", lambda fx, t: ["invert", str(fx.enc), str(_empty_folder(t)), "--out", str(t / "m.h5")],
     "empty"),
    ("invert-input-missing", lambda fx, t: ["invert", str(fx.enc), str(t / "nowhere"), "--out", str(t / "m.h5")],
     "nowhere"),
    *[(f"invert-strict-{kind}", (lambda k: lambda fx, t: ["invert", str(fx.enc), str(getattr(fx, k)), "--strict",
                                                           "--out", str(t / "m.h5")])(kind),
       (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    ("invert-preview-under-a-file", lambda fx, t: ["invert", str(fx.enc), str(fx.images), "--out", str(t / "m.h5"),
                                                   "--preview", str(fx.afile / "p")], lambda fx, t: str(fx.afile)),
    ("invert-ckpt-random-bytes", lambda fx, t: ["invert", str(fx.random_pt), str(fx.images), "--out",
                                                str(t / "m.h5")], lambda fx, t: str(fx.random_pt)),
    ("invert-merge-not-a-store", lambda fx, t: ["invert", "--merge", str(fx.afile), "--out", str(t / "all.h5")],
     lambda fx, t: str(fx.afile)),
    # --- train / finetune ----------------------------------------------------------------------
    ("train-recipe-missing", lambda fx, t: ["train", str(t / "none.toml"), "--out", str(t / "run")], "none.toml"),
    ("train-recipe-bad-key", lambda fx, t: ["train", str(fx.bad_key), "--out", str(t / "run")], "bacth"),
    ("train-recipe-not-toml", lambda fx, t: ["train", str(fx.bad_toml), "--out", str(t / "run")],
     lambda fx, t: str(fx.bad_toml)),
    ("train-out-is-a-file", lambda fx, t: ["train", str(fx.recipe), "--out", str(fx.afile)], lambda fx, t: str(fx.afile)),
    ("train-out-under-a-file", lambda fx, t: ["train", str(fx.recipe), "--out", str(fx.afile / "run")],
     lambda fx, t: str(fx.afile)),
    ("train-data-missing", lambda fx, t: ["train", str(fx.recipe), "--out", str(t / "run"), "--data",
                                          str(t / "nodata")], "nodata"),
    ("train-data-empty", lambda fx, t: ["train", str(fx.recipe), "--out", str(t / "run"), "--data",
                                        str(_empty_folder(t))], "empty"),
    ("train-fails-in-new-nested-folders", lambda fx, t: ["train", str(fx.recipe), "--out", str(t / "a" / "b" / "run"),
                                                         "--data", str(t / "nodata")], "nodata"),
    ("train-max-steps-zero", lambda fx, t: ["train", str(fx.recipe), "--out", str(t / "run"), "--max-steps", "0"],
     "--max-steps"),
    ("train-max-steps-beyond-schedule", lambda fx, t: ["train", str(fx.recipe), "--out", str(t / "run"),
                                                       "--max-steps", "50"], "schedule.steps"),
    ("train-corrupt-latest-offers-ckpt", _corrupt_latest, "ckpt-0000002.pt"),
    ("train-bad-device", lambda fx, t: ["--device", "tpu", "train", str(fx.recipe), "--out", str(t / "run")], "--device"),
    ("finetune-ckpt-missing", lambda fx, t: ["finetune", str(t / "none.pt"), str(fx.recipe), "--out", str(t / "ft")],
     "none.pt"),
    ("finetune-ckpt-random-bytes", lambda fx, t: ["finetune", str(fx.random_pt), str(fx.recipe), "--out",
                                                  str(t / "ft")], lambda fx, t: str(fx.random_pt)),
    ("finetune-ckpt-is-a-matcher", lambda fx, t: ["finetune", str(fx.matcher), str(fx.recipe), "--out",
                                                  str(t / "ft")], lambda fx, t: str(fx.matcher)),
    ("finetune-out-is-a-file", lambda fx, t: ["finetune", str(fx.gen), str(fx.recipe), "--out", str(fx.afile)],
     lambda fx, t: str(fx.afile)),
    # --- train-encoder -------------------------------------------------------------------------
    ("train-encoder-gan-missing", lambda fx, t: ["train-encoder", str(t / "none.pt"), str(fx.recipe), "--out",
                                                 str(t / "enc")], "none.pt"),
    ("train-encoder-gan-random-bytes", lambda fx, t: ["train-encoder", str(fx.random_pt), str(fx.recipe), "--out",
                                                      str(t / "enc")], lambda fx, t: str(fx.random_pt)),
    ("train-encoder-gan-is-an-encoder", lambda fx, t: ["train-encoder", str(fx.enc), str(fx.recipe), "--out",
                                                       str(t / "enc")], lambda fx, t: str(fx.enc)),
    ("train-encoder-out-under-a-file", lambda fx, t: ["train-encoder", str(fx.gen), str(fx.recipe), "--out",
                                                      str(fx.afile / "enc")], lambda fx, t: str(fx.afile)),
    ("train-encoder-max-steps-beyond", lambda fx, t: ["train-encoder", str(fx.gen), str(fx.recipe), "--out",
                                                      str(t / "enc"), "--max-steps", "50"], "encoder.steps"),
    # --- train-matcher -------------------------------------------------------------------------
    ("train-matcher-store-missing", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(t / "m"), "--store",
                                                   str(t / "none.h5")], "none.h5"),
    ("train-matcher-store-without-images", _store_without_images, "images"),
    ("train-matcher-store-random-bytes", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(t / "m"),
                                                        "--store", str(fx.random_pt)], lambda fx, t: str(fx.random_pt)),
    ("train-matcher-out-is-a-file", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(fx.afile), "--store",
                                                   str(fx.store)], lambda fx, t: str(fx.afile)),
    ("train-matcher-out-under-a-file", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(fx.afile / "m"),
                                                      "--store", str(fx.store)], lambda fx, t: str(fx.afile)),
    ("train-matcher-gan-random-bytes", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(t / "m"), "--gan",
                                                      str(fx.random_pt)], lambda fx, t: str(fx.random_pt)),
    ("train-matcher-max-steps-beyond", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(t / "m"),
                                                      "--store", str(fx.store), "--max-steps", "50"], "matcher.steps"),
    # --- info / models -------------------------------------------------------------------------
    ("info-missing", lambda fx, t: ["info", str(t / "none.pt")], "none.pt"),
    ("info-random-bytes", lambda fx, t: ["info", str(fx.random_pt)], lambda fx, t: str(fx.random_pt)),
    ("info-zero-bytes", lambda fx, t: ["info", str(fx.zero_pt)], lambda fx, t: str(fx.zero_pt)),
    ("info-bad-key", lambda fx, t: ["info", str(fx.bad_key)], "bacth"),
    ("info-not-toml", lambda fx, t: ["info", str(fx.bad_toml)], lambda fx, t: str(fx.bad_toml)),
    ("info-bad-device", lambda fx, t: ["--device", "tpu", "info", str(fx.recipe)], "--device"),
    ("models-bad-device", lambda fx, t: ["--device", "cuda:x", "models"], "--device"),
    # --- propagate -----------------------------------------------------------------------------
    ("propagate-out-is-a-file", lambda fx, t: _propagate(fx, t, out=fx.afile), lambda fx, t: str(fx.afile)),
    ("propagate-out-under-a-file", lambda fx, t: _propagate(fx, t, out=fx.afile / "o"), lambda fx, t: str(fx.afile)),
    ("propagate-correlation-out-is-a-file", lambda fx, t: _correlation(fx, t, out=fx.afile),
     lambda fx, t: str(fx.afile)),
    ("propagate-fails-in-new-nested-folders", lambda fx, t: _propagate(fx, t, out=t / "a" / "b" / "o", ref=fx.bomb),
     lambda fx, t: str(fx.bomb)),
    *[(f"propagate-reference-{kind}", (lambda k: lambda fx, t: _propagate(fx, t, ref=getattr(fx, k)))(kind),
       (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    *[(f"propagate-correlation-reference-{kind}", (lambda k: lambda fx, t: _correlation(fx, t, ref=getattr(fx, k)))(
        kind), (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    *[(f"propagate-mask-{kind}", (lambda k: lambda fx, t: _propagate(fx, t, mask=getattr(fx, k)))(kind),
       (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    # A query that cannot be read is skipped with a warning; when none can be labelled it is an error.
    *[(f"propagate-query-{kind}", (lambda k: lambda fx, t: _propagate(fx, t, queries=getattr(fx, k)))(kind),
       (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    *[(f"propagate-correlation-query-{kind}", (lambda k: lambda fx, t: _correlation(fx, t, queries=getattr(fx, k)))(
        kind), (lambda k: lambda fx, t: str(getattr(fx, k)))(kind)) for kind in BROKEN],
    ("propagate-queries-all-broken", lambda fx, t: _propagate(fx, t, queries=fx.bomb.parent),
     lambda fx, t: str(fx.bomb.parent)),
    ("propagate-reference-missing", lambda fx, t: _propagate(fx, t, ref=t / "none.png"), "none.png"),
    ("propagate-mask-missing", lambda fx, t: _propagate(fx, t, mask=t / "none.png"), "none.png"),
    ("propagate-mask-other-size", lambda fx, t: _propagate(fx, t, mask=_other_size_mask(fx, t)), "big_mask.png"),
    ("propagate-mask-random-npy", lambda fx, t: _propagate(fx, t, mask=shutil.copy(fx.random_pt, t / "m.npy")),
     "m.npy"),
    ("propagate-empty-query-folder", lambda fx, t: _propagate(fx, t, queries=_empty_folder(t)), "empty"),
    ("propagate-correlation-empty-query-folder", lambda fx, t: _correlation(fx, t, queries=_empty_folder(t)), "empty"),
    ("propagate-empty-query-list", lambda fx, t: _propagate(fx, t, queries=_file(t / "list.txt", "# nothing\n")),
     "list.txt"),
    ("propagate-queries-missing", lambda fx, t: _propagate(fx, t, queries=t / "nowhere"), "nowhere"),
    ("propagate-query-not-in-store", lambda fx, t: _propagate(fx, t, queries=fx.images),
     lambda fx, t: str(fx.store)),
    ("propagate-store-random-bytes", lambda fx, t: _propagate(fx, t, store=fx.random_pt),
     lambda fx, t: str(fx.random_pt)),
    ("propagate-store-zero-bytes", lambda fx, t: _propagate(fx, t, store=fx.zero_pt), lambda fx, t: str(fx.zero_pt)),
    ("propagate-store-missing", lambda fx, t: _propagate(fx, t, store=t / "none.h5"), "none.h5"),
    ("propagate-store-is-a-checkpoint", lambda fx, t: _propagate(fx, t, store=fx.gen), lambda fx, t: str(fx.gen)),
    ("propagate-matcher-ckpt-random-bytes", lambda fx, t: _propagate(
        fx, t, "--matcher", "correlation", "--matcher-ckpt", str(fx.random_pt), store=False),
     lambda fx, t: str(fx.random_pt)),
    ("propagate-matcher-ckpt-zero-bytes", lambda fx, t: _propagate(
        fx, t, "--matcher", "correlation", "--matcher-ckpt", str(fx.zero_pt), store=False),
     lambda fx, t: str(fx.zero_pt)),
    ("propagate-matcher-ckpt-is-a-generator", lambda fx, t: _propagate(
        fx, t, "--matcher", "correlation", "--matcher-ckpt", str(fx.gen), store=False), lambda fx, t: str(fx.gen)),
    ("propagate-ensemble-matcher-ckpt-random-bytes", lambda fx, t: _propagate(
        fx, t, "--matcher", "ensemble", "--matcher-ckpt", str(fx.random_pt)), lambda fx, t: str(fx.random_pt)),
    ("propagate-ckpt-random-bytes", lambda fx, t: _propagate(fx, t, "--ckpt", str(fx.random_pt), store=False),
     lambda fx, t: str(fx.random_pt)),
    ("propagate-refs-file-missing", lambda fx, t: ["propagate", "--refs", str(t / "pairs.txt"), "--queries",
                                                   str(fx.images), "--out", str(t / "o"), "--store", str(fx.store)],
     "pairs.txt"),
    ("propagate-labels-not-json", lambda fx, t: _propagate(fx, t, "--labels", str(fx.random_pt)),
     lambda fx, t: str(fx.random_pt)),
    ("propagate-ref-coco-not-json", lambda fx, t: ["propagate", "--ref", str(fx.store.parent / "images" / "000000.png"),
                                                   "--ref-coco", str(fx.bad_toml), "--queries", str(fx.images),
                                                   "--out", str(t / "o"), "--store", str(fx.store)],
     lambda fx, t: str(fx.bad_toml)),
    ("propagate-ref-keypoints-not-json", lambda fx, t: _propagate(fx, t, "--ref-keypoints", str(fx.bad_toml)),
     lambda fx, t: str(fx.bad_toml)),
    ("propagate-report-limit-negative", lambda fx, t: _propagate(fx, t, "--report-limit", "-1"), "--report-limit"),
    ("propagate-bad-device", lambda fx, t: ["--device", "tpu", *_propagate(fx, t)], "--device"),
    ("propagate-existing-out-other-settings", lambda fx, t: _propagate(
        fx, t, "--mode", "hard", out=_file(_folder(t / "o") / "progress.jsonl", '{"settings": "other"}\n').parent),
     "progress.jsonl"),
    # --- evaluate ------------------------------------------------------------------------------
    ("evaluate-out-is-a-file", lambda fx, t: _evaluate(fx, t, "--out", str(fx.afile)),
     lambda fx, t: f"{fx.afile}: exists and is a file"),
    ("evaluate-out-under-a-file", lambda fx, t: _evaluate(fx, t, "--out", str(fx.afile / "results")),
     lambda fx, t: f"{fx.afile / 'results'}: cannot write here"),
    ("evaluate-fails-in-new-nested-folders", lambda fx, t: _evaluate(fx, t, "--out", str(t / "a" / "b" / "results"),
                                                                     store=fx.random_pt),
     lambda fx, t: str(fx.random_pt)),
    *[(f"evaluate-query-{kind}", (lambda k: lambda fx, t: _evaluate(
        fx, t, root=_synth_copy(fx, t, images__000001_png=getattr(fx, k))))(kind), "000001.png") for kind in BROKEN],
    *[(f"evaluate-reference-{kind}", (lambda k: lambda fx, t: _evaluate(
        fx, t, root=_synth_copy(fx, t, images__000000_png=getattr(fx, k))))(kind), "000000.png") for kind in BROKEN],
    *[(f"evaluate-mask-{kind}", (lambda k: lambda fx, t: _evaluate(
        fx, t, root=_synth_copy(fx, t, masks__000001_png=getattr(fx, k))))(kind), "000001.png") for kind in BROKEN],
    ("evaluate-correlation-query-bomb", lambda fx, t: _evaluate(
        fx, t, "--matcher-ckpt", str(fx.matcher), root=_synth_copy(fx, t, images__000001_png=fx.bomb),
        correlation=True), "000001.png"),
    ("evaluate-store-random-bytes", lambda fx, t: _evaluate(fx, t, store=fx.random_pt),
     lambda fx, t: str(fx.random_pt)),
    ("evaluate-store-zero-bytes", lambda fx, t: _evaluate(fx, t, store=fx.zero_pt), lambda fx, t: str(fx.zero_pt)),
    ("evaluate-store-missing", lambda fx, t: _evaluate(fx, t, store=t / "none.h5"), "none.h5"),
    ("evaluate-matcher-ckpt-random-bytes", lambda fx, t: _evaluate(fx, t, "--matcher-ckpt", str(fx.random_pt),
                                                                   correlation=True),
     lambda fx, t: str(fx.random_pt)),
    ("evaluate-matcher-ckpt-is-a-generator", lambda fx, t: _evaluate(fx, t, "--matcher-ckpt", str(fx.gen),
                                                                     correlation=True), lambda fx, t: str(fx.gen)),
    ("evaluate-ckpt-random-bytes", lambda fx, t: _evaluate(fx, t, "--ckpt", str(fx.random_pt), store=False),
     lambda fx, t: str(fx.random_pt)),
    ("evaluate-empty-query-folder", lambda fx, t: _evaluate(
        fx, t, root=_file(_folder(_folder(_folder(t / "s") / "images").parent / "masks").parent / "labels.json",
                          (fx.store.parent / "labels.json").read_text()).parent), "no images"),
    ("evaluate-no-queries-left", lambda fx, t: _evaluate(fx, t, "--refs", "000000.png,000001.png"), "no query"),
    ("evaluate-root-missing", lambda fx, t: _evaluate(fx, t, root=t / "nowhere"), "nowhere"),
    ("evaluate-queries-zero", lambda fx, t: _evaluate(fx, t, "--queries", "0"), "--queries"),
    ("evaluate-bad-dataset", lambda fx, t: ["evaluate", "--dataset", "pets", "--root", str(fx.store.parent)],
     "--dataset"),
    ("evaluate-bad-device", lambda fx, t: ["--device", "tpu", *_evaluate(fx, t)], "--device"),
    ("evaluate-folder-no-masks", lambda fx, t: _evaluate_photos(t, "no-masks"),
     lambda fx, t: f"{t / 'photos' / 'masks'}: missing; a labelled folder has images/, masks/ and labels.json"),
    ("evaluate-folder-no-labels-json", lambda fx, t: _evaluate_photos(t, "no-labels"),
     lambda fx, t: f"{t / 'photos' / 'labels.json'}: missing"),
    ("evaluate-folder-mask-of-another-size", lambda fx, t: _evaluate_photos(t, "mask-size"),
     lambda fx, t: f"{t / 'photos' / 'masks' / 'p1.png'}: mask is 20×32 but its image p1.jpg is 20×30"),
    ("evaluate-folder-mask-missing", lambda fx, t: _evaluate_photos(t, "mask-missing"),
     lambda fx, t: f"{t / 'photos' / 'masks' / 'p2.png'}: mask missing for image images/p2.jpg"),
    ("evaluate-folder-backbone-weights-missing", lambda fx, t: _evaluate_photos(
        t, "", "--backbone", "resnet50", "--backbone-weights", str(t / "r50.pth")),
     lambda fx, t: f"{t / 'r50.pth'}: backbone weights file not found; place the resnet50 weights there"),
    ("evaluate-folder-ref-root-missing", lambda fx, t: _evaluate_photos(t, "", "--ref-root", str(t / "train")),
     lambda fx, t: f"--ref-root {t / 'train'}: folder not found"),
    # --- demo ----------------------------------------------------------------------------------
    ("demo-out-is-a-file", lambda fx, t: _demo(fx, t, fx.afile), lambda fx, t: str(fx.afile)),
    ("demo-out-under-a-file", lambda fx, t: _demo(fx, t, fx.afile / "demo"), lambda fx, t: str(fx.afile)),
    ("demo-count-zero", lambda fx, t: _demo(fx, t, t / "demo", "--count", "0"), "--count"),
    ("demo-bad-matcher", lambda fx, t: _demo(fx, t, t / "demo", "--matcher", "nearest"), "--matcher"),
    ("demo-model-unknown", lambda fx, t: ["demo", str(t / "demo"), "--model", "no-such-model"], "no-such-model"),
]

READONLY_CASES: list[tuple[str, Args, object]] = [
    ("synth-out-read-only", lambda fx, t: ["synth", str(fx.readonly / "set"), "--category", "faces", "--count", "1"],
     lambda fx, t: str(fx.readonly)),
    ("swap-out-read-only", lambda fx, t: ["swap", str(fx.gen), "--structure", "seed:1", "--texture", "seed:2",
                                          "--out", str(fx.readonly / "g.png")], lambda fx, t: str(fx.readonly)),
    ("invert-out-read-only", lambda fx, t: ["invert", str(fx.enc), str(fx.images), "--out", str(fx.readonly / "m.h5")],
     lambda fx, t: str(fx.readonly)),
    ("train-out-read-only", lambda fx, t: ["train", str(fx.recipe), "--out", str(fx.readonly / "run")],
     lambda fx, t: str(fx.readonly)),
    ("train-matcher-out-read-only", lambda fx, t: ["train-matcher", str(fx.recipe), "--out", str(fx.readonly / "m"),
                                                   "--store", str(fx.store)], lambda fx, t: str(fx.readonly)),
    ("propagate-out-read-only", lambda fx, t: _propagate(fx, t, out=fx.readonly / "o"),
     lambda fx, t: str(fx.readonly)),
    ("demo-out-read-only", lambda fx, t: _demo(fx, t, fx.readonly / "demo"), lambda fx, t: str(fx.readonly)),
    ("evaluate-out-read-only", lambda fx, t: _evaluate(fx, t, "--out", str(fx.readonly / "results")),
     lambda fx, t: f"{fx.readonly / 'results'}: cannot write here"),
]


def _run_case(fx: Fx, tmp: Path, build: Args, expected: object) -> None:
    work = tmp / "work"
    work.mkdir()
    args = build(fx, work)
    if args[0] != "--device":
        args = ["--device", "cpu", *args]
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    result = runner.invoke(app, args)
    text = expected(fx, work) if callable(expected) else expected
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert len(errors) == 1, result.stderr
    assert text in errors[0], errors[0]
    # Nothing the failed command created is left behind (what the case itself made is kept).
    after = sorted(p.relative_to(work) for p in work.rglob("*"))
    assert after == before, f"left behind: {sorted(set(after) - set(before))}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(fx, tmp_path, case):
    _, build, expected = case
    _run_case(fx, tmp_path, build, expected)


@pytest.mark.parametrize("case", READONLY_CASES, ids=[c[0] for c in READONLY_CASES])
def test_unwritable_output_folder_is_one_clear_error(fx, tmp_path, case):
    if fx.readonly is None:
        pytest.skip("no unwritable folder on this machine (root without /sys)")
    _, build, expected = case
    _run_case(fx, tmp_path, build, expected)


# --- what a failure or a kill leaves behind -------------------------------------------------------

def test_a_killed_write_leaves_no_temporary_and_a_rerun_clears_old_ones(fx, tmp_path):
    from coordgan_cli.io.atomic import atomic_path

    target = tmp_path / "ckpt-0000002.pt"
    with pytest.raises(SystemExit):  # SIGTERM arrives as SystemExit (see cli.main)
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise SystemExit(143)
    assert list(tmp_path.iterdir()) == []
    # kill -9 cannot be caught: the 0-byte temporary it leaves is removed when the run starts again.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".ckpt-0000002.pt.x1y2z3.tmp.pt").write_bytes(b"")
    result = runner.invoke(app, ["--device", "cpu", "--quiet", "train", str(fx.recipe), "--out", str(run),
                                 "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert not list(run.glob(".*.tmp*")) and (run / "latest.pt").is_file()


def test_reference_sizes_of_broken_images_are_one_clear_error(fx):
    from coordgan_cli.io.images import ImageReadError, image_size

    assert image_size(fx.good) == (16, 16)
    for path, words in ((fx.bomb, "decompression-bomb"), (fx.zero, "0-byte"), (fx.text, "not an image"),
                        (fx.root / "missing.png", "not found")):
        with pytest.raises(ImageReadError) as err:
            image_size(path)
        assert err.value.message.startswith(f"{path}: ") and words in err.value.message


def test_help_is_fast_to_start_and_readable():
    import subprocess
    import sys

    # --help must not import torch (it took ~10 s to start on a busy machine).
    code = "import sys; from coordgan_cli.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.strip() == "False"
    root = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert "<bool>" not in root.output and "--quiet" in root.output and "--verbose" in root.output
    for command, word in (("train-encoder", "[encoder]"), ("train-matcher", "[matcher]")):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert word in result.output, result.output
    swap = runner.invoke(app, ["swap", "--help"], env={"COLUMNS": "200"})
    assert "<list[" not in swap.output and "<str>..." in swap.output


def test_a_cuda_device_is_refused_where_there_is_none(fx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["--device", "cuda", "info", str(fx.recipe)])
    assert result.exit_code == 2 and "no CUDA device" in result.stderr and "Traceback" not in result.output
