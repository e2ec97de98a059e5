"""The ``coinfer`` command line: the catalogue, entry points, renamed commands and flags."""

import subprocess
import sys
from importlib import metadata

import pytest

from coinfer.sdk._version import __version__
from coinfer.sdk.cli.main import EXIT_UNAVAILABLE, main
from coinfer.sdk.cli.registry import ENTRY_POINT_GROUP, GROUPS

EXPECTED = ["gate", "infi", "stip", "mlink", "split", "evolve", "data", "export", "edge", "cloud", "demo"]


def test_help_lists_every_command_without_importing_a_tier():
    script = (
        "import sys\n"
        "from coinfer.sdk.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = sorted({m.split('.')[1] for m in sys.modules if m.startswith('coinfer.')} - {'sdk'})\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'transformers', 'onnxruntime') if m in sys.modules]\n"
        "print('LOADED', loaded, 'HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    for name in EXPECTED:
        assert f"    {name} " in out
    assert "LOADED [] HEAVY []" in out


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "coinfer.sdk.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"coinfer {__version__}"


def test_catalogue_matches_the_design():
    assert [group.name for group in GROUPS] == EXPECTED
    services = {g.name for g in GROUPS if any(a.name == "serve" for a in g.actions)}
    assert services == {"gate", "infi", "stip", "mlink", "split", "evolve", "cloud"}


def test_every_catalogued_command_has_an_installed_entry_point_and_no_other():
    registered = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    expected = set()
    for group in GROUPS:
        if group.distribution is not None:
            expected.add(group.name)
        expected |= {group.entry_point(action.name) for action in group.actions}
    assert set(registered) == expected
    for group in GROUPS:
        for action in group.actions:
            entry = registered[group.entry_point(action.name)]
            assert entry.dist.name == action.distribution, entry
            module = entry.load()
            assert callable(module.add_arguments) and callable(module.run), entry


@pytest.mark.parametrize("name", [g.name for g in GROUPS if not g.implemented])
def test_unimplemented_commands_say_so(name, capsys):
    assert main([name, "anything", "--flag"]) == EXIT_UNAVAILABLE
    assert "not implemented yet" in capsys.readouterr().err


def test_a_missing_distribution_names_what_to_install(monkeypatch, capsys):
    real = metadata.entry_points

    def without_bench(**kwargs):
        return [ep for ep in real(**kwargs) if ep.dist.name != "coinfer-bench"]

    monkeypatch.setattr(metadata, "entry_points", without_bench)
    assert main(["gate", "bench", "--quick"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip()
    assert err == ("coinfer: `coinfer gate bench` is provided by coinfer-bench, which is not installed: "
                   "pip install coinfer-bench (or 'coinfer[bench]')")
    assert main(["data", "scenes", "--out", "x"]) == EXIT_UNAVAILABLE
    assert "pip install coinfer-bench" in capsys.readouterr().err


def test_usage_errors_are_one_line_with_a_pointer_to_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["mlink", "plan", "--budget", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("coinfer mlink plan: error: argument --budget: invalid")
    assert err[0].endswith("(see coinfer mlink plan --help)")


def test_renamed_flags_are_hidden_from_help_and_still_accepted(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "keras", "--help"])
    assert "--quantize" not in capsys.readouterr().out
    model = tmp_path / "missing.keras"
    status = main(["export", "keras", str(model), "--quantize", "int8", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "--quantize is deprecated" in err and "use --quantization" in err
    assert status == 1 and "missing.keras: no such Keras model file" in err


def test_demo_rejects_unknown_stage(capsys):
    assert main(["demo", "--stages", "minilm,warp-drive"]) == 1
    assert "unknown stage(s) ['warp-drive']" in capsys.readouterr().err


def test_bare_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: coinfer" in capsys.readouterr().out
