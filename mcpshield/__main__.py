"""`python -m mcpshield` is the `mcpshield` command."""

from mcpshield.cli import main

raise SystemExit(main())
