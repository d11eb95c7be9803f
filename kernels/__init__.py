"""Numba kernels for recall, merge and re-ranking.

One concept per module, each with a validating public wrapper around an
``@numba.njit(cache=True)`` function (plain numpy arrays in and out):

* ``csr``        build_csr, transpose_csr
* ``topk_heap``  njit top-k heap helpers used by the kernels below
* ``itemcf``     itemcf_topm     (parallel)
* ``swing``      swing_topm      (parallel)
* ``i2i_score``  i2i_score, recency_weights, check_neighbor_table
* ``merge``      merge_quota
* ``mmr``        mmr_select
* ``dpp``        dpp_select
* ``rules``      business rules in the greedy loop: greedy/mmr/dpp_select_ruled
* ``bench``      ``python -m benches.kernel_timings`` timing table

Rankings everywhere are by score descending, then id ascending, decided on
the float32 scores that are returned.

Numba's on-disk cache (``__pycache__``) is keyed on the file of the function
being compiled, not on the njit helpers it calls from other modules: after
editing ``topk_heap.py`` or ``_rerank_inputs.py``, delete
``kernels/__pycache__`` so dependent kernels are recompiled.
"""
