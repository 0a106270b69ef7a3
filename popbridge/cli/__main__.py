"""`python -m popbridge.cli`: the same as the `popbridge` command."""

from __future__ import annotations

import sys

from popbridge.cli.commands import main

sys.exit(main())
