"""Where a training run's time goes: wall time by part (training steps, the
first step apart, input waits, evaluation, checkpoint writes), per epoch and
for the whole run, as `normzoo.training.train` records it in metrics.json,
TensorBoard and its last log line."""

import collections
import contextlib
import time

# The parts of a run that a Stopwatch times.
STEP = "step"  # a training step, from its call until its result is on the host
FIRST_STEP = "first_step"  # the first step of a process: tracing and compiling it
INPUT_WAIT = "input_wait"  # waiting for the next training batch
EVAL = "eval"  # evaluating on the test split
CHECKPOINT = "checkpoint"  # writing a checkpoint


class Stopwatch:
    """Wall time spent in named parts of a run, and how many times each part
    was timed.

        stopwatch = Stopwatch()
        mark = stopwatch.mark()
        with stopwatch.timing(STEP):
            ...
        stopwatch.figures(batch_size, since=mark)  # since the mark

    Args:
        start: When the run began (`time.perf_counter()`); None: now.
    """

    def __init__(self, start=None):
        self.start = time.perf_counter() if start is None else start
        self.seconds = collections.Counter()
        self.calls = collections.Counter()

    @contextlib.contextmanager
    def timing(self, part):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start
            self.calls[part] += 1

    def mark(self):
        """The time and the totals now, for `figures(since=...)`."""
        return time.perf_counter(), self.seconds.copy(), self.calls.copy()

    def figures(self, batch_size, since=None):
        """Where the time went (since the `mark` `since`, or since `start`),
        as metrics.json records it:

        - `wall_seconds`: all the time;
        - `step_seconds`, `input_wait_seconds`, `eval_seconds`,
          `checkpoint_seconds`: seconds in each part;
        - `first_step_seconds`: present only if the first step was timed;
        - `steps_per_second`, `examples_per_second` (`batch_size` per step):
          the rate of training alone, i.e. of the steps other than the
          first together with the waits for their input; None without
          such a step.
        """
        started, seconds, calls = self.start, self.seconds, self.calls
        if since is not None:
            started, seconds, calls = since[0], seconds - since[1], calls - since[2]
        figures = {
            "wall_seconds": time.perf_counter() - started,
            "steps_per_second": None,
            "examples_per_second": None,
            "step_seconds": seconds[STEP],
            "input_wait_seconds": seconds[INPUT_WAIT],
            "eval_seconds": seconds[EVAL],
            "checkpoint_seconds": seconds[CHECKPOINT],
        }
        if calls[STEP]:
            rate = calls[STEP] / (seconds[STEP] + seconds[INPUT_WAIT])
            figures.update(steps_per_second=rate, examples_per_second=rate * batch_size)
        if calls[FIRST_STEP]:
            figures["first_step_seconds"] = seconds[FIRST_STEP]
        return figures

    def summary(self, figures):
        """One line of the `figures` of the whole run: its time, and where it
        went."""
        wall_seconds = figures["wall_seconds"]
        parts = []
        if self.calls[STEP]:
            parts.append(
                f"{self.calls[STEP]} steps {figures['step_seconds']:.1f} s "
                f"({figures['steps_per_second']:.2f} steps/s, "
                f"{figures['examples_per_second']:.0f} examples/s with their input waits)"
            )
        if self.calls[FIRST_STEP]:
            parts.append(f"first step {figures['first_step_seconds']:.1f} s (tracing and compiling it)")
        parts += [
            f"input waits {figures['input_wait_seconds']:.1f} s",
            f"evaluation {figures['eval_seconds']:.1f} s",
            f"checkpoints {figures['checkpoint_seconds']:.1f} s",
            f"the rest {wall_seconds - sum(self.seconds.values()):.1f} s "
            "(building, restoring, records, export)",
        ]
        return f"Time of this run: {wall_seconds:.1f} s: " + "; ".join(parts) + "."
