"""Issue 25 item 10: CPU memory figures report what was resident, labelled as such."""
import mmap
import time

import numpy as np

from ttt.eval.phases import Resident

MB = 1 << 20


def test_anonymous_peak_counts_a_copy_once_and_not_the_mapped_file(tmp_path):
    """Reading a 128 MB file through a mapping (as safetensors does) and holding one 128 MB copy:
    the anonymous peak grows by the copy alone; ru_maxrss (the figure before) counted both."""
    path = tmp_path / "weights.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 128 * MB, dtype=np.uint8).tobytes())
    with Resident() as r:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            # The copy lives in anonymous 4 KiB pages (no transparent huge pages). numpy asks for
            # huge pages on large arrays; kernels before 6.2 batch a thread's RSS counts and
            # publish them every 64 faults, so a 128 MB copy in 64 huge pages could stay unseen
            # (CI saw a growth of 4 KiB). torch's loader does not ask for huge pages.
            copy = mmap.mmap(-1, len(m), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if hasattr(mmap, "MADV_NOHUGEPAGE"):
                copy.madvise(mmap.MADV_NOHUGEPAGE)
            with memoryview(copy) as dst, memoryview(m) as src:
                dst[:] = src  # touches every file page, one copy
            time.sleep(0.05)  # sampled while held
            copy.close()  # gone before the block ends: only the sampled peak saw it
    growth = r.anon_peak - r.start["RssAnon"]
    assert 0.9 * 128 * MB <= growth <= 1.2 * 128 * MB, growth / MB
    assert r.rss_delta <= 1.2 * 128 * MB, r.rss_delta / MB  # the copy is gone; file pages may stay


def test_cpu_cell_memory_is_labelled_resident(cache, tmp_path):
    from conftest import make_cell
    from ttt.eval.cell import run_cell
    memory = run_cell(make_cell(cache, "m", [1.0]), tmp_path / "m", log=lambda m: None)["memory"]
    assert memory["measure"] == "cpu_resident"
    assert memory["load_peak_bytes"] == memory["load_anon_peak_bytes"] > 0
    assert isinstance(memory["load_rss_delta_bytes"], int)
