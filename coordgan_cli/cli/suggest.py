"""``coordgan suggest``: which images to annotate — the first references, and the next ones.

First round: describe every image (a pretrained backbone's global descriptor — by default the
offline Inception-v3's pool features, --backbone NAME --backbone-weights FILE for another from
the registry the real-photo matchers use — or the CoordGAN encoder's structure code with
--ckpt), pick the K medoids (``selection.select.representatives``) or the K farthest-first
images, and write ``suggested.txt`` + a contact sheet + ``suggested.json``.

Next round (``--from-run OUT``): read the per-image confidence a finished ``coordgan propagate``
recorded in ``OUT/progress.jsonl`` and pick the images whose labels are least certain and least
like the current references (``selection.select.next_round``). The queries and references come
from ``OUT/run.json`` (written by the run), so IMAGES and --refs may be left out.

The work is ``selection.run.suggest_images`` (reading the run folder: ``selection.runs``); this
module parses the options, calls it and prints the picks.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from coordgan_cli.cli._common import AppState, get_state, info, make_progress, print_json, warn
from coordgan_cli.selection.run import suggest_images


def suggest(
    ctx: typer.Context,
    images: Optional[str] = typer.Argument(None, help="Images to choose from: a folder, a text file of paths, or - "
                                           "(stdin). With --from-run: the images that were propagated (default: "
                                           "the run's queries, from OUT/run.json)."),
    k: int = typer.Option(..., "--k", help="Number of images to suggest."),
    out: Path = typer.Option(Path("suggested"), "--out", help="Output folder: suggested.txt, suggested.json, "
                             "contact_sheet.png."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="Images already annotated (a path list, "
                                           "suggested.txt or a --refs pairs file): never suggested, and the picks "
                                           "cover what they do not."),
    from_run: Optional[Path] = typer.Option(None, "--from-run", help="A finished `coordgan propagate` output folder: "
                                            "suggest the next K images, least certain and unlike the references."),
    refs: Optional[Path] = typer.Option(None, "--refs", help="With --from-run: the run's references (its --refs "
                                        "pairs file or a path list). Default: those OUT/run.json records (or, for "
                                        "a run without one, the names in OUT/report.html)."),
    method: str = typer.Option("kmedoids", "--method", help="kmedoids (the K images that best stand for the folder) "
                               "| farthest (the K most different images; greedy max-min)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Pretrained backbone whose global descriptor "
                                           "describes the images (as the features/classifier matchers): inception "
                                           "(default, shipped), resnet18/34/50/101, "
                                           "dinov2_vits14/vitb14/vitl14[_reg], dinov2 (need "
                                           "--backbone-weights)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="The backbone's weights file "
                                                    "(state dict placed on disk; nothing downloads)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Describe images by this CoordGAN encoder checkpoint's "
                                        "structure code instead of a backbone's descriptor."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the k-medoids seeding (default: the root --seed)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images described per batch."),
    json_out: bool = typer.Option(False, "--json", help="Print the picks as JSON on stdout."),
) -> None:
    """Suggest which K images to annotate: the most representative ones first, or (--from-run) the
    ones whose propagated labels are least certain and least like the current references."""
    state = get_state(ctx)
    summary = run_suggest(state, images=images, k=k, out=out, exclude=exclude, from_run=from_run, refs=refs,
                          method=method, ckpt=ckpt, backbone=backbone, backbone_weights=backbone_weights,
                          seed=state.seed if seed is None else seed, batch_size=batch_size)
    if json_out:
        print_json(summary)
        return
    for i, pick in enumerate(summary["picks"], 1):
        extra = (f", confidence {pick['mean_confidence']:.3f}" if "mean_confidence" in pick else "")
        typer.echo(f"{i}. {pick['path']}  ({pick['cluster_size']} images, {100 * pick['share']:.1f}%{extra})")
    info(f"outputs in {out}: suggested.txt, suggested.json, contact_sheet.png", state)


def run_suggest(state: AppState, *, images: Optional[str], k: int, out: Path, exclude: Optional[Path] = None,
                from_run: Optional[Path] = None, refs: Optional[Path] = None, method: str = "kmedoids",
                ckpt: Optional[Path] = None, backbone: Optional[str] = None, backbone_weights: Optional[Path] = None,
                seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """``coordgan suggest`` as a function (``selection.run.suggest_images`` on the root options' device,
    with this command's progress bar and warnings); returns the JSON summary."""

    @contextmanager
    def describing(total: int) -> Iterator[Callable[[int], None]]:
        with make_progress(state, unit="img") as progress:
            task = progress.add_task("describe", total=total, rate="")
            yield lambda done: progress.update(task, completed=done)

    return suggest_images(images, k=k, out=out, exclude=exclude, from_run=from_run, refs=refs, method=method,
                          ckpt=ckpt, backbone=backbone, backbone_weights=backbone_weights, seed=seed,
                          batch_size=batch_size, device=state.torch_device(), describe_progress=describing,
                          on_skip=lambda s: warn(f"skipped {s['path']}: {s['reason']}"))


def register(app: typer.Typer) -> None:
    app.command("suggest")(suggest)
