import sys

from cluster.launcher import main

sys.exit(main())
