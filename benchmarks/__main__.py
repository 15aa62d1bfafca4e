"""``python -m benchmarks``: run the benchmark suite (see ``benchmarks/__init__.py``)."""

if __name__ == "__main__":  # a spawned server process imports this module too
    from ._cli import main

    raise SystemExit(main())
