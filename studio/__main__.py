"""``python -m studio`` is the same program as ``qlora-studio``."""

from studio.cli import main

raise SystemExit(main())
