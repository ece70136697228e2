"""`nnctl augment-preview`: draw a few training samples before and after the spec's augmentation."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import typer

from nnctl.console import console
from nnctl.errors import NnctlError


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    """Add augment-preview to `app`; `fail(err)` prints an error and exits 1."""

    @app.command("augment-preview")
    def augment_preview(
        config: Path = typer.Argument(..., help="The experiment spec (YAML)."),
        set_: List[str] = typer.Option([], "--set", help="Override a key: --set data.augment[0].shift.max=3."),
        out: Path = typer.Option(Path("augment.png"), "--out", "-o", help="The PNG to write."),
        samples: int = typer.Option(8, "--samples", "-n", min=1, max=64, help="Training rows to draw."),
        dpi: int = typer.Option(100, "--dpi", min=20, max=600, help="Pixels per inch."),
    ) -> None:
        """Draw the first training rows before and after data.augment (images as a grid, signals as lines)."""
        from nnctl.config.spec import load_spec
        from nnctl.data.augment import describe, preview
        from nnctl.report.augment_plot import draw_preview
        from nnctl.report.plots import require_matplotlib
        from nnctl.training.experiment import prepare
        try:
            require_matplotlib()
            exp = prepare(load_spec(config, set_))
            if not exp.augmenter:
                raise NnctlError(f"{config}: data.augment is empty; nothing to preview")
            before, after, y0, y1 = preview(exp.augmenter, exp.dataset.train, exp.standardizer, exp.dtype,
                                            samples, exp.spec.seed)
            draw_preview(before, after, y0, y1, exp.augmenter.layout.name, out, exp.dataset.classes, dpi)
        except NnctlError as err:
            fail(err)
            return
        console.print(describe(exp.augmenter), markup=False, highlight=False, soft_wrap=True)
        console.print(f"wrote {out} ({len(before)} samples before and after)", markup=False, soft_wrap=True)
