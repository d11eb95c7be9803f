"""The launcher and supervisor: start every server of the cluster from a snapshot, watch them, stop them.

``python -m cluster`` (console script ``recsys-cluster``). It sits above the gateway: it starts the serving
processes as subprocesses and imports none of their code.
"""
