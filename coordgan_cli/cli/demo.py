"""``coordgan demo OUT``: the shipped model at work in a minute, scored against exact ground truth.

Steps, each the library function behind a command: ``coordgan synth`` writes COUNT + 1 synthetic
faces with their true part masks into OUT/faces; image 000000 and its true mask are the one
annotated reference; the labelling core behind ``coordgan propagate`` (``coordgan_cli.labelling``) labels the other COUNT images with the shipped
CoordGAN model (or, with ``--matcher correlation`` or when no CoordGAN model ships, with the shipped
correlation matcher) into OUT (labels/, overlays/, confidence/, report.html); the labels are scored against the true
masks (mean IoU over the parts, background excluded, the paper's rules: ``metrics.iou``) beside
the identity baseline (the reference mask copied unchanged onto every image). The figures go into
the report's summary line and OUT/demo.json. Rerunning the same command reuses finished work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from coordgan_cli.cli._common import get_state, info, print_json, track
from coordgan_cli.errors import UserError
from coordgan_cli.evaluation.scoring import score_labels  # noqa: F401  (scored here; importable from here too)

CATEGORY = "faces"
DIFFICULTY = "medium"
DEMO_JSON = "demo.json"


def demo_command(
    ctx: typer.Context,
    out: Path = typer.Argument(..., metavar="OUT", help="Output folder (the synthetic set goes in OUT/faces, the "
                               "labels in OUT)."),
    count: int = typer.Option(50, "--count", help="Images to label (one more is made: the reference)."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    seed: int = typer.Option(20261125, "--seed", help="Seed of the synthetic set."),
    model_name: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see "
                                             "`coordgan models`); default: the shipped default model."),
    matcher: str = typer.Option("auto", "--matcher", help="coordinates (a shipped CoordGAN model) | correlation "
                                "(the shipped feature matcher) | auto (coordinates when a CoordGAN model ships, "
                                "else correlation)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures (OUT/demo.json) on stdout."),
) -> None:
    """Label COUNT synthetic faces from one annotated reference with the shipped model and score the
    labels against their true masks, beside the copy-the-reference baseline; writes OUT/report.html
    and OUT/demo.json."""
    from coordgan_cli.data.synth_set import SynthSpec, image_name, write_synth_set
    from coordgan_cli.inference import resolve_matcher
    from coordgan_cli.io.atomic import atomic_write_json, atomic_write_text
    from coordgan_cli.io.checkpoint import file_sha256
    from coordgan_cli.io.masks import read_labels

    state = get_state(ctx)
    started = time.perf_counter()
    if count < 1:
        raise UserError(f"--count must be at least 1, got {count}")
    checkpoint = _choose_checkpoint(state, matcher, model_name)
    used = checkpoint if checkpoint is not None else resolve_matcher(None)
    method = "coordinates" if checkpoint is not None else "correlation"

    # ---- the synthetic set: COUNT queries + the reference ----------------------------------------
    data = out / CATEGORY
    spec = SynthSpec(category=CATEGORY, count=count + 1, size=size, seed=seed, difficulty=DIFFICULTY)
    write_synth_set(data, spec, progress=lambda items, total: track(items, total, "synth", state, unit="img"))
    synth_seconds = time.perf_counter() - started
    reference = image_name(0)
    queries = [f"images/{image_name(i)}" for i in range(1, count + 1)]
    query_list = data / "queries.txt"
    atomic_write_text(query_list, "".join(f"{q}\n" for q in queries))
    labels = read_labels(data / "labels.json")

    # ---- propagate with the shipped model; scored before the report is written -----------------
    figures: dict[str, Any] = {}

    score = _scorer(data, reference, labels, figures)

    info(f"demo: labelling {count} synthetic faces from one reference ({reference}) with the shipped model "
         f"{used.stem!r} ({used})", state)
    propagated = _label(state, data, reference, out, checkpoint, used,
                        f"coordgan demo — {count} synthetic faces labelled by {used.stem!r} from one reference", score)
    if not figures:
        raise UserError(f"{out}: no query was labelled (see the warnings above)")
    seconds = time.perf_counter() - started
    result = {
        "model": used.stem, "matcher": method, "checkpoint": str(used), "checkpoint_sha256": file_sha256(used),
        "set": {"folder": str(data), "category": CATEGORY, "count": count + 1, "size": size, "seed": seed,
                "difficulty": DIFFICULTY},
        "reference": f"images/{reference}", "protocol": "mean IoU over parts (background excluded), intersections "
        "and unions summed over the queries (coordgan_cli.metrics.iou); identity = the reference mask copied",
        **figures,
        "mean_confidence": propagated["mean_confidence"], "tau": propagated["tau"],
        "seconds": {"synth": round(synth_seconds, 3), "propagate": propagated["seconds"], "total": round(seconds, 3)},
        "report": str(out / "report.html"), "labels": str(out / "labels"),
    }
    atomic_write_json(out / DEMO_JSON, result)
    if as_json:
        print_json(result)
        return
    info(f"mIoU over {figures['classes_scored']} parts (background excluded), {figures['queries_scored']} images: "
         f"model {100 * figures['miou']:.1f} %, identity baseline (reference mask copied) "
         f"{100 * figures['miou_identity']:.1f} %  [{seconds:.1f} s]", state)
    info(f"look at {out / 'report.html'} (overlays and confidence, least confident first); labels in "
         f"{out / 'labels'}; figures in {out / DEMO_JSON}", state)


def _choose_checkpoint(state, matcher: str, model_name: Optional[str]) -> Optional[Path]:
    """The CoordGAN model giving the maps, or None for the shipped correlation matcher."""
    from coordgan_cli.inference import NO_MODEL, resolve_model

    if matcher not in ("auto", "coordinates", "correlation"):
        raise UserError(f"--matcher {matcher!r}: choose auto, coordinates or correlation")
    if matcher == "correlation" and model_name is not None:
        raise UserError("--model names a CoordGAN model; --matcher correlation uses the shipped feature matcher")
    checkpoint = None
    if matcher != "correlation":
        try:
            checkpoint = resolve_model(None, model_name)
        except UserError as exc:
            if exc.message != NO_MODEL:
                raise
            if matcher == "coordinates":
                raise UserError("coordgan demo --matcher coordinates needs a shipped CoordGAN model and this build "
                                "ships none (`coordgan models` lists what it has); with your own encoder "
                                "checkpoint: coordgan synth DATA --category faces --count 51, then coordgan "
                                "propagate --ckpt CKPT --ref DATA/images/000000.png --mask DATA/masks/000000.png "
                                "--queries DATA/images --out OUT") from exc
            info("no CoordGAN model ships in this build: the demo uses the shipped correlation matcher", state)
    return checkpoint


def _scorer(data: Path, reference: str, labels, figures: dict[str, Any]):
    """score(out, finished) for the report: mIoU against the true masks, recorded into ``figures``."""
    from coordgan_cli.io.masks import read_mask

    reference_mask = read_mask(data / "masks" / reference)
    num_classes = labels.num_classes

    def score(out_dir: Path, finished: list[str]) -> dict[str, str]:
        if not finished:
            return {}
        ours, identity = score_labels(out_dir, data, finished, reference_mask, num_classes)
        figures.update(queries_scored=len(finished), miou=ours.miou, miou_identity=identity.miou,
                       classes_scored=len(ours.classes),
                       per_class={labels.names.get(c, str(c)): v for c, v in ours.per_class.items()},
                       per_class_identity={labels.names.get(c, str(c)): v for c, v in identity.per_class.items()})
        return {f"mIoU vs true masks ({len(ours.classes)} parts, background excluded)": f"{100 * ours.miou:.1f} %",
                "identity baseline (reference mask copied)": f"{100 * identity.miou:.1f} %"}

    return score


def _label(state, data: Path, reference: str, out: Path, checkpoint: Optional[Path], used: Path, title: str,
           score) -> dict[str, Any]:
    """Label data/queries.txt from the one reference through the labelling core; its summary."""
    from coordgan_cli.cli._common import warn
    from coordgan_cli.correspondence.vote import resolution_tau
    from coordgan_cli.labelling import QueryList, References, label_folder, make_matcher

    queries = QueryList.read(data / "queries.txt")
    references = References.from_pairs([(data / "images" / reference, data / "masks" / reference)],
                                       root=queries.root, info=lambda m: info(m, state), warn=warn)
    tau = resolution_tau(references.side)
    if checkpoint is not None:
        info(f"soft-vote temperature {tau:.4g} (0.01 at 128 px, scaled to {references.side} px)", state)
        matcher = make_matcher("coordinates", ckpt=checkpoint, device=state.torch_device(), tau=tau)
    else:
        matcher = make_matcher("correlation", matcher_ckpt=used, device=state.torch_device())
    return label_folder(references, queries, out, matcher, settings={"tau": tau}, report_title=title, score=score,
                        info=lambda m: info(m, state), warn=warn,
                        track=lambda items, total: track(items, total, "propagate", state, unit="img"))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
