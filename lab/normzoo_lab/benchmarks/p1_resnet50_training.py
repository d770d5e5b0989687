"""P1: ResNet-50 training images/s, normzoo / keras.applications.ResNet50.

The same batch and the same step code (`benchmarking.train_step`) train
normzoo's ResNet-50 in the keras.applications layout and Keras' own, side
by side in alternating rounds, in each of `settings.resnet_modes`.
Target: normzoo at least as fast (ratio >= 1.0).
"""

from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement


def measure(settings, shared):
    pair = shared.resnet50()
    batch = settings.resnet_batch_size
    measurements = []
    for mode in settings.resnet_modes:
        times = pair.train_times(mode)
        # keras time / normzoo time, round by round: normzoo's images/s over keras'.
        ratio, lowest, highest = benchmarking.ratio(times, "keras", "normzoo")
        measurements.append(measurement(
            "P1", f"ResNet-50 training images/s, normzoo / keras.applications ({mode})",
            ratio, "ratio", ">= 1.0",
            normzoo_images_per_second=batch / times["normzoo"].median,
            keras_images_per_second=batch / times["keras"].median,
            ratio_range_over_rounds=[lowest, highest],
            first_call_seconds={name: t.first_call for name, t in times.items()},
            batch_size=batch, image_size=settings.resnet_image_size,
        ))
    return FigureResult(measurements)


def note(m):
    d = m["details"]
    return (f"{d['normzoo_images_per_second']:.2f} vs {d['keras_images_per_second']:.2f} img/s; "
            f"rounds {d['ratio_range_over_rounds'][0]:.3f}-{d['ratio_range_over_rounds'][1]:.3f}")


FIGURE = Figure("P1", measure, note, uses=("resnet50",))
