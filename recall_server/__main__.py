import sys

from recall_server.server import main

sys.exit(main())
