"""The CLI is installed as `roma-sfm` and its commands answer."""
import subprocess
import sys

from typer.testing import CliRunner

from roma_sfm.cli.main import app


def test_help_lists_commands():
    out = CliRunner().invoke(app, ["--help"])
    assert out.exit_code == 0 and "models" in out.output


def test_models_lists_every_preset():
    out = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for name in ("roma-outdoor", "roma-indoor", "roma-tiny"):
        assert name in out.output


def test_console_script_runs():
    # the entry point module, as the installed script calls it
    r = subprocess.run([sys.executable, "-c", "from roma_sfm.cli.main import app; app()", "--version"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "roma-sfm" in r.stdout


def test_cli_and_pipelines_are_not_top_level():
    import importlib.util

    import roma_sfm.cli
    import roma_sfm.pipelines

    assert roma_sfm.cli.__name__ == "roma_sfm.cli"
    # `cli` / `pipelines` importable only from a source checkout's cwd, never from site-packages
    for name in ("cli", "pipelines"):
        spec = importlib.util.find_spec(name)
        assert spec is None or "site-packages" not in str(spec.origin)
