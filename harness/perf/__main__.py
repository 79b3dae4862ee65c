"""`python -m harness.perf`."""

from harness.perf.cli import main

raise SystemExit(main())
