"""``python -m benchmarks``: time every engine and the PyTorch peer."""

from .runner import main

raise SystemExit(main())
