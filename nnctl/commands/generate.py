"""The generative commands `sample`, `encode` and `decode`, added to the CLI by `register`.

Each parses its options, calls one function of nnctl.runs.generative and writes the result
with nnctl.report.image_grid (arrays, CSV, a PNG grid); with no --out, CSV goes to stdout.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

import typer

from nnctl.completion import complete_run
from nnctl.console import err_console
from nnctl.errors import NnctlError

RUN_ARG_HELP = "A run directory (its best weights) or a checkpoint (.npz) of a task: vae or autoencoder run."


def _emit(values, out: Optional[Path], lo: float, hi: float, what: str, table=None) -> None:
    """table: a CSV-trained model's TableEncoder, so CSV samples come out in the file's own columns."""
    from nnctl.report.image_grid import write_csv, write_samples
    prefix = "z" if what == "codes" else "x"
    if out is None:
        write_csv(values, sys.stdout, prefix, table)
        return
    write_samples(values, out, lo, hi, prefix, table)
    err_console.print(f"wrote {len(values)} {what} to {out}", markup=False, highlight=False, soft_wrap=True)


def _data_range(lm) -> tuple[float, float]:
    """The [lo, hi] the training data spanned (the scaling's [0, 1]), for image grids."""
    if lm.standardizer is None:
        return 0.0, 1.0
    lo = float(lm.standardizer.mean.reshape(-1)[0])
    return lo, lo + float(lm.standardizer.scale.reshape(-1)[0])


def latent_map(runs: list[Path], out: Path, dpi: int) -> str:
    """`nnctl plot RUN --latent`: every row of the run's data encoded and drawn; returns the line to print."""
    from nnctl.data import Split
    from nnctl.runs.sources import run_split
    from nnctl.report.latent_plot import plot_latent
    from nnctl.report.plots import require_matplotlib
    from nnctl.runs.generative import autoencoder_of, encode
    from nnctl.runs.model import default_batch_size, load_model
    if len(runs) != 1:
        raise NnctlError(f"plot --latent: draws one run, got {len(runs)}")
    require_matplotlib()
    lm = load_model(runs[0])
    autoencoder_of(lm, "plot --latent")
    # the train split always exists (test_split may be 0); its x and y hold every row of the data file
    data = run_split(lm, "train")
    split = Split(data.split.x, data.split.y, None, data.split.divisor)
    codes = encode(lm, split.features(), default_batch_size(lm))
    names = lm.meta.get("config", {}).get("name") or runs[0].name
    axes = plot_latent(codes, split.y, data.classes, out, f"{names}: {len(codes):,} codes", dpi)
    label = f"'{lm.target_name}'" if lm.target_name else "label"   # an .npz's y has no name
    colour = "" if split.y is None else f"; coloured by {label}" + (
        f" ({len(data.classes)} classes)" if data.classes else "")
    return f"wrote {out} ({len(codes):,} rows; axes {axes}{colour})"


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    @app.command("sample")
    def sample_command(
        target: Path = typer.Argument(..., help=RUN_ARG_HELP, autocompletion=complete_run),
        n: int = typer.Option(64, "-n", min=1, max=1_000_000, help="How many samples to draw."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of the prior's draws: same seed, same samples."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="samples.png (an image grid), .npy or .csv; default: CSV on stdout."),
    ) -> None:
        """Draw samples from a VAE's prior and decode them, in the data's units."""
        from nnctl.report.image_grid import check_out
        from nnctl.runs.generative import sample
        from nnctl.runs.model import default_batch_size, load_model
        try:
            check_out(out, n)
            lm = load_model(target)
            values = sample(lm, n, seed, default_batch_size(lm))
            _emit(values, out, *_data_range(lm), "samples", lm.preprocessor.table)
        except NnctlError as err:
            fail(err)

    @app.command("encode")
    def encode_command(
        target: Path = typer.Argument(..., help=RUN_ARG_HELP, autocompletion=complete_run),
        data: str = typer.Argument(..., help="Rows to encode: a .csv, .npy or .npz file, a built-in dataset, "
                                             "or images (a file or a folder)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="latent.npy or .csv; default: CSV on stdout."),
    ) -> None:
        """Encode rows to their latent codes (a VAE's posterior means)."""
        from nnctl.runs.generative import autoencoder_of, encode, rows_to_encode
        from nnctl.runs.model import default_batch_size, load_model
        try:
            if out is not None and out.suffix.lower() not in (".npy", ".csv"):
                raise NnctlError(f"--out: codes are written as .npy or .csv, got {out.name!r}")
            lm = load_model(target)
            autoencoder_of(lm, "encode")
            _emit(encode(lm, rows_to_encode(lm, data), default_batch_size(lm)), out, 0.0, 1.0, "codes")
        except NnctlError as err:
            fail(err)

    @app.command("decode")
    def decode_command(
        target: Path = typer.Argument(..., help=RUN_ARG_HELP, autocompletion=complete_run),
        codes: Path = typer.Argument(..., help="Latent codes (N, latent) as .npy, e.g. from nnctl encode --out."),
        out: Optional[Path] = typer.Option(None, "--out", "-o",
                                           help="x.png (an image grid), .npy or .csv; default: CSV on stdout."),
    ) -> None:
        """Decode latent codes to samples in the data's units."""
        from nnctl.report.image_grid import check_out
        from nnctl.runs.generative import decode, read_codes
        from nnctl.runs.model import default_batch_size, load_model
        try:
            check_out(out)
            lm = load_model(target)
            values = decode(lm, read_codes(codes), default_batch_size(lm))
            _emit(values, out, *_data_range(lm), "samples", lm.preprocessor.table)
        except NnctlError as err:
            fail(err)
