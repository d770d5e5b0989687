"""normzoo's lab: the measuring apparatus beside the library, not installed.

    benchmarks/          one module per figure of lab/benchmark.py, and the
                         renderer of lab/results/BENCHMARKS.md
    benchmarking.py      speed measurements for lab/benchmark*.py
    experiments.py       grids of training runs and their result tables
                         (lab/depth_sweep.py, lab/batch_size_sensitivity.py)
    batch_dependence.py  accuracy in mixed-class and single-class batches
                         (article 002's symptom; lab/finetune_experiment.py)
    lost_statistics.py   article 002's bug, reproduced: a checkpoint restored
                         from its trainable variables only
    path_lengths.py      the path-length analysis of residual networks
    signal_propagation.py the variance of the skip path and of each branch
    gpu_check.py         the one-shot GPU check under JAX or PyTorch (lab/gpu_check.py)

It imports the library (`normzoo`), never the reverse; the lab's scripts
(lab/*.py) put this directory on `sys.path` by being run from it, and the
suite by setup.cfg's `pythonpath = lab`. Results are under lab/results/,
and lab/README.md reports them.
"""
