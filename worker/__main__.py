"""``python -m changestream_worker`` runs the CLI."""

from changestream_worker.cli.main import main

raise SystemExit(main())
