"""``coordgan propagate``: label a folder from a few annotated references.

Option parsing and checks; the work is one call into the labelling core
(``coordgan_cli.labelling``): ``References`` from the --ref/--mask/--refs/--ref-coco options, a
matcher from the registry (``--matcher coordinates|correlation|ensemble`` or any registered name),
then ``label_folder`` streams the queries into labels/, annotations.json, overlays/, confidence/
and report.html, resumably (``OUT/progress.jsonl``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from coordgan_cli.cli._common import AppState, get_state, info, print_json, track, warn
from coordgan_cli.errors import UserError
from coordgan_cli.labelling.matchers import auto_matcher

def propagate(
    ctx: typer.Context,
    ref: list[Path] = typer.Option([], "--ref", help="Reference image (repeat for several)."),
    mask: list[Path] = typer.Option([], "--mask", help="Its mask: palette/greyscale id PNG or .npy (repeat, in --ref order)."),
    queries: str = typer.Option(..., "--queries", help="Images to label: a folder, a text file of paths, or - (stdin)."),
    out: Path = typer.Option(..., "--out", help="Output folder (resumable: a rerun skips finished queries)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Encoder checkpoint giving the maps (when no --store). "
                                        "Default: the shipped CoordGAN model, if this build has one."),
    model: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see `coordgan "
                                        "models`) giving the maps, instead of --ckpt."),
    store: Optional[Path] = typer.Option(None, "--store", help="Correspondence store (HDF5; README \"File formats\") "
                                         "holding the maps of queries and references, keyed by path relative to "
                                         "their folder. Opened read-only; labels/confidence go to OUT/labels.h5."),
    refs: Optional[Path] = typer.Option(None, "--refs", help="Text file of references: 'image mask' per line."),
    ref_coco: Optional[Path] = typer.Option(None, "--ref-coco", help="COCO JSON with the references' masks (CVAT, Label "
                                            "Studio exports); images matched by file_name."),
    labels_path: Optional[Path] = typer.Option(None, "--labels", help="labels.json naming the class ids."),
    mode: str = typer.Option("soft", "--mode", help="soft (τ-weighted vote over all reference pixels) | hard (nearest)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Soft-vote temperature in canonical units. Default: "
                                        "0.01 × 128 / S for references of side S px (the paper's 0.01 at 128 px, "
                                        "scaled so a vote is as sharp as a pixel at any resolution)."),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Mark pixels whose winning vote share "
                                                   "is below this as 255 (ignore)."),
    resize_mask: bool = typer.Option(False, "--resize-mask", help="Resize a mask whose size differs from its image (nearest)."),
    polygons: bool = typer.Option(False, "--polygons", help="COCO segmentations as polygons instead of RLE."),
    ref_keypoints: Optional[Path] = typer.Option(None, "--ref-keypoints", help="COCO keypoints of the references: "
                                                 "transfer them to every query (OUT/keypoints.json)."),
    matcher: str = typer.Option("coordinates", "--matcher", help="coordinates (vote in canonical-coordinate space; "
                                "needs maps) | correlation (a trained feature matcher's CoCosNet correlation; no "
                                "maps) | ensemble (average of both votes' class probabilities) | features (kNN vote "
                                "on a pretrained backbone's features; photos) | classifier (small MLPs trained on "
                                "the references' backbone features) | auto: coordinates when maps are given "
                                "(--store/--ckpt/--model), correlation when --matcher-ckpt is, else features "
                                "(the best on real photos); the choice is printed."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone of --matcher features/classifier: "
                                           "inception (ships, default) | resnet18/34/50/101 | "
                                           "dinov2_vits14/vitb14/vitl14[_reg] "
                                           "(official DINOv2 *_pretrain.pth or timm file), dinov2 (any size) "
                                           "(these need --backbone-weights)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="Weights file for --backbone "
                                                    "(a state dict you downloaded; nothing downloads)."),
    matcher_ckpt: Optional[Path] = typer.Option(None, "--matcher-ckpt", help="Feature matcher checkpoint (the "
                                                "latest.pt of `coordgan train-matcher`) for --matcher correlation/"
                                                "ensemble; its recipe's tau, k and patch drive the correlation."),
    work_size: Optional[int] = typer.Option(None, "--work-size", help="Shorter side (px) at which --matcher correlation/"
                                            "ensemble run the matcher; labels are carried back to each image's own "
                                            "size. Default: the matcher's training size; 0: each image's own size."),
    report_limit: int = typer.Option(500, "--report-limit", help="Picture rows in report.html (least confident "
                                     "first); 0: none, the summary only."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Transfer reference masks to every query image at its own resolution: palette PNGs +
    labels.json, COCO annotations.json, overlays, confidence heat maps and report.html."""
    state = get_state(ctx)
    summary = run_propagate(
        state, ref=ref, mask=mask, queries=queries, out=out, ckpt=ckpt, model=model, store=store, refs=refs,
        ref_coco=ref_coco, labels_path=labels_path, mode=mode, tau=tau, min_confidence=min_confidence,
        resize_mask=resize_mask, polygons=polygons, ref_keypoints=ref_keypoints, matcher=matcher,
        matcher_ckpt=matcher_ckpt, report_limit=report_limit, work_size=work_size, backbone=backbone,
        backbone_weights=backbone_weights)
    if json_out:
        print_json(summary)
        return
    finished, mean_conf = summary["count"], summary["mean_confidence"]
    info(f"labelled {finished} image(s) ({summary['new']} new, {summary['resumed']} from an earlier run, "
         f"{len(summary['skipped'])} skipped) in {summary['seconds']:.1f} s; mean confidence "
         f"{mean_conf:.3f}" if mean_conf is not None else "no images labelled", state)
    info(f"outputs in {out}: labels/, annotations.json, overlays/, confidence/, report.html", state)


EXAMPLE = """Examples: maps from an encoder checkpoint; then the shipped feature matcher (no maps needed):

coordgan propagate --ckpt enc.pt --ref a.jpg --mask a.png --queries photos/ --out labelled/

coordgan propagate --matcher correlation --ref a.jpg --mask a.png --queries photos/ --out labelled/"""


def run_propagate(state: AppState, *, queries: str, out: Path, ref: list[Path] = (), mask: list[Path] = (),
                  refs: Optional[Path] = None, ref_coco: Optional[Path] = None, labels_path: Optional[Path] = None,
                  resize_mask: bool = False, matcher: str = "coordinates", ckpt: Optional[Path] = None,
                  model: Optional[str] = None, store: Optional[Path] = None, matcher_ckpt: Optional[Path] = None,
                  mode: str = "soft", tau: Optional[float] = None, ref_keypoints: Optional[Path] = None,
                  work_size: Optional[int] = None, backbone: Optional[str] = None,
                  backbone_weights: Optional[Path] = None, **options: Any) -> dict[str, Any]:
    """``coordgan propagate`` with its options as keywords: checks, references, matcher, one
    ``label_folder`` call; returns the JSON summary (options: min_confidence, polygons, report_limit).
    A new ``out`` folder is removed again when the run fails before any query is labelled."""
    from coordgan_cli.correspondence.vote import resolution_tau
    from coordgan_cli.io.paths import output_folder, removed_on_failure
    from coordgan_cli.labelling import QueryList, label_folder, make_matcher

    if mode not in ("soft", "hard"):
        raise UserError(f"--mode must be soft or hard, got {mode!r}")
    if tau is not None and not tau > 0:
        raise UserError(f"--tau must be positive, got {tau}")
    min_confidence = options.get("min_confidence")
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"--min-confidence must be in [0, 1], got {min_confidence}")
    if options.get("report_limit", 0) < 0:
        raise UserError(f"--report-limit must be 0 (no picture rows) or more, got {options['report_limit']}")
    if matcher == "auto":
        matcher, why = auto_matcher(store, ckpt, model, matcher_ckpt)
        info(f"--matcher auto: {matcher} ({why})", state)
    _check_matcher_options(matcher, matcher_ckpt, store, ckpt, mode, ref_keypoints, model)
    _check_backbone_options(matcher, backbone, backbone_weights)
    if work_size is not None and matcher == "coordinates":
        raise UserError("--work-size sets the feature matcher's resolution: use it with --matcher correlation or ensemble")
    device = state.torch_device()  # resolved (or refused) before any work, whatever uses it
    uses_maps = matcher in ("coordinates", "ensemble")  # these vote on correspondence maps
    if uses_maps and store is None:
        ckpt = _resolve_map_model(ckpt, model, state)
    query_list = QueryList.read(queries)
    if not query_list.paths:
        from coordgan_cli.io.images import IMAGE_EXTENSIONS

        raise UserError(f"{queries}: no images to label (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, "
                        "in subfolders too)")
    with removed_on_failure(out, lambda: any((Path(out) / "labels").rglob("*.png"))):
        output_folder(out)
        references = _references(state, query_list.root, ref, mask, refs, ref_coco, labels_path, resize_mask)
        if tau is None:
            tau = resolution_tau(references.side)
            if uses_maps and mode == "soft":
                info(f"soft-vote temperature {tau:.4g} (0.01 at 128 px, scaled to {references.side} px)", state)
        if store is not None and matcher == "coordinates" and device.type != "cpu":
            info(f"--device {device}: unused, the maps come from --store and the coordinate vote runs on the CPU",
                 state)
        found = {"coordinates": dict(store=store, ckpt=ckpt, device=device, mode=mode, tau=tau),
                 "correlation": dict(matcher_ckpt=matcher_ckpt, device=device, work_size=work_size),
                 "ensemble": dict(store=store, ckpt=ckpt, matcher_ckpt=matcher_ckpt, device=device, mode=mode,
                                  tau=tau, work_size=work_size)}
        # A registered matcher of another name gets the device and, when given, --matcher-ckpt and --work-size.
        given = {"matcher_ckpt": matcher_ckpt, "work_size": work_size, "backbone": backbone,
                 "backbone_weights": backbone_weights}
        other = dict(device=device, **{k: v for k, v in given.items() if v is not None})
        summary = label_folder(references, query_list, out, make_matcher(matcher, **found.get(matcher, other)),
                               keypoints=ref_keypoints, settings={"mode": mode, "tau": tau},
                               info=lambda m: info(m, state), warn=warn,
                               track=lambda items, total: track(items, total, "propagate", state, unit="img"),
                               track_references=lambda items, total: track(items, total, "references", state,
                                                                           unit="img"), **options)
        if summary["count"] == 0 and summary["skipped"]:
            raise nothing_labelled(query_list, summary["skipped"])
    return summary


def nothing_labelled(query_list: Any, skipped: list[dict[str, str]]) -> UserError:
    """The error when every query was skipped: the first one's file and reason."""
    first = skipped[0]
    path = dict(zip(query_list.names, query_list.paths)).get(first["name"], first["name"])
    reason = first["reason"] if first["reason"].startswith(str(path)) else f"{path}: {first['reason']}"
    more = f" (and {len(skipped) - 1} more, listed above)" if len(skipped) > 1 else ""
    return UserError(f"no query could be labelled: {reason}{more}")


def _references(state: AppState, root: Optional[Path], ref: list[Path], mask: list[Path], refs: Optional[Path],
                ref_coco: Optional[Path], labels_path: Optional[Path], resize_mask: bool):
    """The References named by --refs, --ref/--mask and --ref-coco (pairs file first)."""
    from coordgan_cli.labelling import References
    from coordgan_cli.labelling.references import reference_pairs

    return References.from_pairs(reference_pairs(refs, ref, mask, ref_coco, warn=warn), labels=labels_path,
                                 coco=ref_coco, root=root, resize_mask=resize_mask,
                                 info=lambda m: info(m, state), warn=warn)


def _resolve_map_model(ckpt: Optional[Path], model: Optional[str], state: AppState) -> Path:
    """The encoder checkpoint giving the maps: --ckpt, --model or the shipped default (named on stderr)."""
    from coordgan_cli.inference import is_default_model, resolve_model

    if ckpt is None and model is None:
        try:
            path = resolve_model(None, None)
        except UserError as exc:
            raise UserError("no correspondence maps: pass --store maps.h5 (e.g. from `coordgan invert` or "
                            "`coordgan synth`), --ckpt with an encoder checkpoint or --model NAME; this build "
                            "ships no CoordGAN model") from exc
        if is_default_model(path):
            info(f"maps from the shipped model {path.stem!r} ({path}); --ckpt or --model chooses another", state)
        return path
    return resolve_model(ckpt, model)


def _check_backbone_options(matcher: str, backbone: Optional[str], backbone_weights: Optional[Path]) -> None:
    if (backbone is not None or backbone_weights is not None) and matcher in ("coordinates", "correlation",
                                                                                "ensemble"):
        raise UserError(f"--backbone/--backbone-weights choose the backbone of --matcher features or classifier, "
                        f"not {matcher}")
    if backbone_weights is not None and not Path(backbone_weights).is_file():
        name = backbone or "backbone"
        raise UserError(f"{backbone_weights}: backbone weights file not found; place the {name} weights there "
                        "(a state dict you downloaded; see README \"Real photos\")")


def _check_matcher_options(matcher: str, matcher_ckpt: Optional[Path], store: Optional[Path], ckpt: Optional[Path],
                           mode: str, ref_keypoints: Optional[Path], model: Optional[str] = None) -> None:
    """Refuse option combinations that would silently do something other than asked."""
    if model is not None and ckpt is not None:
        raise UserError("--model and --ckpt both name the model giving the maps: pass one of them")
    if model is not None and store is not None:
        raise UserError("--model and --store: the maps come from the store, so the model would be unused; drop one")
    from coordgan_cli.labelling import available_matchers

    if matcher not in available_matchers():
        raise UserError(f"--matcher must be one of {', '.join(available_matchers())}, got {matcher!r}")
    if matcher == "coordinates" and matcher_ckpt is not None:
        raise UserError("--matcher-ckpt is used by --matcher correlation or ensemble, not coordinates")
    if matcher == "correlation":
        if store is not None or ckpt is not None or model is not None:
            raise UserError("--matcher correlation uses no correspondence maps: drop --store/--ckpt/--model, or use "
                            "--matcher ensemble to combine the maps' vote with the correlation")
        if mode != "soft":
            raise UserError("--mode applies to the coordinate vote; --matcher correlation is always the soft "
                            "CoCosNet correlation (use --matcher ensemble to combine it with a hard vote)")
        if ref_keypoints is not None:
            raise UserError("--ref-keypoints transfers keypoints through correspondence maps: use --matcher "
                            "coordinates or ensemble (with --store or --ckpt)")


def register(app: typer.Typer) -> None:
    app.command("propagate", epilog=EXAMPLE)(propagate)
