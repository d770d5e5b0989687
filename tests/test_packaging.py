"""What `pip install normzoo` gives: the wheel built from this checkout holds
the library, its commands and the shipped checkpoints, and not the lab; and
installed into a fresh virtual environment, its commands run from another
directory (--help, a short training run, a fine-tune from a shipped
checkpoint by name).

The references are independent of the code under test: the files of the
repository (every module under normzoo/, every file checkpoints/manifest.json
lists, with its sha256), setup.cfg's console scripts, and what the commands
write.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = ("normzoo-train", "normzoo-finetune")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the checkout (so that building leaves nothing
    in it), built as pip builds one for `pip install .`."""
    source = tmp_path_factory.mktemp("source") / "normzoo"
    shutil.copytree(
        ROOT, source, symlinks=True,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "runs", "site"),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("normzoo-*.whl")
    return path


def _names(wheel):
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _read(wheel, suffix):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(suffix)]
        return archive.read(name)


def test_the_wheel_holds_every_module_of_the_library_and_nothing_of_the_lab(wheel):
    names = _names(wheel)
    modules = {name for name in names if name.endswith(".py")}
    library = {path.relative_to(ROOT).as_posix() for path in (ROOT / "normzoo").rglob("*.py")}
    assert modules == library
    assert not [name for name in names if name.split("/")[0] in ("lab", "tests", "scripts", "docs", "normzoo_lab")]
    lab = ("benchmark", "experiment", "gpu_check", "path_lengths", "signal_propagation", "batch_dependence")
    assert not [name for name in names if any(word in name for word in lab)]


def test_the_wheel_ships_the_checkpoints_of_the_manifest_unchanged(wheel):
    manifest = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())
    assert json.loads(_read(wheel, "normzoo/_shipped/manifest.json")) == manifest
    shipped = {name for name in _names(wheel) if name.startswith("normzoo/_shipped/")}
    assert shipped == {"normzoo/_shipped/manifest.json", *(f"normzoo/_shipped/{e['file']}" for e in manifest)}
    for entry in manifest:
        assert hashlib.sha256(_read(wheel, f"/{entry['file']}")).hexdigest() == entry["sha256"]


def test_the_wheel_declares_the_console_scripts_and_no_backend_in_its_core(wheel):
    entry_points = _read(wheel, "entry_points.txt").decode()
    for command in COMMANDS:
        assert f"{command} = normzoo.commands." in entry_points
    requirements = [
        line.split(":", 1)[1].strip()
        for line in _read(wheel, "METADATA").decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    core = [r for r in requirements if "extra ==" not in r]
    assert any(r.startswith("keras") for r in core)
    for backend in ("tensorflow", "jax", "torch"):
        assert not [r for r in core if r.startswith(backend)], core
        assert [r for r in requirements if f'extra == "{backend}"' in r], f"no extra {backend}"


def _run(command, cwd, env, returncode=0):
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == returncode, f"{command}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    return completed


def test_an_installed_wheel_runs_its_commands_from_another_directory(wheel, tmp_path):
    # The fresh environment sees this one's packages (TensorFlow, Keras:
    # nothing is downloaded) and gets normzoo from the wheel only.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        check=True, capture_output=True, text=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)

    where = _run([str(python), "-c", "import normzoo; print(normzoo.__file__)"], work, env).stdout
    assert pathlib.Path(where.strip()).is_relative_to(venv), where
    listed = _run([str(python), "-m", "normzoo"], work, env).stdout
    for command in COMMANDS:
        assert command in listed
        assert shutil.which(command, path=env["PATH"]).startswith(str(bin_dir))
        # absl ends --help with exit status 1.
        assert "--model_dir" in _run([command, "--help"], work, env, returncode=1).stdout

    _run(["normzoo-train", "--epochs=1", "--steps_per_epoch=2", "--model_dir=train"], work, env)
    metrics = json.loads((work / "train" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and (work / "train" / "model.weights.h5").exists()

    _run(
        ["normzoo-finetune", "--init_checkpoint=resnet20_batch_digits", "--epochs=1", "--steps_per_epoch=2",
         "--model_dir=finetune"],
        work, env,
    )
    report = json.loads((work / "finetune" / "restore_report.json").read_text())
    assert report["init_checkpoint"] == "resnet20_batch_digits"
    source = pathlib.Path(report["report"]["source"])
    assert source.name == "resnet20_batch_digits.weights.h5" and source.is_relative_to(venv)
    assert report["report"]["verified"] and "manifest.json records" in report["report"]["verification"]
    assert report["report"]["missing"] == report["report"]["skipped"] == []
    assert report["report"]["unrestored_statistics"] == []
