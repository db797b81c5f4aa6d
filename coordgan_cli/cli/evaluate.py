"""``coordgan evaluate``: label-propagation mIoU on standard benchmarks (the paper's protocol or
ours at full resolution), every matcher and the baselines side by side, correspondence accuracy on
synthetic data, and model metrics. Options in, one call into ``coordgan_cli.evaluation``, the
report out (table, ``--json``, ``--out`` files)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Optional

import typer

from coordgan_cli.cli._common import get_state, info, make_progress, print_json
from coordgan_cli.data.benchmarks import available_datasets
from coordgan_cli.errors import UserError
from coordgan_cli.metrics.protocol import PAPER_TAU


def _names(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# What a progress task counts, when not images (the queries, FID images, reconstructions).
UNITS = {"swap pairs": "pair"}


def _bars(state):
    """``evaluation.core.Bars`` on the command's progress display (a Rich bar on a terminal, plain
    lines such as ``[evaluate (paper)] 12/35 img …`` in a pipe or a log file)."""

    @contextmanager
    def bars():
        with make_progress(state, unit="img") as progress:
            def task(description: str, total: Optional[int]):
                handle = progress.add_task(description, total=total, rate="", unit=UNITS.get(description, "img"))
                return lambda n: progress.update(handle, advance=n)

            yield task

    return bars


def evaluate(
    ctx: typer.Context,
    dataset: str = typer.Option(..., "--dataset", help=f"Benchmark layout: {' | '.join(available_datasets())}."),
    root: Path = typer.Option(..., "--root", help="Top folder of the benchmark tree (see README for each layout)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Model checkpoint. An encoder checkpoint gives the maps "
                                        "(encoder + warp MLP), the cosine-NN baseline and reconstruction; its "
                                        "generator (or a generator checkpoint with --store) gives FID and swaps."),
    store: Optional[Path] = typer.Option(None, "--store", help="Precomputed maps (HDF5 correspondence store; README "
                                         "\"File formats\") — any method; opened read-only. With --ckpt too, the "
                                         "maps come from the store."),
    model_name: Optional[str] = typer.Option(None, "--model", help="A shipped CoordGAN model by name (see `coordgan "
                                             "models`) in place of --ckpt. With neither --ckpt nor --store, the "
                                             "shipped default model is used."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="paper (128², per-reference, as published) | "
                                           "fullres (native size, references fused). Default: fullres on "
                                           "--dataset folder, else paper."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write results.{json,csv,md} and per_class_iou.png "
                                       "here (checked before any work)."),
    refs: Optional[str] = typer.Option(None, "--refs", help="Override the references: NAME,NAME,… (path, file name or stem)."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Use only the first N non-reference images as queries."),
    num_refs: Optional[int] = typer.Option(None, "--num-refs", help="--dataset folder: the first K images by name "
                                           "are the references (default 5; --refs names them instead)."),
    ref_root: Optional[Path] = typer.Option(None, "--ref-root", help="--dataset folder: take the references from "
                                            "this other labelled folder (same labels.json), e.g. a train split; "
                                            "every image of --root is then a query."),
    leave_one_out: bool = typer.Option(False, "--leave-one-out", help="--dataset folder: label every image from "
                                       "all the others (small sets); scored as one query set."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone of the features / classifier "
                                           "columns and the photos' cosine-NN: inception (ships, default) | "
                                           "resnet18/34/50/101, dinov2_vits14/vitb14/vitl14[_reg], dinov2 "
                                           "(with --backbone-weights)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="Weights file of --backbone "
                                                    "(a state dict you downloaded; nothing downloads)."),
    vote: Optional[str] = typer.Option(None, "--vote", help="Coordinate vote: soft (softmax vote, as in the paper; "
                                       "default) | hard (nearest coordinate)."),
    legacy_matcher: Optional[str] = typer.Option(None, "--matcher", hidden=True,
                                                 help="Older name of --vote (soft|hard)."),
    matcher_ckpt: Optional[Path] = typer.Option(None, "--matcher-ckpt", help="Feature matcher checkpoint (`coordgan "
                                                "train-matcher`'s latest.pt): adds the correlation and ensemble "
                                                "matchers to the table (default: the shipped matcher, if any)."),
    work_size: Optional[int] = typer.Option(None, "--work-size", help="Shorter side (px) at which the feature "
                                            "matcher sees references and queries (probabilities carried back to the "
                                            "protocol's size). Default: its training size; 0: the protocol's size."),
    no_correlation: bool = typer.Option(False, "--no-correlation", help="Skip the correlation and ensemble "
                                        "matchers (the slow part on a CPU)."),
    tau: float = typer.Option(PAPER_TAU, "--tau", help="Soft-vote temperature (paper: 0.01)."),
    fid_real: Optional[Path] = typer.Option(None, "--fid-real", help="Folder of real images: FID of generated samples "
                                            "against it (needs --ckpt; offline Inception, statistics cached)."),
    fid_samples: int = typer.Option(1000, "--fid-samples", help="Generated samples for FID (the usual protocol: 50000; CPU runs use fewer — compare only at equal counts)."),
    fid_cache: Optional[Path] = typer.Option(None, "--fid-cache", help="Cache folder for real-set FID statistics "
                                             "(default: ~/.cache/coordgan/fid)."),
    perceptual: str = typer.Option("stlpips-alex", "--perceptual", help="Perceptual distance for disentanglement and "
                                   "reconstruction: stlpips-alex | stlpips-vgg (offline) | lpips-alex | lpips-vgg "
                                   "(need the torchvision backbone file)."),
    swap_pairs: int = typer.Option(32, "--swap-pairs", help="Sampled (s, s', t, t') draws for the disentanglement "
                                   "swap distances (needs --ckpt; 0 skips)."),
    recon_images: int = typer.Option(32, "--recon-images", help="Benchmark images (references first) for the "
                                     "encoder reconstruction error (needs an encoder --ckpt; 0 skips)."),
    batch: int = typer.Option(16, "--batch", help="Batch size for generation, FID and reconstruction."),
    matchers: Optional[str] = typer.Option(None, "--matchers", help="Matcher columns: NAME,NAME,… of registered "
                                           "matchers (default: coordinates, correlation, ensemble, and any other "
                                           "registered matcher these inputs can run; on --dataset folder also "
                                           "features and classifier)."),
) -> None:
    """Score label propagation on a benchmark — every matcher (coordinates, correlation, ensemble;
    on a labelled folder of photos also features and classifier) beside the identity and cosine-NN
    baselines — plus FID, swap disentanglement and encoder reconstruction for a model."""
    from coordgan_cli.evaluation.core import EvaluationRequest, evaluate_benchmark, resolve_model_option, resolve_vote
    from coordgan_cli.evaluation.report import render_table, summary_lines, write_outputs
    from coordgan_cli.io.paths import output_folder, removed_on_failure

    state = get_state(ctx)
    folder_options = {"num_refs": num_refs, "ref_root": ref_root, "leave_one_out": leave_one_out or None}
    given = [f"--{k.replace('_', '-')}" for k, v in folder_options.items() if v is not None]
    if given and dataset != "folder":
        raise UserError(f"{', '.join(given)}: only for --dataset folder")
    request = EvaluationRequest(
        dataset, root, store=store, protocol=protocol, refs=_names(refs), queries=queries,
        dataset_options={k: v for k, v in folder_options.items() if v is not None},
        backbone=backbone, backbone_weights=backbone_weights,
        vote=resolve_vote(vote, legacy_matcher), tau=tau, matchers=_names(matchers), matcher_ckpt=matcher_ckpt,
        no_correlation=no_correlation, work_size=work_size, fid_real=fid_real, fid_samples=fid_samples, fid_cache=fid_cache,
        perceptual=perceptual, swap_pairs=swap_pairs, recon_images=recon_images, batch=batch, seed=state.seed)
    request.check_choices()
    if request.photos and ckpt is None and model_name is None:
        request.ckpt = None  # photos: no default CoordGAN model; the coordinates column says what it needs
    else:
        request.ckpt = resolve_model_option(ckpt, model_name, store, lambda m: info(m, state))
    # --out is checked before the (long) work; a folder made for it goes again if the run fails.
    cleanup = removed_on_failure(out, lambda: (out / "results.json").is_file()) if out is not None else nullcontext()
    with cleanup:
        if out is not None:
            output_folder(out)
        report = evaluate_benchmark(request, device=state.torch_device(), info=lambda m: info(m, state),
                                    bars=_bars(state))
        if out is not None:
            written = write_outputs(out, report)
            info(f"wrote {', '.join(str(p) for p in written)}", state)
    if as_json:
        print_json(report)
        return
    from rich.console import Console

    console = Console()
    console.print(render_table(report))
    for line in summary_lines(report):
        console.print(line, highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
