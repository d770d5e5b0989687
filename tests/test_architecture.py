"""normzoo's imports run one way: down the levels of `LEVELS`; the lab
(lab/) imports the library, never the reverse; and only the wrapper
modules (`WRAPPERS`) import TensorFlow's or Keras' private modules.

The package's source is parsed with `ast` (nothing is imported), and every
import counts: at module level, inside functions and under `if`/`try`. A
module may import modules of its own package (`normzoo.checkpoints.*`
among themselves) and packages of lower levels; never one of its own level
or above, so that no package depends on what is built on it and no two
packages import each other. `normzoo/__init__.py` ("How the code is
organized") states the same levels for contributors.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "normzoo"

# The levels, bottom first; each entry is a package or module of normzoo.
LEVELS = (
    # The private TensorFlow and Keras APIs normzoo uses, each wrapped once.
    ("normzoo._tf_internals", "normzoo._keras_internals"),
    # Rules and helpers.
    ("normzoo.naming", "normzoo.runtime", "normzoo._keras_graph", "normzoo.backends"),
    ("normzoo.layers", "normzoo.data"),
    ("normzoo.models",),
    ("normzoo.checkpoints", "normzoo.bn"),
    ("normzoo.training",),
    # The console scripts' entry points.
    ("normzoo.commands",),
    # The package's face, normzoo/__init__.py: what `import normzoo` gives.
    ("normzoo",),
    # `python -m normzoo`.
    ("normzoo.__main__",),
)


LAB = PACKAGE.parent / "lab"


def _module_name(path, root):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _entry(module):
    """The entry of the levels that `module` belongs to: the package itself
    for its `__init__.py`, else its top-level package or module."""
    return ".".join(module.split(".")[:2])


def imports(root):
    """[(importing module, imported module, path, line)] for every import of
    a module of the package at `root` by one of its modules. `from a import
    b` imports `a.b` when that is a module of the package, else `a`."""
    package = root.name
    modules = {_module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative to the importing module's package
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + is_package]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target == package or target.startswith(f"{package}."):
                    found.append((module, target, path.relative_to(root.parent), node.lineno))
    return found


def violations(root, levels):
    """The imports of the package at `root` that break `levels`, as messages."""
    level = {entry: index for index, entries in enumerate(levels) for entry in entries}
    problems = []
    for module, target, path, line in imports(root):
        source, imported = _entry(module), _entry(target)
        unplaced = [entry for entry in (source, imported) if entry not in level]
        for entry in unplaced:
            problems.append(
                f"{path}:{line}: {entry} is on no level; add it to LEVELS in "
                f"tests/test_architecture.py and to the map in normzoo/__init__.py."
            )
        if unplaced or source == imported or level[imported] < level[source]:
            continue
        where = "its own level" if level[imported] == level[source] else "a higher level"
        problems.append(
            f"{path}:{line}: {module} (level {level[source]}) imports {target} (level "
            f"{level[imported]}, {where}); imports run down the levels only."
        )
    return sorted(set(problems))


def test_every_import_of_the_package_runs_down_the_levels():
    problems = violations(PACKAGE, LEVELS)
    assert not problems, "\n".join(problems)


def test_every_module_of_the_package_is_on_a_level():
    placed = {entry for entries in LEVELS for entry in entries}
    entries = {_entry(_module_name(path, PACKAGE)) for path in PACKAGE.rglob("*.py")}
    assert entries - placed == set(), "add these to LEVELS and to the map in normzoo/__init__.py"
    assert placed - entries == set(), "LEVELS names what does not exist"


def _write(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "from pkg import high\n",
        "import pkg.high.deep\n",
        "from pkg.high import deep as alias\n",
        "def f():\n    from pkg.high import deep\n",
        "try:\n    import pkg.high\nexcept ImportError:\n    pass\n",
        "from .. import high\n",
        "from ..high.deep import name\n",
    ],
)
def test_an_import_up_the_levels_is_found_in_any_form(tmp_path, text):
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "",
            "high/__init__.py": "",
            "high/deep.py": "from pkg.low import helper\nfrom . import sibling\n",
            "high/sibling.py": "",
            "low/__init__.py": "",
            "low/helper.py": text,
        },
    )
    (problem,) = violations(root, (("pkg.low",), ("pkg.high",), ("pkg",)))
    assert problem.startswith(f"{pathlib.Path('pkg', 'low', 'helper.py')}:")
    assert "pkg.low.helper (level 0) imports pkg.high" in problem


def test_an_import_across_one_level_is_found(tmp_path):
    _write(tmp_path / "pkg", {"__init__.py": "", "left.py": "import pkg.right\n", "right.py": ""})
    (problem,) = violations(tmp_path / "pkg", (("pkg.left", "pkg.right"), ("pkg",)))
    assert "pkg.left (level 0) imports pkg.right (level 0, its own level)" in problem


def test_imports_within_a_package_and_down_the_levels_pass(tmp_path):
    root = tmp_path / "pkg"
    _write(
        root,
        {
            "__init__.py": "from pkg import high, low\n",
            "high/__init__.py": "from pkg.high.deep import name\n",
            "high/deep.py": "from pkg.low import helper\nfrom . import sibling\nimport os\n",
            "high/sibling.py": "",
            "low/__init__.py": "",
            "low/helper.py": "",
        },
    )
    assert violations(root, (("pkg.low",), ("pkg.high",), ("pkg",))) == []


def imports_of(root, names):
    """["path:line: module"] for every import, anywhere in the .py files
    under `root` (in functions and under `if`/`try` too), of a module whose
    top-level name is in `names`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module]
            else:
                continue
            found += [
                f"{path.relative_to(root.parent)}:{node.lineno}: {target}"
                for target in targets
                if target.split(".")[0] in names
            ]
    return found


def _lab_modules():
    """The lab's top-level modules: its package and its scripts' modules."""
    return {"normzoo_lab", *(path.stem for path in LAB.glob("*.py"))}


def test_the_library_never_imports_the_lab():
    found = imports_of(PACKAGE, _lab_modules())
    assert not found, "the lab imports the library, never the reverse:\n" + "\n".join(found)


def test_the_lab_is_beside_the_package_and_imports_it():
    assert (LAB / "normzoo_lab" / "__init__.py").exists() and "_grid_flags" in _lab_modules()
    assert imports_of(LAB, {"normzoo"}), "the lab stands on the library"


def test_an_import_of_the_lab_is_found_in_any_form(tmp_path):
    _write(
        tmp_path / "pkg",
        {
            "__init__.py": "import os\n",
            "a.py": "def f():\n    from normzoo_lab import experiments\n",
            "b.py": "try:\n    import _grid_flags\nexcept ImportError:\n    pass\n",
        },
    )
    found = imports_of(tmp_path / "pkg", _lab_modules())
    assert found == [
        f"{pathlib.Path('pkg', 'a.py')}:2: normzoo_lab",
        f"{pathlib.Path('pkg', 'b.py')}:2: _grid_flags",
    ]


# The modules that wrap the private TensorFlow and Keras APIs normzoo uses.
WRAPPERS = ("normzoo._tf_internals", "normzoo._keras_internals")
# Packages of other projects that are private as a whole (a private module
# elsewhere has a name part that starts with "_": `jax._src`).
PRIVATE_PACKAGES = ("tensorflow.python", "keras.src", "tf_keras.src")


def _is_private(name):
    parts = name.split(".")
    return any(name == p or name.startswith(f"{p}.") for p in PRIVATE_PACKAGES) or any(
        part.startswith("_") and not part.startswith("__") for part in parts
    )


def private_imports(root, allowed=()):
    """["path:line: name"] for every import of another project's private
    module or name by a module of the package at `root` outside `allowed`
    (module names): `import`, `from ... import` (a private module, or a
    private name of a public one) and `importlib.import_module("...")`,
    anywhere in the module."""
    package = root.name
    found = []
    for path in sorted(root.rglob("*.py")):
        if _module_name(path, root) in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Attribute, ast.Name))
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names = [node.args[0].value]
            else:
                continue
            found += [
                f"{path.relative_to(root.parent)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] != package and _is_private(name)
            ]
    return found


def test_only_the_wrapper_modules_import_private_tensorflow_or_keras_modules():
    found = private_imports(PACKAGE, WRAPPERS)
    assert not found, (
        "wrap each private API once, in normzoo/_tf_internals.py or normzoo/_keras_internals.py, "
        "in a function whose docstring names the version checked:\n" + "\n".join(found)
    )


def test_the_wrapper_modules_are_where_the_private_imports_are():
    wrapped = private_imports(PACKAGE)
    assert {line.split(":")[0] for line in wrapped} == {
        str(pathlib.Path("normzoo", f"{module.split('.')[1]}.py")) for module in WRAPPERS
    }


@pytest.mark.parametrize(
    "text, name",
    [
        ("import tensorflow.python.ops\n", "tensorflow.python.ops"),
        ("from tensorflow.python.eager import context\n", "tensorflow.python.eager"),
        ("def f():\n    from keras.src.models import Functional\n", "keras.src.models"),
        ("try:\n    import jax._src.core\nexcept ImportError:\n    pass\n", "jax._src.core"),
        ("from tensorflow.python import pywrap_tfe\n", "tensorflow.python"),
        ("from keras import _private_name\n", "keras._private_name"),
        ("import importlib\nimportlib.import_module('keras.src.ops')\n", "keras.src.ops"),
    ],
)
def test_a_private_import_is_found_in_any_form(tmp_path, text, name):
    _write(tmp_path / "pkg", {"__init__.py": "from pkg import _own\n", "_own.py": "", "user.py": text})
    found = private_imports(tmp_path / "pkg")
    assert found and all(line.startswith(f"{pathlib.Path('pkg', 'user.py')}:") for line in found)
    assert any(line.endswith(f": {name}") for line in found), found
    assert private_imports(tmp_path / "pkg", allowed=("pkg.user",)) == []
