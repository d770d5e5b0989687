"""How every script under scripts/ runs its `main`: absl's `app.run`, with a
flag error that points to the script's own --help.

absl's --help lists the "key flags" of the main module: the flags the
script defines itself, plus those it adopts with
`flags.adopt_module_key_flags(module)` (scripts/train.py adopts
`normzoo.training.cli`'s, the grid scripts `_grid_flags`'). --helpfull adds
the flags of absl, TensorFlow and TFDS.

This module imports nothing but absl, so a script's --help stays as quick
as the script's own imports.
"""

import sys
import textwrap

from absl import app, flags


def _parse_flags(argv):
    """absl's parser (`app.parse_flags_with_usage`), with the hint at --help
    that absl's own message ("--helpshort or --helpfull") lacks."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = str(error)
        if "\n" in message:
            message = "\n" + textwrap.indent(message, "  ")
        sys.stderr.write(
            f"FATAL Flags parsing error: {message}\n"
            f"Pass --help to see the flags of {argv[0]} with their meaning and defaults.\n"
        )
        sys.exit(1)


def run(main):
    """`app.run(main)` with a flag error that ends by naming --help."""
    app.run(main, flags_parser=_parse_flags)
