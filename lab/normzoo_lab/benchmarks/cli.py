"""The absl flags of lab/benchmark.py and lab/benchmark_layers.py,
defined once: one flag per field of `Settings`, with the same name.

    OUTPUT = report.Output("lab/results")
    cli.define_flags(OUTPUT)
    app.run(lambda argv: cli.main(argv, OUTPUT))
"""

import dataclasses

from absl import app, flags

from normzoo_lab.benchmarks import report, runner, settings
from normzoo_lab.benchmarks.settings import Settings

FLAGS = flags.FLAGS

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, str: flags.DEFINE_string, tuple: flags.DEFINE_list}


def define_flags(output, names=None):
    """Defines --output_dir (default `output.directory`) and a flag for each
    field of `Settings` in `names` (None: every field), its help ending
    with its value under --quick."""
    flags.DEFINE_string(
        "output_dir", output.directory, f"Where {output.markdown_name} and {output.json_name} are written."
    )
    quick = settings.quick_values()
    for field in dataclasses.fields(Settings):
        if names is None or field.name in names:
            default = list(field.default) if isinstance(field.default, tuple) else field.default
            help_text = field.metadata["help"]
            if field.name in quick:
                help_text += f" --quick: {_flag_text(quick[field.name])}."
            _DEFINE[type(field.default)](field.name, default, help_text)


def _flag_text(value):
    return ",".join(value) if isinstance(value, tuple) else str(value)


def settings_from_flags(**fixed):
    """The `Settings` of the parsed flags: `fixed` for the fields given
    there, each flag's value for the others (with --quick, the quick value
    of each flag not given on the command line), the defaults for fields
    without a flag."""
    quick = settings.quick_values() if "quick" in FLAGS and FLAGS.quick else {}
    values = dict(fixed)
    for field in dataclasses.fields(Settings):
        name = field.name
        if name in values or name not in FLAGS:
            continue
        values[name] = quick[name] if name in quick and not FLAGS[name].present else FLAGS[name].value
    return Settings.from_dict(values)


def main(argv, output, **fixed):
    """Measures what the flags (and `fixed` settings) select, writes the
    record to `output` in --output_dir, prints the figures and the
    Markdown."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    chosen = settings_from_flags(**fixed)
    try:
        chosen.check()
    except ValueError as error:  # its message starts with the setting's name
        raise app.UsageError(f"--{error}") from None
    output = dataclasses.replace(output, directory=FLAGS.output_dir)
    record = runner.run(chosen, output)
    for measurement in record["measurements"]:
        print(report.summary_line(measurement), flush=True)
    print()
    print(report.markdown(record, output.script, output.json_name))
    print(f"Wrote {output.directory}/{output.markdown_name} and {output.json_name}")
