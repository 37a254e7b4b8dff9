"""Concurrent SEG builds: the JPEG 2000 encoder is not re-entrant, so the builder serialises it.

Each round runs in a fresh interpreter, so that a crash of the encoder (SIGSEGV) shows up as
the child's signal instead of killing the test run. Without the encoder lock, four threads
building 1024 x 1024 SEGs crash or fail within a few builds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

#: Threads building at once, builds per thread, image side in pixels, separate interpreters (rounds).
THREADS = 4
BUILDS_PER_THREAD = 8
SIZE = 1024
ROUNDS = 3

_CHILD = textwrap.dedent(
    f"""
    import threading
    import highdicom as hd
    import numpy as np
    from pydicom.filebase import DicomBytesIO
    from node.outputs.seg import build_lung_segmentation
    from tests.support.analysis_factory import make_analysis, phantom_radiograph
    from training.dicom_export import RadiographIdentity, radiograph_dataset

    cases = []
    for worker in range({THREADS}):
        phantom = phantom_radiograph({SIZE}, seed=worker)
        source = radiograph_dataset(phantom.image, RadiographIdentity.new(), pixel_spacing_mm=phantom.pixel_spacing_mm)
        cases.append((phantom, source, make_analysis(phantom)))
    start = threading.Barrier({THREADS})
    built = {{w: [] for w in range({THREADS})}}
    failures = []

    def build(worker):
        phantom, source, analysis = cases[worker]
        start.wait()
        for n in range({BUILDS_PER_THREAD}):
            try:
                built[worker].append(build_lung_segmentation(source, analysis))
            except Exception as exc:
                failures.append(f"worker {{worker}} build {{n}}: {{type(exc).__name__}}: {{exc}}")

    threads = [threading.Thread(target=build, args=(w,)) for w in range({THREADS})]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker, segs in built.items():
        phantom, source, _ = cases[worker]
        for n, seg in enumerate(segs):
            buffer = DicomBytesIO()
            seg.save_as(buffer, enforce_file_format=True)
            buffer.seek(0)
            masks = hd.seg.segread(buffer).get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=False)
            if not (np.array_equal(masks[0, ..., 0] > 0, phantom.left_lung) and np.array_equal(masks[0, ..., 1] > 0, phantom.right_lung)):
                failures.append(f"worker {{worker}} build {{n}}: masks read back differ")
    print("BUILT", sum(len(v) for v in built.values()), "FAILURES", len(failures))
    for f in failures:
        print(f)
    """
)


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_concurrent_seg_builds_neither_crash_nor_corrupt(round_number: int) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0, f"round {round_number}: child died with {child.returncode}: {child.stderr[-2000:]}"
    assert f"BUILT {THREADS * BUILDS_PER_THREAD} FAILURES 0" in child.stdout, child.stdout[-2000:]
