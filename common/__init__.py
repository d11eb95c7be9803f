"""Code shared by every process of the cluster: config, logging, snapshot access, wire format, gRPC bootstrap."""
