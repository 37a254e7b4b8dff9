"""The node's own SEG and SR of a radiograph, as a PACS would send them back in a whole study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.outputs.files import write_output
from node.outputs.seg import build_lung_segmentation
from node.outputs.sr import build_measurement_report
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from training.dicom_export import RadiographIdentity, radiograph_dataset


@dataclass(frozen=True)
class CompanionFiles:
    """Part 10 files of one SEG (JPEG 2000 Lossless) and one Comprehensive 3D SR (explicit VR)."""

    seg: Path
    sr: Path

    @property
    def paths(self) -> list[Path]:
        return [self.seg, self.sr]


def write_node_outputs(folder: Path, study_uid: str | None = None, *, size: int = 64) -> CompanionFiles:
    """Build the node's SEG and SR of a small phantom radiograph of ``study_uid``; write them under ``folder``."""
    phantom = phantom_radiograph(size, seed=5)
    source = radiograph_dataset(
        phantom.image, RadiographIdentity.new(study_uid), pixel_spacing_mm=phantom.pixel_spacing_mm
    )
    analysis = make_analysis(phantom, seed=5)
    seg_path = write_output(folder, build_lung_segmentation(source, analysis))
    sr_path = write_output(folder, build_measurement_report(source, pydicom.dcmread(seg_path), analysis))
    return CompanionFiles(seg_path, sr_path)
