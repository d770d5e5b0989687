"""`python -m normzoo` lists normzoo's commands; `python -m normzoo <command>
[flags]` runs one (e.g. `python -m normzoo train --epochs=1`), as its
console script does."""

import sys

import normzoo
from normzoo.commands import COMMANDS, finetune, train

# The `main` of each command's module (COMMANDS names the modules); both
# modules are light to import: TensorFlow comes with a command's run.
_MAINS = {"normzoo.commands.train": train.main, "normzoo.commands.finetune": finetune.main}


def _usage():
    width = max(map(len, COMMANDS))
    lines = [f"normzoo {normzoo.__version__}: the commands of this install", ""]
    for script, (subcommand, _, summary) in COMMANDS.items():
        lines.append(f"  {script:<{width}}  {summary}")
    lines += [
        "",
        "Run one with --help to see its flags, e.g. normzoo-train --help;",
        "or through Python: python -m normzoo <" + "|".join(s for s, _, _ in COMMANDS.values())
        + "> [flags].",
    ]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    by_subcommand = {subcommand: (script, module) for script, (subcommand, module, _) in COMMANDS.items()}
    if argv[1] not in by_subcommand:
        sys.stderr.write(
            f"python -m normzoo: error: unknown command {argv[1]!r}; the commands are "
            f"{', '.join(by_subcommand)}.\n{_usage()}"
        )
        return 2
    script, module = by_subcommand[argv[1]]
    sys.argv = [script, *argv[2:]]
    _MAINS[module]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
