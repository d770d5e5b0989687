"""P10: normzoo's `BatchNorm` against `keras.layers.BatchNormalization` under
Keras' JAX backend, training step for step under `jax.jit`.

The conv net and batch of P2 (`p2_batch_norm.conv_net`, P2's `layers_*`
sizes), built once with each layer from the same seed, trained side by
side in alternating rounds with the same step (`benchmarking.train_step`:
`jax.jit` of Keras' stateless calls, what `Model.fit` compiles). On JAX
normzoo's layer runs its `keras.ops` formula (shifted moments, the
standardization written in the deviations) and JAX differentiates it;
Keras' layer runs its own moments. Target: normzoo / Keras <= 1.05.
Measured in a subprocess whose Keras backend is JAX.
"""

import keras

from normzoo_lab import benchmarking
from normzoo_lab.benchmarks import p2_batch_norm, subprocess_run
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement


def measure(settings, shared):
    result = subprocess_run.call(measure_in_process, settings, {"KERAS_BACKEND": "jax"})
    return FigureResult([
        measurement(
            "P10",
            "conv net step time under JAX jit, normzoo BatchNorm / keras BatchNormalization",
            result.pop("ratio"), "ratio", "<= 1.05", **result,
        )
    ])


def measure_in_process(settings):
    """P10's timings, in a process whose Keras backend is JAX."""
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"P10 measures under Keras' JAX backend; this process runs "
            f"{keras.backend.backend()!r}. Run it through subprocess_run.call with KERAS_BACKEND=jax."
        )
    times = p2_batch_norm.compare_case(p2_batch_norm.CASES["conv_net"], "xla", settings)
    ratio, lowest, highest = benchmarking.ratio(times, "normzoo", "keras")
    return {
        "ratio": ratio,
        "normzoo_step_ms": 1e3 * times["normzoo"].median,
        "keras_step_ms": 1e3 * times["keras"].median,
        "ratio_range_over_rounds": [lowest, highest],
        "first_call_s": {name: t.first_call for name, t in times.items()},
        "batch_size": settings.layers_batch_size,
        "image_size": settings.layers_image_size,
        "machine": benchmarking.machine(),
    }


def note(m):
    d = m["details"]
    return (f"{d['normzoo_step_ms']:.1f} vs {d['keras_step_ms']:.1f} ms under jax.jit "
            f"({d['machine']['jax']}); rounds {d['ratio_range_over_rounds'][0]:.3f}-"
            f"{d['ratio_range_over_rounds'][1]:.3f}")


FIGURE = Figure("P10", measure, note)
