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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                "help_option_names": []})
def train(ctx: typer.Context):
    """Train a matcher (all options of `python -m roma_sfm.train.trainer`; `roma-sfm train --help`).

    Checkpoints every N steps and on Ctrl-C; the same command again resumes exactly.
    """
    from roma_sfm.train.trainer import main as train_main

    raise typer.Exit(train_main(list(ctx.args)) or 0)


if __name__ == "__main__":
    app()
