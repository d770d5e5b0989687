"""Every script's --help (and --helpshort) lists the script's own flags with
their help text and shows its docstring's examples exactly as written; an
unknown flag's error points to --help.

The reference for "the script's own flags" is the script's --helpfull, which
groups every flag by the module that defined it: the script itself, a
`normzoo` module (normzoo.training.cli) or a shared module of scripts/
(_grid_flags) are the script's; absl's, TensorFlow's and TFDS' are not. The
reference for the docstring is the script's source text.

The scripts run concurrently. Four of them import TensorFlow before parsing
flags (about 7 CPU seconds each), the others only absl: --helpshort (absl's
alias of --help) and the unknown flag run on the quick ones and on train.py;
finetune.py is train.py's `normzoo.training.cli` with other defaults, and
that every script parses its flags with scripts/_app.py (which words the
unknown-flag error) is checked on its source.
"""

import concurrent.futures
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "scripts").glob("*.py") if not p.name.startswith("_"))
# Scripts that import TensorFlow before parsing flags, less train.py.
SLOW = {"finetune.py", "finetune_experiment.py", "soak.py"}
QUICK = [script for script in SCRIPTS if script not in SLOW]


@pytest.fixture(scope="module")
def outputs():
    """{(script, option): CompletedProcess} of `python scripts/<script> <option>`
    run from the repository root, as the README writes the commands."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

    def run(script, option):
        return subprocess.run(
            [sys.executable, f"scripts/{script}", option],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
        )

    cases = [(script, option) for script in SCRIPTS for option in ("--help", "--helpfull")]
    cases += [(script, option) for script in QUICK for option in ("--helpshort", "--no_such_flag")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(cases, pool.map(lambda case: run(*case), cases)))


def _flags_by_module(help_text):
    """{module: {flag name: its lines of help}} from absl's help output."""
    _, _, listing = help_text.partition("\nflags:\n")
    modules = {}
    for line in listing.splitlines():
        if re.fullmatch(r"\S.*:", line):
            module = modules.setdefault(line[:-1], {})
        elif match := re.match(r"  (?:-\S,)?--(?:\[no\])?(\w+):", line):  # -?,--[no]help: ...
            flag_lines = module.setdefault(match.group(1), [])
            flag_lines.append(line)
        elif line.startswith("    "):
            flag_lines.append(line)
    return modules


def _is_the_scripts_own(module, script):
    return (
        module == f"scripts/{script}"
        or module.startswith("normzoo.")
        or (ROOT / "scripts" / f"{module}.py").exists()
    )


def test_every_script_is_covered_and_parses_its_flags_with_app_run():
    assert len(SCRIPTS) >= 11 and {"train.py", "finetune.py"} <= set(SCRIPTS) and SLOW < set(SCRIPTS)
    for script in SCRIPTS:
        source = (ROOT / "scripts" / script).read_text()
        assert "\n    _app.run(" in source and "app.run(" not in source.replace("_app.run(", ""), script


@pytest.mark.parametrize(
    "script, option", [(s, "--help") for s in SCRIPTS] + [(s, "--helpshort") for s in QUICK]
)
def test_help_lists_exactly_the_scripts_own_flags_with_their_help(outputs, script, option):
    full = _flags_by_module(outputs[script, "--helpfull"].stdout)
    own = {
        name: lines
        for module, module_flags in full.items()
        if _is_the_scripts_own(module, script)
        for name, lines in module_flags.items()
    }
    assert own, f"{script} defines no flags of its own? --helpfull:\n{outputs[script, '--helpfull'].stdout}"
    assert any(module.startswith("absl.") for module in full)  # the reference saw absl's flags too

    result = outputs[script, option]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    listed = _flags_by_module(result.stdout)
    assert list(listed) == [f"scripts/{script}"], result.stdout
    assert listed[f"scripts/{script}"] == own


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_docstring_as_written_with_its_example(outputs, script):
    source = (ROOT / "scripts" / script).read_text()
    docstring = re.match(r'r?"""(.*?)"""', source, re.DOTALL).group(1)
    assert f"python scripts/{script}" in docstring  # every script shows how to run it
    assert outputs[script, "--help"].stdout.startswith(docstring)


@pytest.mark.parametrize("script", QUICK)
def test_an_unknown_flag_points_to_help(outputs, script):
    result = outputs[script, "--no_such_flag"]
    assert result.returncode == 2  # a usage error
    assert "Unknown command line flag 'no_such_flag'" in result.stderr
    assert f"Pass --help to see the flags of scripts/{script}" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
