"""`python -m normzoo`: it lists the console scripts setup.cfg declares, and
runs each as its script does (the same flags, the same usage errors)."""

import configparser
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _declared_console_scripts():
    """{command: "module:function"} from setup.cfg's [options.entry_points]."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def _run(*args):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def test_python_m_normzoo_lists_every_declared_command():
    declared = _declared_console_scripts()
    assert set(declared) == {"normzoo-train", "normzoo-finetune"}
    result = _run("-m", "normzoo")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(declared)
    for command, target in declared.items():
        module, function = target.split(":")
        assert function == "main" and (ROOT / (module.replace(".", "/") + ".py")).exists(), target


def test_python_m_normzoo_runs_the_main_setup_cfg_declares_for_each_command():
    import importlib

    from normzoo import __main__ as entry
    from normzoo.commands import COMMANDS

    declared = _declared_console_scripts()
    for script, (_, module, _) in COMMANDS.items():
        assert declared[script] == f"{module}:main"
        assert entry._MAINS[module] is importlib.import_module(module).main
    assert set(entry._MAINS) == {module for _, module, _ in COMMANDS.values()}


def test_an_unknown_command_is_a_usage_error():
    result = _run("-m", "normzoo", "evaluate")
    assert result.returncode == 2
    assert "python -m normzoo: error: unknown command 'evaluate'; the commands are train, finetune." in result.stderr


@pytest.mark.parametrize(
    "command, script, flags",
    [
        ("train", "scripts/train.py", []),
        ("finetune", "scripts/finetune.py", ["--init_checkpoint=resnet20_batch_digits"]),
    ],
)
def test_a_command_and_its_script_give_the_same_usage_error(command, script, flags):
    flags = ["--batch_size=0", *flags]
    by_module = _run("-m", "normzoo", command, *flags)
    by_script = _run(script, *flags)
    assert by_module.returncode == by_script.returncode == 2
    reason = "batch_size=0 (--batch_size) must be positive and finite; pass e.g. --batch_size=64 (the default)."
    assert f"normzoo-{command}: error: {reason}" in by_module.stderr
    assert f"{pathlib.Path(script).name}: error: {reason}" in by_script.stderr
