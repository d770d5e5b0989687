"""P6: the FLOP/s a ResNet-50 training step achieves, as a fraction of
this machine's float32 matmul FLOP/s.

The step's operations are counted from the layers' shapes
(`benchmarking.forward_multiply_adds`, checked against TensorFlow's
profiler), three times the forward pass for training; its time is P1's.
Target: 40% of the matmul peak.
"""

from normzoo_lab import benchmarking
from normzoo_lab.benchmarks.records import Figure, FigureResult, measurement


def measure(settings, shared):
    peak = shared.matmul_peak()
    pair = shared.resnet50()
    forward = {name: benchmarking.forward_multiply_adds(model) for name, model in pair.models.items()}
    profiled = benchmarking.profiled_float_ops(pair.models["normzoo"], pair.input_shape)
    profiled_multiply_adds = sum(profiled.values()) / 2
    # Analytic and profiled counts at 224x224: the published ~4.1e9 (3.9e9 counted exactly).
    measurements = []
    for mode in settings.resnet_modes:
        times = pair.train_times(mode)
        for name in pair.models:
            training_flops = 3 * 2 * forward[name] * settings.resnet_batch_size
            achieved = training_flops / times[name].median
            measurements.append(measurement(
                "P6", f"ResNet-50 training FLOP/s / matmul FLOP/s, {name} ({mode})",
                achieved / peak, "fraction", ">= 0.40",
                achieved_gflops=achieved / 1e9, matmul_peak_gflops=peak / 1e9,
                forward_multiply_adds_per_image=forward[name],
                profiled_forward_multiply_adds_per_image=profiled_multiply_adds,
                profiled_float_ops_by_type=profiled,
                step_seconds=times[name].median,
                batch_size=settings.resnet_batch_size, image_size=settings.resnet_image_size,
            ))
    return FigureResult(measurements)


def note(m):
    d = m["details"]
    return (f"{d['achieved_gflops']:.1f} of {d['matmul_peak_gflops']:.1f} GFLOP/s; "
            f"{d['forward_multiply_adds_per_image'] / 1e9:.3f} GMAC/image forward")


FIGURE = Figure("P6", measure, note, uses=("resnet50", "matmul_peak"))
