"""Stage contracts v1 (``protos/recsys/stage/v1/``): recall, rank, rerank."""
