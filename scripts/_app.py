"""How every script under scripts/ runs its `main`: absl's `app.run`, with a
flag error that points to the script's own --help.

absl's --help lists the "key flags" of the main module: the flags the
script defines itself, plus those it adopts with
`flags.adopt_module_key_flags(module)` (scripts/train.py adopts
`normzoo.training.cli`'s, the grid scripts `_grid_flags`'). --helpfull adds
the flags of absl, TensorFlow and TFDS.

A usage error (a flag absl cannot parse, or `app.UsageError` raised by
`main`, e.g. for flags that contradict each other) ends the script with
one message on stderr and exit status 2: the reason first, then where the
flags are described. absl's own handling would print the whole flag list
before the reason.

This module imports nothing but absl, so a script's --help stays as quick
as the script's own imports.
"""

import os
import sys
import textwrap

from absl import app, flags


# The exit status of a usage error (a bad flag), as for most Unix commands.
USAGE_ERROR = 2


def _help_hint(program):
    return f"Pass --help to see the flags of {program} with their meaning and defaults.\n"


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


def run(main):
    """`app.run(main)`, where a usage error (a flag error, or `app.UsageError`
    from `main`) prints its reason and the hint at --help, and exits with
    status 2."""

    def main_with_usage_errors(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            sys.stderr.write(f"{os.path.basename(argv[0])}: error: {error}\n{_help_hint(argv[0])}")
            return USAGE_ERROR

    app.run(main_with_usage_errors, flags_parser=_parse_flags)
