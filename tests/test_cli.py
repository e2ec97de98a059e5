import subprocess
import sys

import pytest

from coinfer.sdk._version import __version__
from coinfer.sdk.cli.main import main
from coinfer.sdk.cli.registry import COMMANDS, EXIT_NOT_IMPLEMENTED

EXPECTED = ["gate", "infi", "stip", "mlink", "split", "evolve", "data", "export", "edge", "cloud", "demo"]


def test_help_lists_every_subcommand_without_heavy_imports():
    script = (
        "import sys\n"
        "from coinfer.sdk.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'transformers', 'onnxruntime') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    for name in EXPECTED:
        assert f"    {name} " in out
    assert "HEAVY []" in out


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "coinfer.sdk.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"coinfer {__version__}"


def test_registry_matches_the_design():
    assert [spec.name for spec in COMMANDS] == EXPECTED


@pytest.mark.parametrize("name", [s.name for s in COMMANDS if not s.implemented])
def test_unimplemented_commands_say_so(name, capsys):
    assert main([name, "anything", "--flag"]) == EXIT_NOT_IMPLEMENTED
    assert "not implemented yet" in capsys.readouterr().err


def test_demo_rejects_unknown_stage(capsys):
    assert main(["demo", "--stages", "minilm,warp-drive"]) == 1
    assert "unknown stage(s) ['warp-drive']" in capsys.readouterr().err


def test_bare_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: coinfer" in capsys.readouterr().out
