"""The roma-sfm command line: a thin Typer app over roma_sfm and roma_sfm.pipelines."""
from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Dense RoMa matching and structure-from-motion with pycolmap.", no_args_is_help=True,
                  add_completion=False)
console = Console()


def _version(value: bool):
    if value:
        from roma_sfm import __version__

        console.print(f"roma-sfm {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """Dense RoMa matching and structure-from-motion with pycolmap."""


@app.command()
def models():
    """List the model presets and whether their weights are available here."""
    from roma_sfm.presets import DEFAULT_PRESET, PRESETS
    from roma_sfm.weights import weights_status

    table = Table(title="roma-sfm models")
    for col in ("preset", "default", "coarse encoder", "resolution", "weights available", "where"):
        table.add_column(col)
    for row in weights_status():
        cfg = PRESETS[row["preset"]]
        res = f"{cfg.coarse_res[0]}x{cfg.coarse_res[1]}" + (f" + {cfg.upsample_res[0]}" if cfg.upsample_res else "")
        table.add_row(row["preset"], "yes" if row["preset"] == DEFAULT_PRESET else "", cfg.coarse_encoder, res,
                      "[green]yes[/]" if row["available"] else "[red]no[/]", row["weights"])
    console.print(table)


if __name__ == "__main__":
    app()
