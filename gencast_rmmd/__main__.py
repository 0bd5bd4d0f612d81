import sys

from gencast_rmmd.cli import main

sys.exit(main())
