"""P5: restoring a ResNet-50 `.weights.h5` with full verification, and the
build time of a deep model.

The restore is strict: every variable checked, every tensor's sha256
verified (target < 2 s). Timed in alternation with the same restore of a
Keras-written file of the same weights, which has no checksums, so the
cost of verifying shows. The build is `models.build(settings.build_model)`
(WRN-1000-2 by default; target < 30 s).
"""

import os
import tempfile
import time

import numpy as np

from normzoo import checkpoints, models
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement


def measure(settings, shared):
    build = _build(settings, shared)
    return FigureResult([_restore(shared.resnet50()), build])


def _restore(pair):
    model = pair.inference_model()
    with tempfile.TemporaryDirectory() as directory:
        # The same weights written by Keras (no checksums: restore verifies
        # nothing) and by normzoo (a sha256 per tensor, each verified),
        # restored in alternation; the verified restore comes last, so its
        # values are the ones compared.
        paths = {
            "unverified": os.path.join(directory, "keras.weights.h5"),
            "verified": os.path.join(directory, "normzoo.weights.h5"),
        }
        model.save_weights(paths["unverified"])
        checkpoints.save_weights(model, paths["verified"])
        fresh = models.build("resnet50", layout="keras", norm="batch", input_shape=pair.input_shape)
        seconds = {kind: [] for kind in paths}
        cpu_seconds = {kind: [] for kind in paths}
        for _ in range(3):
            for kind, path in paths.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                report = checkpoints.restore(fresh, path, strict=True)
                seconds[kind].append(time.perf_counter() - start)
                cpu_seconds[kind].append(time.process_time() - start_cpu)
    identical = all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, fresh.weights, strict=True)
    )
    restore_seconds = sorted(seconds["verified"])[1]
    return measurement(
        "P5", "restore ResNet-50 .weights.h5, strict, every tensor's sha256 verified",
        restore_seconds, "s", "< 2",
        seconds_each_try=seconds["verified"], cpu_seconds_each_try=cpu_seconds["verified"],
        unverified_seconds_each_try=seconds["unverified"],
        unverified_cpu_seconds_each_try=cpu_seconds["unverified"],
        verified=report.verified, variables=len(model.weights),
        restored_variables=len(report.restored), all_variables_identical=identical,
    )


def _build(settings, shared):
    name = settings.build_model
    _, seconds, cpu_seconds = shared.built_model(name)
    # CPU time: building is one Python thread, so on a shared machine its
    # CPU time is what the wall time would be on an idle one.
    return measurement("P5", f"build {name}", seconds, "s", "< 30", model=name, cpu_seconds=cpu_seconds)


def note(m):
    d = m["details"]
    if "seconds_each_try" not in d:
        return f"CPU time {d['cpu_seconds']:.1f} s"
    return (f"tries {', '.join(f'{s:.2f}' for s in d['seconds_each_try'])} s "
            f"(CPU {', '.join(f'{s:.2f}' for s in d['cpu_seconds_each_try'])} s); without "
            f"verification (a Keras-written file) "
            f"{', '.join(f'{s:.2f}' for s in d['unverified_seconds_each_try'])} s; "
            f"{d['restored_variables']} variables, identical: {d['all_variables_identical']}")


FIGURE = Figure("P5", measure, note, uses=("resnet50", "built_model"))
