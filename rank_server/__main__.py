import sys

from rank_server.server import main

sys.exit(main())
