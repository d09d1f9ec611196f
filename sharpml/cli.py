"""``sharpml``: the whole job on one machine, and the tools around it.

Exit codes are the ``EXIT_*`` names of :mod:`sharpml.contract`: 0 success; 1 unexpected error (and
``inspect`` on a file with non-finite values); 2 usage error; 3 photos rejected by intake;
4 reconstruction rejected by the quality gate; 5 COLMAP failed; 6 training failed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import click
import pycolmap
from tqdm import tqdm

from sharpml import intake, sfm, splat
from sharpml.config import MB, ConfigError, IntakeLimits, job_timeout_seconds
from sharpml.contract import (
    EXIT_COLMAP_FAILED,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_QUALITY_GATE,
    EXIT_REJECTED,
    EXIT_TRAINING_FAILED,
    SfmResult,
)
from sharpml.layout import DataDir, JobDir
from sharpml.sfm_features import FIRST_OCTAVES, UPSAMPLE_AT_MOST_PX
from sharpml.train.options import DEVICES, TrainOptions

_STAGE_TITLES = {
    "intake": "checking photos",
    "extract": "finding features",
    "match": "matching photos",
    "map": "placing cameras",
    "retry": "retrying",
    "undistort": "undistorting",
    "load": "loading the scene",
    "train": "training",
    "evaluate": "scoring",
}


class ProgressBars:
    """A progress hook: one tqdm bar per stage on a terminal, one line per finished stage otherwise."""

    def __init__(self, stream=None) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.stage = ""
        self.bar: tqdm | None = None
        self.last_message = ""

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if stage == "done":
            self.close()
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            if self.interactive:
                title = _STAGE_TITLES.get(stage, stage)
                self.bar = tqdm(total=100, desc=f"{title:>17}", file=self.stream, leave=True, bar_format=_BAR)
        self.last_message = message
        if self.bar is not None:
            self.bar.n = round(fraction * 100)
            self.bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()
            self.bar = None
        elif self.stage and not self.interactive:
            click.echo(f"  {_STAGE_TITLES.get(self.stage, self.stage)}: {self.last_message}", err=True)
        self.stage = ""


_BAR = "{desc} {percentage:3.0f}%|{bar:30}| {elapsed}{postfix}"


def _limits() -> IntakeLimits:
    try:
        return IntakeLimits.from_env()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


#: How many skipped folder entries are named one per line before the rest are counted.
_SKIPPED_SHOWN = 20


def _select(paths: Sequence[Path]) -> list[intake.Upload]:
    """The uploads for PATHS (see :func:`sharpml.intake.select_uploads`), naming what was skipped."""
    selection = intake.select_uploads(paths)
    if selection.skipped:
        n = len(selection.skipped)
        click.secho(
            f"skipped {n} folder {'entry' if n == 1 else 'entries'} (not photos):", fg="yellow", err=True
        )
        for entry in selection.skipped[:_SKIPPED_SHOWN]:
            click.echo(f"  {entry}", err=True)
        if n > _SKIPPED_SHOWN:
            click.echo(f"  ... and {n - _SKIPPED_SHOWN} more", err=True)
    return selection.uploads


def _report_rejection(exc: intake.IntakeRejected) -> None:
    click.secho(f"✘ {len(exc.problems)} problem(s); nothing was stored:", fg="red", err=True)
    for problem in exc.problems:
        click.echo(f"  {problem}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sharpml")
def cli() -> None:
    """SharpML: phone photos in, a 3D Gaussian splat out."""


@cli.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help=".splat")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="SHARPML_DATA_DIR")
@click.option("--matcher", type=click.Choice(sfm.MATCHERS), default="auto", show_default=True)
@click.option("--mapper", type=click.Choice(sfm.MAPPERS), default="auto", show_default=True)
@click.option("--max-image-size", type=click.IntRange(200, 8000), default=sfm.SfmOptions.max_image_size)
@click.option(
    "--first-octave",
    type=click.Choice(FIRST_OCTAVES),
    default="auto",
    show_default=True,
    help=f"SIFT's first octave (auto: -1, 2x upsampling, for photos of at most {UPSAMPLE_AT_MOST_PX} px).",
)
@click.option("--no-retry", is_flag=True, help="One SfM attempt only: no fallback ladder.")
@click.option("--threads", type=int, default=-1, help="Worker threads for COLMAP (-1: all cores).")
@click.option("--verbose", is_flag=True, help="Show COLMAP's own log.")
@click.option(
    "--train", "do_train", is_flag=True, help="Train the splat (gsplat; CPU or GPU) instead of the preview."
)
@click.option("--steps", type=click.IntRange(1, 100_000), help="Training steps [SHARPML_TRAIN_STEPS: 7000].")
@click.option(
    "--train-image-size", type=click.IntRange(32, 8000), help="Longest photo side for training [1600]."
)
@click.option("--max-gaussians", type=click.IntRange(100, 10_000_000), help="Cap on gaussians [1000000].")
@click.option("--device", type=click.Choice(DEVICES), help="Where to train [auto: CUDA if available].")
def process(
    photos: tuple[Path, ...],
    output: Path,
    data_dir: Path | None,
    matcher: str,
    mapper: str,
    max_image_size: int,
    first_octave: str,
    no_retry: bool,
    threads: int,
    verbose: bool,
    do_train: bool,
    steps: int | None,
    train_image_size: int | None,
    max_gaussians: int | None,
    device: str | None,
) -> None:
    """Run the whole job: intake -> structure from motion -> preview splat (-> trained splat).

    PHOTOS are photo files, or folders: of a folder, the photos directly inside it are taken (JPEG, PNG
    or HEIC by extension, any case) and its other entries, hidden files and sub-folders are skipped and
    named. 5-100 photos in all. With --train the splat written to OUTPUT is trained on the photos
    (every 8th held out to score it); on a CPU that takes minutes even for a few hundred steps at a
    few hundred pixels.
    """
    options = sfm.SfmOptions(
        matcher=matcher,
        mapper=mapper,
        max_image_size=max_image_size,
        num_threads=threads,
        first_octave=first_octave,
        retry=not no_retry,
        time_budget_s=job_timeout_seconds(),
    )
    training = None
    if do_train:
        try:
            training = TrainOptions.from_env(
                steps=steps,
                max_image_size=train_image_size,
                max_gaussians=max_gaussians,
                device=device,
                threads=threads if threads > 0 else None,
            )
        except (ConfigError, ValueError) as exc:
            raise click.UsageError(str(exc)) from exc
        options = replace(options, scene_image_size=training.max_image_size)  # undistort at that size
    elif any(v is not None for v in (steps, train_image_size, max_gaussians, device)):
        raise click.UsageError("--steps, --train-image-size, --max-gaussians and --device need --train")
    sys.exit(_run_job(list(photos), output, data_dir, options, verbose, training)[0])


def _run_job(
    photos: Sequence[Path],
    output: Path,
    data_dir: Path | None,
    options: sfm.SfmOptions,
    verbose: bool,
    training: TrainOptions | None = None,
) -> tuple[int, JobDir | None]:
    """The job behind ``process`` and ``demo``: returns (exit code, the job if one was stored)."""
    if not verbose:
        pycolmap.logging.minloglevel = 2
    store = DataDir(data_dir) if data_dir else DataDir.from_env()
    uploads = _select(photos)
    bars = ProgressBars()
    t0 = time.monotonic()
    try:
        accepted = intake.ingest(uploads, store, _limits(), progress=bars)
    except intake.IntakeRejected as exc:
        bars.close()
        _report_rejection(exc)
        return EXIT_REJECTED, None
    bars.close()
    click.secho(
        f"✔ {len(accepted.images)} photos accepted ({accepted.bytes_in / MB:.1f} MB), metadata stripped "
        f"→ job {accepted.job.id} [{accepted.seconds:.1f} s]",
        fg="green",
        err=True,
    )
    try:
        result = sfm.reconstruct(accepted.job, options, progress=bars)
    except sfm.SfmError as exc:
        bars.close()
        click.secho(f"✘ {exc}", fg="red", err=True)
        return EXIT_COLMAP_FAILED, accepted.job
    bars.close()
    timings = " · ".join(f"{k} {v:.1f} s" for k, v in result.timings.items() if k != "total")
    if not result.ok:
        click.secho(f"✘ reconstruction rejected: {result.reason}", fg="red", err=True)
        if result.unregistered:
            click.echo(f"  not placed: {', '.join(result.unregistered)}", err=True)
        for attempt in result.attempts:
            click.echo(f"  attempt {attempt['name']}: {attempt['outcome']}", err=True)
        click.echo(f"  job files: {accepted.job.root}", err=True)
        return EXIT_QUALITY_GATE, accepted.job
    click.secho(
        f"✔ structure from motion: {result.registered}/{result.total} photos placed, {result.points} points, "
        f"mean reprojection error {result.mean_reprojection_error:.2f} px ({result.matcher} matching, "
        f"{result.mapper} mapping{_attempt_note(result)})",
        fg="green",
        err=True,
    )
    click.echo(f"  {timings} · total {time.monotonic() - t0:.1f} s", err=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    if training is not None:
        return _train_job(accepted.job, output, training, bars), accepted.job
    shutil.copyfile(accepted.job.preview_splat, output)
    click.secho(
        f"✔ preview splat (untrained: one gaussian per SfM point, {result.points} gaussians) → {output}",
        fg="green",
        err=True,
    )
    click.echo(f"  training-ready scene: {accepted.job.scene}", err=True)
    return EXIT_OK, accepted.job


def _attempt_note(result: SfmResult) -> str:
    """Which rung of the fallback ladder placed the photos, when it was not the first."""
    if len(result.attempts) <= 1:
        return ""
    return f"; attempt {len(result.attempts)} of the fallback ladder: {result.attempt}"


def _train_job(job: JobDir, output: Path, training: TrainOptions, bars: ProgressBars) -> int:
    """Train on the job's scene into ``jobs/{id}/output/`` and copy the trained splat to ``output``."""
    from sharpml.train.scene import SceneError  # torch is imported only when training
    from sharpml.train.trainer import SPLAT_NAME, TrainingError, train

    try:
        result = train(job.scene, job.output, training, preview_splat=job.preview_splat, progress=bars)
    except (SceneError, TrainingError) as exc:
        bars.close()
        click.secho(f"✘ training failed: {exc}", fg="red", err=True)
        return EXIT_TRAINING_FAILED
    bars.close()
    shutil.copyfile(job.output / SPLAT_NAME, output)
    click.secho(
        f"✔ trained splat: {result.gaussians} gaussians, {result.steps} steps at "
        f"{result.width}x{result.height} in {result.seconds:.1f} s on {result.device} → {output}",
        fg="green",
        err=True,
    )
    if result.psnr is not None:
        preview = (
            f" (untrained preview: {result.preview_psnr:.2f} dB)" if result.preview_psnr is not None else ""
        )
        click.echo(
            f"  held-out photos ({result.test_views}): PSNR {result.psnr:.2f} dB{preview}, "
            f"SSIM {result.ssim:.3f}",
            err=True,
        )
    click.echo(f"  PLY and metrics: {job.output}", err=True)
    return 0


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check FILES exactly as an upload is checked, set rules included.

    A folder stands for the photos in it, as in ``process``; files named one by one are all checked.
    """
    uploads = _select(files)
    problems = intake.validate(uploads, _limits())
    if problems:
        _report_rejection(intake.IntakeRejected(problems))
        sys.exit(EXIT_REJECTED)
    total = sum(u.path.stat().st_size for u in uploads)
    click.secho(f"✔ {len(uploads)} photos would be accepted ({total / MB:.1f} MB)", fg="green")


@cli.command()
@click.argument("ply", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
def convert(ply: Path, out: Path) -> None:
    """Convert a 3D Gaussian splatting PLY to the .splat format browsers load."""
    t0 = time.monotonic()
    try:
        n = splat.ply_to_splat(ply, out)
    except splat.SplatFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{n} gaussians → {out} ({n * 32 / MB:.1f} MB) in {time.monotonic() - t0:.2f} s")


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(file: Path, as_json: bool) -> None:
    """Summarise a .splat file and flag what a viewer would choke on."""
    try:
        info = splat.describe(splat.read_splat(file))
    except splat.SplatFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(info))
    else:
        for key, value in info.items():
            click.echo(f"{key:>15}: {value}")
    if info["non_finite"]:
        sys.exit(EXIT_ERROR)


@cli.command("sample-photos")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-n", "--count", type=click.IntRange(2, 200), default=16, show_default=True)
@click.option("--size", default="800x600", show_default=True, help="WIDTHxHEIGHT in pixels.")
@click.option("--formats", default="jpg,heic", show_default=True, help="Comma-separated, cycled.")
@click.option("--seed", type=int, default=7, show_default=True)
def sample_photos(out_dir: Path, count: int, size: str, formats: str, seed: int) -> Path:
    """Render a synthetic scene's photos (OUT_DIR/photos) and their true cameras."""
    from sharpml.synthetic import write_dataset

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{size!r} is not WIDTHxHEIGHT", param_hint="--size") from None
    fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    with tqdm(total=count, desc="rendering photos", file=sys.stderr, disable=None) as bar:
        ds = write_dataset(out_dir, count, width, height, seed=seed, formats=fmts, progress=bar.update)
    click.echo(f"{count} photos → {ds.photos_dir} (ground truth: {ds.ground_truth})", err=True)
    return ds.photos_dir


@cli.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("-n", "--count", type=click.IntRange(5, 100), default=16, show_default=True)
@click.option("--size", default="800x600", show_default=True)
@click.pass_context
def demo(ctx: click.Context, out_dir: Path | None, count: int, size: str) -> None:
    """Render sample photos, run the whole job on them, and score the poses against the truth."""
    from sharpml.evaluation import evaluate_job

    store = DataDir.from_env()
    out_dir = out_dir or store.root / "demo"
    if (out_dir / "photos").exists():
        shutil.rmtree(out_dir / "photos")
    click.secho(
        f"SharpML demo: {count} synthetic phone photos ({size}, JPEG and HEIC with GPS EXIF)", bold=True
    )
    photos = ctx.invoke(sample_photos, out_dir=out_dir, count=count, size=size, formats="jpg,heic", seed=7)
    output = out_dir / "scene.splat"
    code, job = _run_job([photos], output, store.root, sfm.SfmOptions(), verbose=False)
    if code or job is None:
        sys.exit(code)
    accuracy = evaluate_job(job, out_dir / "ground_truth.json")
    click.secho(f"✔ pose accuracy vs ground truth: {accuracy.summary()}", fg="green", err=True)
    click.echo(f"Open {output} in a .splat viewer (e.g. antimatter15/splat).")


def main() -> None:
    cli(prog_name="sharpml")


if __name__ == "__main__":
    main()
