"""The export's distributed engine on Ray (``engine = "ray"``); imported only when that engine is asked for."""
