"""`nnctl export`: a trained model to an ONNX file that needs no nnctl, proven against nnctl on real rows.

`register(app, fail)` adds the command (cli.py calls it, as for the other command modules);
`nnctl.export.api.export_model` does the work; this module renders its result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import typer

from nnctl.console import console
from nnctl.errors import NnctlError


def register(app: typer.Typer, fail: Callable[[BaseException], None]) -> None:
    @app.command("export")
    def export_command(
        target: Path = typer.Argument(..., help="A checkpoint (.npz) or a run directory (its best weights)."),
        fmt: str = typer.Option("onnx", "--format", help="onnx, or npz-weights (named arrays + architecture JSON)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write (default: <run>/model.onnx, "
                                           "or <checkpoint>.onnx; .weights.npz for npz-weights)."),
        opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset version (default 17)."),
        check_data: Optional[str] = typer.Option(None, "--check-data",
                                                 help="Rows for the parity check: a .csv/.npy/.npz file or a "
                                                      "built-in dataset (default: the run's test split)."),
        tolerance: float = typer.Option(1e-4, "--tolerance",
                                        help="Largest |onnxruntime - nnctl| difference the check accepts."),
        dtype: Optional[str] = typer.Option(None, "--dtype", help="ONNX graph type: float32 (default) or float64."),
    ) -> None:
        """Export a trained model to ONNX, preprocessing included, and check it in onnxruntime."""
        from nnctl.export.api import export_model
        from nnctl.export.graph import ExportError
        try:
            result = export_model(target, fmt, out, opset, check_data, tolerance, dtype)
        except NnctlError as err:
            fail(err)
            return
        p = result.parity
        what = f"opset {result.opset}, " if result.opset is not None else ""
        console.print(f"wrote {result.path} ({result.format}, {what}{result.dtype}, {result.size_bytes:,} bytes) "
                      f"from {result.checkpoint}", markup=False, soft_wrap=True)
        line = f"parity on {p.rows:,} rows of {result.check_data}: max abs diff {p.max_abs_diff:.3g}"
        if p.label_agreement is not None:
            line += f", labels agree {p.label_agreement:.2%} ({p.label_mismatches} differ)"
        console.print(line + f" (tolerance {p.tolerance:g})", markup=False, soft_wrap=True)
        if not p.ok:
            fail(ExportError(f"{result.path}: onnxruntime differs from nnctl by {p.max_abs_diff:.3g} "
                             f"> tolerance {p.tolerance:g}; the file is kept but is NOT trustworthy"))
