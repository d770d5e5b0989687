"""What several figures measure on, made once per run: the ResNet-50 pair
of P1, P3, P5 and P6, the matmul peak of P6 and P7, the model whose build
P5 times (P7 reuses it when it is one of its depths)."""

import gc
import time

import keras
import tensorflow as tf

from normzoo import bn, models
from normzoo_lab import benchmarking


def time_build(name, input_shape):
    """`(model, wall seconds, CPU seconds)` of `models.build(name)`."""
    start, start_cpu = time.perf_counter(), time.process_time()
    model = models.build(name, input_shape=input_shape)
    return model, time.perf_counter() - start, time.process_time() - start_cpu


class ResNet50Pair:
    """A normzoo ResNet-50 (keras.applications layout) and
    keras.applications.ResNet50, from the same seed, with one batch of
    random images at the size of `settings.resnet_image_size`.

    Attributes:
        models: {"normzoo": model, "keras": model}.
        images, labels: the batch (1000 classes).
        input_shape: (size, size, 3).
    """

    def __init__(self, settings):
        self.settings = settings
        size = settings.resnet_image_size
        self.input_shape = (size, size, 3)
        self.images, self.labels = benchmarking.random_batch(settings.resnet_batch_size, size, 1000)
        keras.utils.set_random_seed(0)
        self.models = {
            "normzoo": models.build("resnet50", layout="keras", norm="batch", input_shape=self.input_shape),
            "keras": keras.applications.ResNet50(
                weights=None, input_shape=self.input_shape, classifier_activation=None
            ),
        }
        self._train_times = {}
        self._inference_model = None

    def train_times(self, mode):
        """{"normzoo": StepTimes, "keras": StepTimes} of training in `mode`,
        timed side by side once and then remembered (P1 and P6 quote the
        same timings)."""
        if mode not in self._train_times:
            steps = {
                name: (benchmarking.train_step(model, mode), (self.images, self.labels))
                for name, model in self.models.items()
            }
            self._train_times[mode] = benchmarking.compare(
                steps, rounds=self.settings.rounds, steps_per_round=self.settings.steps_per_round,
                warmup_steps=self.settings.warmup_steps,
            )
        return self._train_times[mode]

    def inference_model(self):
        """A normzoo ResNet-50 that no figure trains, with the BatchNorm
        statistics of the pair's batch (not the initial 0 and 1), for P3
        and P5."""
        if self._inference_model is None:
            keras.utils.set_random_seed(1)
            model = models.build("resnet50", layout="keras", norm="batch", input_shape=self.input_shape)
            bn.recalibrate(model, tf.data.Dataset.from_tensors(self.images))
            self._inference_model = model
        return self._inference_model


class Shared:
    """The resources of one run, each made on first use and kept until
    `release`.

    Attributes:
        seconds: {what was made: wall seconds}, for benchmark.json's
            "figure_seconds".
        matmul_peak_flops: the float32 matmul FLOP/s, once measured (None
            before).
    """

    RESOURCES = ("resnet50", "matmul_peak", "built_model")

    def __init__(self, settings):
        self.settings = settings
        self.seconds = {}
        self.matmul_peak_flops = None
        self._resnet50 = None
        self._built = None  # (name, model, wall seconds, CPU seconds)

    def resnet50(self):
        """The run's `ResNet50Pair`."""
        if self._resnet50 is None:
            start = time.perf_counter()
            self._resnet50 = ResNet50Pair(self.settings)
            self.seconds["ResNet-50 builds"] = time.perf_counter() - start
        return self._resnet50

    def matmul_peak(self):
        """`benchmarking.matmul_flops_per_second` at `settings.matmul_size`."""
        if self.matmul_peak_flops is None:
            start = time.perf_counter()
            self.matmul_peak_flops = benchmarking.matmul_flops_per_second(self.settings.matmul_size)
            self.seconds["P6 matmul peak"] = time.perf_counter() - start
        return self.matmul_peak_flops

    def built_model(self, name):
        """`(model, wall seconds, CPU seconds)` of building `name` at
        `settings.wrn_image_size`, built once and kept."""
        if self._built is None or self._built[0] != name:
            size = self.settings.wrn_image_size
            self._built = (name, *time_build(name, (size, size, 3)))
            self.seconds["P5 build"] = self._built[2]
        return self._built[1:]

    def take_built_model(self, name):
        """`built_model(name)` if it was built, handed over and no longer
        kept; otherwise a new build, not kept."""
        if self._built is not None and self._built[0] == name:
            built, self._built = self._built[1:], None
            return built
        size = self.settings.wrn_image_size
        return time_build(name, (size, size, 3))

    def release(self, keep):
        """Drops the resources not named in `keep` (a set of `RESOURCES`)."""
        unknown = set(keep) - set(self.RESOURCES)
        if unknown:
            raise ValueError(f"Unknown resources {sorted(unknown)}; the resources are {', '.join(self.RESOURCES)}.")
        if "resnet50" not in keep:
            self._resnet50 = None
        if "built_model" not in keep:
            self._built = None
        gc.collect()
