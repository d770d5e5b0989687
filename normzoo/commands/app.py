"""How every command runs its `main`: absl's `app.run`, with a flag error
that points to the command's own --help. The console scripts
(`normzoo.commands.train`, `normzoo.commands.finetune`), scripts/*.py and
the lab's scripts all run this way.

absl's --help lists the "key flags" of the main module: the flags the
script defines itself, plus those it adopts with
`flags.adopt_module_key_flags(module)` (the grid scripts of the lab adopt
`_grid_flags`'); `run(main, key_flags=module)` adopts a module's for the
program that runs (the training commands adopt `normzoo.training.cli`'s).
--helpfull adds the flags of absl, TensorFlow and TFDS.

A usage error (a flag absl cannot parse, or `app.UsageError` raised by
`main`, e.g. for flags that contradict each other) ends the script with
one message on stderr and exit status 2: the reason first, then where the
flags are described. absl's own handling would print the whole flag list
before the reason.

This module imports nothing but absl (installed with Keras).
"""

import os
import sys
import textwrap

from absl import app, flags


# The exit status of a usage error (a bad flag), as for most Unix commands.
USAGE_ERROR = 2


def program_name(argv0):
    """How a usage error names the program: as it was run (scripts/train.py),
    or a console script by its name (normzoo-train), not its installed path."""
    return os.path.basename(argv0) if os.path.isabs(argv0) else argv0


def _help_hint(program):
    return (
        f"Pass --help to see the flags of {program_name(program)} with their meaning and "
        f"defaults.\n"
    )


def _parse_flags(argv):
    """absl's parser (`app.parse_flags_with_usage`), with the hint at --help
    that absl's own message ("--helpshort or --helpfull") lacks."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error)
        if "\n" in message:
            message = "\n" + textwrap.indent(message, "  ")
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n{_help_hint(argv[0])}")
        sys.exit(USAGE_ERROR)


def run(main, *, key_flags=None, doc=None):
    """`app.run(main)`, where a usage error (a flag error, or `app.UsageError`
    from `main`) prints its reason and the hint at --help, and exits with
    status 2.

    `key_flags`: a module whose key flags --help lists as the program's own
    (absl lists the key flags of the program that runs, `sys.argv[0]`)."""
    main_module = sys.modules["__main__"]
    if doc is not None and not main_module.__doc__:
        # absl's --help shows the running program's docstring; a console
        # script's generated wrapper has none.
        main_module.__doc__ = doc
    if key_flags is not None:
        for flag in flags.FLAGS.get_key_flags_for_module(key_flags):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def main_with_usage_errors(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            sys.stderr.write(f"{os.path.basename(argv[0])}: error: {error}\n{_help_hint(argv[0])}")
            return USAGE_ERROR

    app.run(main_with_usage_errors, flags_parser=_parse_flags)
