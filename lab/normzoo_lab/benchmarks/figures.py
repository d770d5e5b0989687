"""The registry: every figure of lab/benchmark.py, in the order a run
measures them (and BENCHMARKS.md lists them).

The order keeps the ResNet-50 figures together (their models are
released after the last of them) and the subprocess and depth figures,
which need the memory, after them.
"""

from normzoo_lab.benchmarks import (
    onednn,
    p1_resnet50_training,
    p2_batch_norm,
    p3_fold,
    p4_synchronized_bn,
    p5_restore_and_build,
    p6_flops,
    p7_depth,
    p8_replica_statistics,
    p9_main_job,
    p10_jax_batch_norm,
    p11_deterministic,
    p12_fashion_mnist,
    p13_batch_norm_bandwidth,
)

FIGURES = (
    p1_resnet50_training.FIGURE,
    p6_flops.FIGURE,
    p3_fold.FIGURE,
    p5_restore_and_build.FIGURE,
    p2_batch_norm.FIGURE,
    p4_synchronized_bn.FIGURE,
    p8_replica_statistics.FIGURE,
    p9_main_job.FIGURE,
    p11_deterministic.FIGURE,
    p12_fashion_mnist.FIGURE,
    p10_jax_batch_norm.FIGURE,
    p13_batch_norm_bandwidth.FIGURE,
    p7_depth.FIGURE,
    onednn.FIGURE,
)

BY_ID = {figure.id: figure for figure in FIGURES}
