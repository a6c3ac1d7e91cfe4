"""Process setup for serving on CPU cores: one OpenMP team, and an allocator that keeps its pages.

Two effects measured on this project's 2-core machine (UNet of the default model, 16 images per call;
docs/runtimes.md has the table):

- **One OpenMP team.** torch's CPU build runs intra-op parallelism on GNU OpenMP, and every thread that
  enters a parallel region gets a team of its own that lives as long as the thread. Once a process holds
  more OpenMP threads than cores, libgomp stops spinning and parks idle workers on futexes, so every
  parallel region pays a wake-up. The step batcher's UNet ran 1.6x slower (57 vs 35 ms) only because the
  main thread had made a team while loading the model. So: the one thread that runs the UNet gets all
  intra-op threads (`compute_threads`), every other thread gets one, which makes no team, and this must
  happen before that thread's first parallel op (a team once made is kept even if the count drops).
- **Allocator.** glibc's malloc gives blocks above its (dynamic) mmap threshold back to the kernel on
  free, so each UNet call page-faults its activations in again: 20% of a call here. `tune_allocator`
  raises the mmap and trim thresholds once per process (the worker calls it at startup; a preloaded
  jemalloc or tcmalloc is left alone).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at 32 MiB on 64-bit; larger blocks are mmapped whatever we ask.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 1 << 30
_PRELOADED_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def tune_allocator() -> str:
    """Keep freed activations in the heap instead of returning them to the kernel; says what it did."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in _PRELOADED_ALLOCATORS):
        return f"allocator preloaded ({preload}); left as is"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc; left as is"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    if not ok:
        log.warning("mallopt refused the thresholds; the UNet will page-fault its activations each call")
        return "glibc mallopt refused"
    return f"glibc: mmap threshold {_MMAP_THRESHOLD >> 20} MiB, trim threshold {_TRIM_THRESHOLD >> 20} MiB"


def compute_threads() -> int:
    """Intra-op threads for the thread that runs the UNet: what this thread would use (OMP_NUM_THREADS,
    else the cores torch sees). Read it before `helper_thread()` lowers this thread's count."""
    return torch.get_num_threads()


def helper_thread() -> None:
    """The calling thread does light torch work only (loading, text encoding, decoding): one intra-op
    thread, so it never makes an OpenMP team that would slow the compute thread's (module docstring)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def compute_thread(threads: int) -> None:
    """The calling thread runs the UNet: give it `threads` intra-op threads (set per thread)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
