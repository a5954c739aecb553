"""A running top K per row over blocks of catalogue scores, compiled (numba), for the CPU.

What a search index does after its GEMM: each row keeps a heap of its K best cells, and a
block is read once. A row's cells are counted against its K-th best ``SEGMENT`` at a time in
a loop the compiler vectorises; the few segments holding a cell that reaches it are read
again cell by cell into the heap. (The PyTorch path of :mod:`metarec.scoring.engine`, for
GPUs, needs several passes and many small operations per block: about 3x slower here.)
The order is the engine's (:func:`metarec.scoring.engine.pack`): higher score first, 0.0
above -0.0, then the lower catalogue column; an excluded cell ranks below every other and is
among the picks only when a row had fewer than K other cells before this kernel took over.

Each row's heap is three (T, K) arrays (score, column, excluded), its root (index 0) the
worst pick. The loops run rows in parallel (``prange``, :func:`threads` of them, on numba's
OpenMP layer); they read the blocks and write only the heaps. Like torch's own OpenMP work,
they must not run in a child *forked* from a process that already ran them (numba stops
such a child; torch's operations can hang in it): the project's workers and Dask start
theirs with ``spawn``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

NUMBA_THREADS = numba.config.NUMBA_NUM_THREADS
def _parallel(fn: Callable[..., Any]) -> Any:
    """``fn`` compiled with rows in parallel, cached on disk where numba finds a writable
    folder (next to this file or the user's cache), else compiled once per process."""
    try:
        return numba.njit(cache=True, nogil=True, parallel=True)(fn)
    except RuntimeError:              # "no locator available": nowhere to write the cache
        return numba.njit(nogil=True, parallel=True)(fn)


@numba.njit(inline="always")
def _worse(s1: float, c1: int, x1: bool, s2: float, c2: int, x2: bool) -> bool:
    """Whether pick 1 ranks below pick 2."""
    if x1 != x2:
        return x1
    if x1:
        return c1 > c2
    if s1 != s2:
        return s1 < s2
    n1 = math.copysign(1.0, s1) < 0.0
    n2 = math.copysign(1.0, s2) < 0.0
    if n1 != n2:
        return n1
    return c1 > c2


@numba.njit(inline="always")
def _sift_down(hs: np.ndarray, hc: np.ndarray, hx: np.ndarray, i: int, k: int, p: int = 0
               ) -> None:
    """Restore row i's min-heap (worst at the root) below position ``p``, whose pick
    changed (the root's, after a replacement; each inner node's, when heapifying)."""
    while True:
        a = 2 * p + 1
        if a >= k:
            return
        b = a + 1
        if b < k and _worse(hs[i, b], hc[i, b], hx[i, b], hs[i, a], hc[i, a], hx[i, a]):
            a = b
        if not _worse(hs[i, a], hc[i, a], hx[i, a], hs[i, p], hc[i, p], hx[i, p]):
            return
        hs[i, p], hs[i, a] = hs[i, a], hs[i, p]
        hc[i, p], hc[i, a] = hc[i, a], hc[i, p]
        hx[i, p], hx[i, a] = hx[i, a], hx[i, p]
        p = a


@_parallel
def heapify(hs: np.ndarray, hc: np.ndarray, hx: np.ndarray) -> None:
    """Make every row of (hs, hc, hx) a min-heap, in place."""
    t, k = hs.shape
    for i in numba.prange(t):
        for start in range(k // 2 - 1, -1, -1):
            _sift_down(hs, hc, hx, i, k, start)


@numba.njit(inline="always")
def _visit(s: float, col: int, i: int, hs: np.ndarray, hc: np.ndarray, hx: np.ndarray,
           ex_start: np.ndarray, ex_end: np.ndarray, ex_cols: np.ndarray) -> float:
    """Cell (i, col) of score ``s`` (at least row i's k-th best) offered to row i's heap;
    returns the row's k-th best score after it (-inf while an excluded cell is a pick)."""
    e = ex_start[i]
    while e < ex_end[i] and ex_cols[e] < col:
        e += 1
    ex_start[i] = e
    if not (e < ex_end[i] and ex_cols[e] == col) and _worse(hs[i, 0], hc[i, 0], hx[i, 0],
                                                            s, col, False):
        hs[i, 0], hc[i, 0], hx[i, 0] = s, col, False
        _sift_down(hs, hc, hx, i, hs.shape[1])
    return -np.inf if hx[i, 0] else hs[i, 0]


SEGMENT = 64   # cells of a row counted against its k-th best at once (a vectorised loop)


@_parallel
def merge(key: np.ndarray, c0: int, hs: np.ndarray, hc: np.ndarray, hx: np.ndarray,
          ex_start: np.ndarray, ex_end: np.ndarray, ex_cols: np.ndarray,
          nan_at: np.ndarray) -> None:
    """Row i's heap updated with block ``key[i]`` (catalogue columns c0..); row i's excluded
    columns are ``ex_cols[ex_start[i]:ex_end[i]]``, ascending (``ex_start`` advances as the
    columns pass). A NaN score stops its row and sets ``nan_at[i]`` to its column.

    A row goes ``SEGMENT`` cells at a time: one vectorised count of the cells that reach the
    k-th best (or are NaN, which compares false) skips most segments whole; only a segment
    with such a cell is read again cell by cell."""
    t, b = key.shape
    for i in numba.prange(t):
        thr = -np.inf if hx[i, 0] else hs[i, 0]
        for j0 in range(0, b, SEGMENT):
            seg = key[i, j0:j0 + SEGMENT]
            n = 0
            for j in range(seg.shape[0]):
                if seg[j] < thr:
                    continue
                n += 1
            if n == 0:
                continue
            for j in range(seg.shape[0]):
                s = seg[j]
                if s < thr:
                    continue
                if s != s:
                    nan_at[i] = c0 + j0 + j
                    break
                thr = _visit(s, c0 + j0 + j, i, hs, hc, hx, ex_start, ex_end, ex_cols)
            if nan_at[i] >= 0:
                break


def threads(n: int) -> None:
    """Run the kernels on ``n`` threads (at most what numba started with)."""
    numba.set_num_threads(max(1, min(n, NUMBA_THREADS)))
