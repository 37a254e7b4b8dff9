"""cxr-node: the clinical service.

Everything that knows DICOM, the network, the queue or the database lives here. The
science (segmentation, mask policies, classification) lives in :mod:`models`, which this
package calls through :func:`models.analyze`.
"""

__version__ = "0.1.0"
