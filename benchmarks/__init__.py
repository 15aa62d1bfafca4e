"""cio-queue's benchmark suite: ``python -m benchmarks [--quick] [--smoke]``."""
