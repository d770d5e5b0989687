"""Every script's --help (and --helpshort) lists the script's own flags with
their help text and shows its docstring's examples exactly as written; an
unknown flag's error points to --help.

The reference for "the script's own flags" is the script's --helpfull, which
groups every flag by the module that defined it: the script itself, a
`normzoo` or `normzoo_lab` module (normzoo.training.cli,
normzoo_lab.benchmarks.cli) or a shared module beside it
(lab/_grid_flags.py) are the script's; absl's, TensorFlow's and TFDS' are
not. The reference for the docstring is the script's source text.

The scripts run concurrently, each importing TensorFlow (through normzoo)
before parsing flags: --helpshort (absl's alias of --help) and the unknown
flag run on all but the slowest; scripts/finetune.py is train.py's
`normzoo.training.cli` with other defaults, and that every script parses its flags with normzoo/commands/app.py (which words the
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
# The scripts of the repository (the commands' and the lab's), as paths from
# its root: how the README and lab/README.md write them.
SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for directory in ("scripts", "lab")
    for p in (ROOT / directory).glob("*.py")
    if not p.name.startswith("_")
)
# The slowest to start (TensorFlow, TFDS and more before parsing flags).
SLOW = {"scripts/finetune.py", "lab/finetune_experiment.py", "lab/soak.py"}
QUICK = [script for script in SCRIPTS if script not in SLOW]


@pytest.fixture(scope="module")
def outputs():
    """{(script, option): CompletedProcess} of `python <script> <option>`
    run from the repository root, as the README writes the commands."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")

    def run(script, option):
        return subprocess.run(
            [sys.executable, script, option],
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
        module == script
        or module.startswith(("normzoo.", "normzoo_lab."))
        or (ROOT / script).with_name(f"{module}.py").exists()
    )


def test_every_script_is_covered_and_parses_its_flags_with_app_run():
    assert len(SCRIPTS) >= 12 and {"scripts/train.py", "scripts/finetune.py"} <= set(SCRIPTS)
    assert SLOW < set(SCRIPTS)
    for script in SCRIPTS:
        source = (ROOT / script).read_text()
        # normzoo.commands.app.run, directly or through a command's main.
        _, _, main_block = source.partition('\nif __name__ == "__main__":\n')
        runs = re.findall(r"^    (\w+)\.(run|main)\(", main_block, re.MULTILINE)
        assert runs in ([("command_app", "run")], [("train", "main")], [("finetune", "main")]), script
        assert "from normzoo.commands import " in source, script


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
    assert list(listed) == [script], result.stdout
    assert listed[script] == own


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_the_docstring_as_written_with_its_example(outputs, script):
    source = (ROOT / script).read_text()
    docstring = re.match(r'r?"""(.*?)"""', source, re.DOTALL).group(1)
    assert f"python {script}" in docstring  # every script shows how to run it
    assert outputs[script, "--help"].stdout.startswith(docstring)


@pytest.mark.parametrize("script", QUICK)
def test_an_unknown_flag_points_to_help(outputs, script):
    result = outputs[script, "--no_such_flag"]
    assert result.returncode == 2  # a usage error
    assert "Unknown command line flag 'no_such_flag'" in result.stderr
    assert f"Pass --help to see the flags of {script}" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
