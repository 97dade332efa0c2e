"""``python -m zmqcomm`` runs the command line."""

import sys

from zmqcomm.cli.main import main

sys.exit(main())
