"""Guards for pixel-data codecs that are not safe to call from several threads at once.

pylibjpeg-openjpeg's ``openjpeg.utils.encode_array`` (2.6.0, the newest release), which
highdicom calls to compress the frames of a SEG as JPEG 2000, is not re-entrant: two threads
encoding at the same moment crash the whole process with SIGSEGV, or make ``opj_encode()``
fail. Decoding is not affected. Every output builder that makes highdicom encode JPEG 2000
holds :data:`JPEG2000_ENCODER_LOCK` for the duration of the encode, so concurrent jobs (the
in-process thread pool of ``cxr-node serve``, a threaded Celery pool) take turns there and
nowhere else.
"""

from __future__ import annotations

import threading

#: Held while highdicom encodes JPEG 2000 frames (see the module docstring). One lock per
#: process: the encoder's shared state is per process, so processes need not coordinate.
JPEG2000_ENCODER_LOCK = threading.Lock()
