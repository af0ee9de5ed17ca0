"""`python -m app.cli ARGS`: the `tuneboard` command without the installed script."""

import sys

from app.cli.main import main

sys.exit(main())
