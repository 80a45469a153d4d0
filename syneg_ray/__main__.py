"""`python -m syneg_ray` runs the CLI."""

from syneg_ray.cli import main

raise SystemExit(main())
