import sys

from rerank_server.server import main

sys.exit(main())
