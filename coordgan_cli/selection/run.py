"""``coordgan suggest`` as a function: which images to annotate — the first references, and the next ones.

``suggest_images`` checks its inputs (each mistake a ``UserError`` naming the file or option),
describes the images (``descriptors``), chooses among them (``select``) and writes
``OUT/suggested.txt``, ``OUT/suggested.json`` and ``OUT/contact_sheet.png``; it returns the JSON
summary. First round: the K medoids or the K farthest-first images, around any --exclude images.
Next round (``from_run``): the images a finished ``coordgan propagate`` labelled least confidently
and least like its references (``runs`` reads that folder).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import numpy as np

from coordgan_cli.errors import UserError
from coordgan_cli.selection import select
from coordgan_cli.selection.runs import locate, read_list, read_run, read_run_json, run_references

METHODS = ("kmedoids", "farthest")
DEFAULT_BACKBONE = "inception"  # the shipped Inception-v3 (nothing downloads)

# total → a context giving on_batch(images described so far); the caller's progress display.
DescribeProgress = Callable[[int], ContextManager[Callable[[int], None]]]


@contextmanager
def _no_progress(total: int) -> Iterator[Callable[[int], None]]:
    yield lambda done: None


@dataclass
class Candidates:
    """The images to choose from (``paths``, named ``names``) and the images already annotated."""

    images: str  # what they were read from, for messages
    paths: list[Path]
    names: list[str]
    list_base: Optional[Path]  # the folder relative entries of path lists are under (None: none)
    fixed_in: list[int] = field(default_factory=list)  # annotated images among ``paths`` (indices)
    fixed_out: list[Path] = field(default_factory=list)  # annotated images that are not among them
    run: dict[str, dict[str, float]] = field(default_factory=dict)  # next round: name → confidence


def _check_choice(k: int, batch_size: int, method: str, from_run: Optional[Path], refs: Optional[Path]) -> None:
    if k < 1:
        raise UserError(f"--k must be at least 1, got {k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if refs is not None and from_run is None:
        raise UserError("--refs names a propagate run's references: use it with --from-run (or use --exclude)")
    if from_run is not None and method != "kmedoids":
        raise UserError("--method chooses the first round's picks; --from-run always ranks by uncertainty × novelty")


def _check_descriptor(ckpt: Optional[Path], backbone: Optional[str], backbone_weights: Optional[Path]) -> Optional[str]:
    """The backbone that will describe the images (None with --ckpt); its files checked."""
    if ckpt is not None and not ckpt.is_file():
        raise UserError(f"{ckpt}: --ckpt file not found")
    if ckpt is not None and (backbone is not None or backbone_weights is not None):
        raise UserError("--ckpt describes images by the encoder's structure code: leave out --backbone/--backbone-weights")
    if ckpt is not None:
        return backbone
    from coordgan_cli.backbones import BACKBONES, backbone_names

    backbone = DEFAULT_BACKBONE if backbone is None else backbone
    if backbone not in backbone_names():
        raise UserError(f"--backbone {backbone!r} is not a backbone; choose from {', '.join(backbone_names())}")
    if backbone_weights is not None and not backbone_weights.is_file():
        raise UserError(f"{backbone_weights}: --backbone-weights file not found")
    if BACKBONES[backbone][1] and backbone_weights is None:
        raise UserError(f"--backbone {backbone} needs --backbone-weights FILE ({BACKBONES[backbone][2]}); "
                        "nothing is downloaded at run time")
    return backbone


def _candidates(images: Optional[str], from_run: Optional[Path], record: Optional[dict[str, Any]]) -> Candidates:
    """The images given (a folder, a path list, -), or else the queries the run's record names."""
    from coordgan_cli.io.images import read_path_list, relative_name

    if images is not None:
        root, paths = read_path_list(images)
        list_base = None if root is None else (root if Path(images).is_dir() else Path(images).parent)
    else:  # the run's queries, read as `propagate` read them
        source = record["queries"].get("source")
        if isinstance(source, str):
            if not Path(source).exists():
                raise UserError(f"{from_run / 'run.json'}: the run's queries {source} are gone; give IMAGES")
            images = source
            root, paths = read_path_list(source)
            list_base = None if root is None else (root if Path(source).is_dir() else Path(source).parent)
        else:
            images = str(from_run / "run.json")
            root, paths, list_base = None, [Path(p) for p in record["queries"]["paths"]], None
    if not paths:
        raise UserError(f"{images}: no images found")
    return Candidates(images, list(paths), [relative_name(p, root) for p in paths], list_base)


def _add_annotated(c: Candidates, exclude: Optional[Path], from_run: Optional[Path],
                   record: Optional[dict[str, Any]], refs: Optional[Path]) -> None:
    """Fill ``c.fixed_in``/``c.fixed_out`` from --exclude and the run's references, ``c.run`` from the run."""
    by_name = {n: i for i, n in enumerate(c.names)}
    by_path = {p.resolve(): i for i, p in enumerate(c.paths)}
    if exclude is not None:
        inside, outside = locate(read_list(exclude, "--exclude"), exclude.parent, c.list_base, by_name, by_path,
                                 str(exclude))
        c.fixed_in += inside
        c.fixed_out += outside
    if from_run is not None:
        c.run = read_run(from_run)
        entries, base, where = run_references(from_run, record, refs)
        inside, outside = locate(entries, base, c.list_base, by_name, by_path, where)
        c.fixed_in += inside
        c.fixed_out += outside
        if not any(n in c.run for n in c.names):
            raise UserError(f"{from_run}: none of the {len(c.names)} images of {c.images} was labelled in that run "
                            "(give the same images as its --queries)")
    c.fixed_in = sorted(set(c.fixed_in))


def _describe(paths: list[Path], ckpt: Optional[Path], backbone: Optional[str], backbone_weights: Optional[Path],
              device: Any, batch_size: int,
              progress: DescribeProgress) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """(descriptors (M, D), kept: the index in ``paths`` of each row, the images skipped as unreadable)."""
    from coordgan_cli.selection.descriptors import backbone_descriptors, structure_descriptors

    skipped: list[dict[str, str]] = []
    with progress(len(paths)) as on_batch:
        kwargs = dict(device=device, batch_size=batch_size, on_batch=on_batch,
                      on_skip=lambda p, reason: skipped.append({"path": str(p), "reason": reason}))
        if ckpt is None:
            descriptors, kept = backbone_descriptors(paths, backbone, backbone_weights, **kwargs)
        else:
            descriptors, kept = structure_descriptors(paths, ckpt, **kwargs)
    return descriptors, list(kept), skipped


def _fixed_rows(c: Candidates, kept: list[int], k: int, next_round: bool) -> tuple[list[int], int]:
    """(descriptor rows of the annotated images, how many rows are images to choose from); too few
    images left to choose K is a UserError."""
    n = len(c.paths)
    row_of = {original: row for row, original in enumerate(kept)}
    fixed_rows = [row_of[i] for i in c.fixed_in if i in row_of] + \
                 [row_of[n + j] for j in range(len(c.fixed_out)) if n + j in row_of]
    candidates = [row for row, original in enumerate(kept) if original < n]  # rows of folder images
    selectable = len(candidates) - len([r for r in fixed_rows if kept[r] < n])
    if next_round:
        selectable = sum(1 for r in candidates if c.names[kept[r]] in c.run and r not in set(fixed_rows))
    if k > selectable:
        raise UserError(f"{c.images}: asked for {k} suggestions but only {selectable} image(s) can be suggested"
                        + (" (labelled in the run, not a reference)" if next_round else
                           " (readable, not excluded)"))
    return fixed_rows, len(candidates)


def _choose(c: Candidates, descriptors: np.ndarray, kept: list[int], fixed_rows: list[int], k: int, method: str,
            seed: int, next_round: bool) -> select.Selection:
    if not next_round:
        pick = select.representatives if method == "kmedoids" else select.farthest_first
        return pick(descriptors, k, fixed=fixed_rows, seed=seed)
    uncertainty = np.full(len(kept), np.nan)
    for row, original in enumerate(kept):
        if original < len(c.paths) and c.names[original] in c.run:
            uncertainty[row] = 1.0 - c.run[c.names[original]]["mean_confidence"]
    return select.next_round(descriptors, uncertainty, k, fixed=fixed_rows)


def _picks(c: Candidates, descriptors: np.ndarray, kept: list[int], fixed_rows: list[int],
           chosen: select.Selection, folder_count: int, next_round: bool) -> list[dict[str, Any]]:
    """One JSON entry per pick: path, name, cluster size and share (and, next round, the run's confidence
    and the distance to the nearest reference)."""
    x = select.normalise(descriptors) if next_round and fixed_rows else None
    picks = []
    for row, size in zip(chosen.indices, chosen.cluster_sizes):
        original = kept[row]
        entry: dict[str, Any] = {"path": str(c.paths[original].resolve()), "name": c.names[original],
                                 "cluster_size": int(size), "share": round(size / folder_count, 6)}
        if next_round:
            entry.update(c.run[c.names[original]])
            entry["distance_to_references"] = (float(np.sqrt(select._sq_dist(x[[row]], x[fixed_rows]).min()))
                                               if x is not None else None)
        picks.append(entry)
    return picks


def _write_picks(out: Path, picks: list[dict[str, Any]], pictures: list[Path], next_round: bool) -> None:
    """OUT/suggested.txt (one path a line) and OUT/contact_sheet.png (the picks, captioned)."""
    from coordgan_cli.io.atomic import atomic_write_text
    from coordgan_cli.io.contact_sheet import write_contact_sheet
    from coordgan_cli.io.images import read_image

    atomic_write_text(out / "suggested.txt", "".join(p["path"] + "\n" for p in picks))
    captions = []
    for i, p in enumerate(picks, 1):
        second = f"{p['cluster_size']} images ({100 * p['share']:.1f}%)"
        if next_round:
            second = f"confidence {p['mean_confidence']:.3f} · " + second
        captions.append([f"#{i} {p['name']}", second])
    write_contact_sheet(out / "contact_sheet.png", [read_image(p) for p in pictures], captions)


def suggest_images(images: Optional[str], *, k: int, out: Path, exclude: Optional[Path] = None,
                   from_run: Optional[Path] = None, refs: Optional[Path] = None, method: str = "kmedoids",
                   ckpt: Optional[Path] = None, backbone: Optional[str] = None,
                   backbone_weights: Optional[Path] = None, seed: int = 0, batch_size: int = 16, device: Any = "cpu",
                   describe_progress: Optional[DescribeProgress] = None,
                   on_skip: Optional[Callable[[dict[str, str]], None]] = None) -> dict[str, Any]:
    """``coordgan suggest``: choose K images to annotate and write them to ``out``; returns the JSON
    summary (also written to OUT/suggested.json). ``describe_progress(total)`` shows the describing
    step; ``on_skip({"path", "reason"})`` hears of each unreadable image once it is done."""
    from coordgan_cli.io.atomic import atomic_write_json
    from coordgan_cli.io.paths import output_folder

    _check_choice(k, batch_size, method, from_run, refs)
    record = read_run_json(from_run) if from_run is not None and from_run.is_dir() else None
    if images is None and record is None:
        raise UserError("give the images to choose from (a folder, a path list or -)"
                        + (f"; {from_run} has no run.json (a run before it was written): give the images that "
                           "were propagated (its --queries)" if from_run else ""))
    backbone = _check_descriptor(ckpt, backbone, backbone_weights)
    c = _candidates(images, from_run, record)
    _add_annotated(c, exclude, from_run, record, refs)
    output_folder(out)  # inputs are checked; an unwritable --out is one clear error before the long part

    next_round = from_run is not None
    all_paths = c.paths + c.fixed_out
    descriptors, kept, skipped = _describe(all_paths, ckpt, backbone, backbone_weights, device, batch_size,
                                           describe_progress or _no_progress)
    for s in skipped:
        if on_skip is not None:
            on_skip(s)
    fixed_rows, folder_count = _fixed_rows(c, kept, k, next_round)
    chosen = _choose(c, descriptors, kept, fixed_rows, k, method, seed, next_round)
    picks = _picks(c, descriptors, kept, fixed_rows, chosen, folder_count, next_round)
    _write_picks(out, picks, [c.paths[kept[r]] for r in chosen.indices], next_round)
    summary: dict[str, Any] = {
        "k": k, "mode": "next-round" if next_round else "first-round",
        "method": "uncertainty×novelty" if next_round else method,
        "descriptor": "structure" if ckpt is not None else backbone, "seed": seed,
        "images": folder_count, "excluded": len(fixed_rows), "skipped": skipped, "picks": picks,
        "outputs": {"suggested": str(out / "suggested.txt"), "json": str(out / "suggested.json"),
                    "contact_sheet": str(out / "contact_sheet.png")},
    }
    if next_round:
        summary["run"] = str(from_run)
        summary["references"] = [str(all_paths[kept[r]]) for r in fixed_rows]
    atomic_write_json(out / "suggested.json", summary)
    return summary
