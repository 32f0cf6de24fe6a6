"""``python -m tapedeck_agent`` = the ``tapedeck-agent`` console script."""

import sys

from tapedeck_agent.cli import main

sys.exit(main())
