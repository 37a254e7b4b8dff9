"""The node's SEG and SR open in the OHIF viewer and show what a radiologist needs to see.

Everything runs for real on loopback: Orthanc 1.10 with its DICOMweb plugin holds a phantom
DX study with the SEG and the TID 1500 SR that the node's builders make from it
(``node.outputs.seg.build_lung_segmentation``, ``node.outputs.sr.build_measurement_report``,
a Mass above threshold so the SR carries an ELLIPSE); OHIF 3.13.2's built viewer is served
with a same-origin DICOMweb proxy (``tests/support/ohif.py``) and opened in headless Chromium
driven over the DevTools protocol (``tests/support/browser.py``), at the URL radiologists use:
``/viewer?StudyInstanceUIDs=<study>&initialSeriesInstanceUID=<series>``.

What is checked is what is on the screen:

- SR, with the site configuration of ``docs/viewer.md`` (it works around an OHIF 3.13.2 bug
  with measurement groups that have no coordinates): the label "Mass probability: <p> %" with
  the analysis's probability beside one ellipse at the Mass's place and size; the viewer did
  not fall to its error screen.
- SEG, in OHIF's stock configuration: both lungs are painted in their segment colours over
  the image, the patient's left lung (segment 1) on the image's right-hand side as in a PA
  view, and loading finishes (no "Loading SEG" left); after "Yes" the segment labels
  "Left lung" and "Right lung" show in the segmentation panel.

Needs ``scripts/install_viewer.sh`` (Debian chromium, npm @ohif/app 3.13.2 under .cache/ohif).
Screenshots land in the test's tmp_path; with ``VIEWER_SCREENSHOTS_DIR=docs/images`` docs-sized
copies replace the ones ``docs/viewer.md`` shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from node.outputs.files import write_output
from node.outputs.seg import build_lung_segmentation
from node.outputs.sr import build_measurement_report
from tests.support.analysis_factory import make_analysis, phantom_radiograph
from tests.support.browser import HeadlessChromium
from tests.support.ohif import DicomWebOrthanc, OhifServer, ohif_dist
from training.dicom_export import RadiographIdentity, write_radiograph

pytestmark = pytest.mark.slow

PHANTOM_SIZE = 2048
MASS_PROBABILITY = 0.8734
VIEWER_TIMEOUT_S = 45.0
#: Share of the viewport's pixels each lung colour must cover (the phantom's lungs fill ~10 % each).
MIN_LUNG_COLOUR_SHARE = 0.03
SCREENSHOTS_ENV = "VIEWER_SCREENSHOTS_DIR"
DOCS_WIDTH = 1200
VIEWPORT_RECT_JS = """(() => {
  const canvas = [...document.querySelectorAll('canvas')]
      .map(c => c.getBoundingClientRect()).filter(r => r.width > 200 && r.height > 200)
      .sort((a, b) => b.width * b.height - a.width * a.height)[0];
  return canvas ? {x: canvas.x, y: canvas.y, width: canvas.width, height: canvas.height} : null;
})()"""
#: The annotation ellipses cornerstone draws in the viewport's SVG layer, and the image canvas.
ELLIPSE_RECT_JS = """(() => {
  const ellipses = [...document.querySelectorAll('svg.svg-layer ellipse')];
  const viewport = VIEWPORT;
  if (!ellipses.length || !viewport) return null;
  const r = ellipses[0].getBoundingClientRect();
  return {count: ellipses.length, box: {x: r.x, y: r.y, width: r.width, height: r.height}, viewport};
})()""".replace("VIEWPORT", VIEWPORT_RECT_JS)
ERROR_SCREEN = "Something went wrong"


@dataclass
class ViewerStudy:
    """The study in Orthanc, the viewer serving it and the browser looking at it."""

    viewer: OhifServer
    browser: HeadlessChromium
    study_uid: str
    sr_series_uid: str
    seg_series_uid: str
    mass_probability: float
    mass_region: tuple[tuple[float, float], tuple[float, float]]  # centre xy, semi-axes xy in source pixels
    tmp: Path


@pytest.fixture(scope="module")
def viewer_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStudy]:
    tmp = tmp_path_factory.mktemp("ohif")
    phantom = phantom_radiograph(PHANTOM_SIZE, seed=5, findings=["Mass"])
    identity = RadiographIdentity.new()
    source_path = write_radiograph(tmp / "dx.dcm", phantom.image, identity, pixel_spacing_mm=phantom.pixel_spacing_mm)
    source = pydicom.dcmread(source_path)
    analysis = make_analysis(phantom, policy="loose", seed=1, probabilities={
        "Mass": MASS_PROBABILITY, "Nodule": 0.12, "Pneumonia": 0.08, "Edema": 0.05, "Fibrosis": 0.03,
    })
    assert analysis.decisions["Mass"] and "Mass" in analysis.regions, "the Mass must be above threshold with a region"
    seg_path = write_output(tmp / "out", build_lung_segmentation(source, analysis))
    seg = pydicom.dcmread(seg_path)
    plane = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert [float(v) for v in plane.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0], (
        "OHIF draws a 2D SEG only with Image Orientation (Patient) in the shared Plane Orientation group"
    )
    sr = build_measurement_report(source, seg, analysis)
    sr_path = write_output(tmp / "out", sr)

    with DicomWebOrthanc(tmp / "orthanc") as pacs:
        for path in (source_path, seg_path, sr_path):
            assert pacs.upload(path)["Status"] == "Success"
        with OhifServer(ohif_dist(), pacs.url) as viewer, HeadlessChromium(tmp / "profile") as browser:
            yield ViewerStudy(
                viewer=viewer,
                browser=browser,
                study_uid=identity.study_instance_uid,
                sr_series_uid=str(sr.SeriesInstanceUID),
                seg_series_uid=str(seg.SeriesInstanceUID),
                mass_probability=MASS_PROBABILITY,
                mass_region=(analysis.regions["Mass"].center_xy, analysis.regions["Mass"].semi_axes_xy),
                tmp=tmp,
            )


def keep_screenshot(path: Path) -> None:
    """Save a docs-sized copy (1200 px wide, 256 colours) in ``$VIEWER_SCREENSHOTS_DIR`` when set.

    ``VIEWER_SCREENSHOTS_DIR=docs/images`` refreshes the screenshots of ``docs/viewer.md``.
    """
    target = os.environ.get(SCREENSHOTS_ENV)
    if not target:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    image = Image.open(path).convert("RGB")
    image = image.resize((DOCS_WIDTH, round(image.height * DOCS_WIDTH / image.width)), Image.Resampling.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        Path(target) / path.name, optimize=True
    )


def open_series(study: ViewerStudy, series_uid: str) -> None:
    study.browser.console.clear()
    study.browser.navigate(study.viewer.viewer_url(study.study_uid, initial_series_uid=series_uid))


def assert_no_error_screen(study: ViewerStudy) -> None:
    text = study.browser.text()
    assert ERROR_SCREEN not in text, f"OHIF shows its error screen; console:\n{study.browser.console_tail()}"
    boundary = [line for line in study.browser.console if "Error Boundary" in line]
    assert not boundary, "OHIF caught an error:\n" + "\n".join(boundary)


def lung_colour_masks(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels painted in the left lung's colour (pink-red) and the right lung's (cyan) in ``png``.

    ``(H, W) bool`` each. The phantom is grey (R = G = B), so saturated pixels of these hues
    come from the segmentation overlay (CIELab 60/60/20 and 60/-40/-40 in the SEG, blended).
    """
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    pink = (r - g > 40) & (r - b > 15)
    cyan = (b - r > 40) & (g - r > 30)
    return pink, cyan


def test_sr_shows_the_mass_probability_beside_its_ellipse(viewer_study: ViewerStudy) -> None:
    study, browser = viewer_study, viewer_study.browser
    study.viewer.sr_guard = True  # the site configuration docs/viewer.md asks for (OHIF 3.13.2 bug)
    open_series(study, study.sr_series_uid)
    expected = f"Mass probability: {study.mass_probability * 100:.2f} %"
    browser.wait_for(
        f"document.body && document.body.innerText.includes({expected!r})",
        timeout=VIEWER_TIMEOUT_S,
        what=f"the SR label {expected!r}",
    )
    ellipse = browser.wait_for(ELLIPSE_RECT_JS, timeout=VIEWER_TIMEOUT_S, what="the Mass ellipse over the image")
    assert ellipse["count"] == 1, f"one finding above threshold has a region, so one ellipse; got {ellipse['count']}"
    # Where the region is on the image, scaled as OHIF fits the square image into the viewport.
    view = ellipse["viewport"]
    scale = min(view["width"], view["height"]) / PHANTOM_SIZE
    left = view["x"] + (view["width"] - PHANTOM_SIZE * scale) / 2
    top = view["y"] + (view["height"] - PHANTOM_SIZE * scale) / 2
    (cx, cy), (ax, ay) = study.mass_region
    tolerance = 0.02 * PHANTOM_SIZE * scale
    box = ellipse["box"]
    assert box["x"] + box["width"] / 2 == pytest.approx(left + cx * scale, abs=tolerance)
    assert box["y"] + box["height"] / 2 == pytest.approx(top + cy * scale, abs=tolerance)
    assert box["width"] / 2 == pytest.approx(ax * scale, abs=tolerance)
    assert box["height"] / 2 == pytest.approx(ay * scale, abs=tolerance)
    assert_no_error_screen(study)
    shot = browser.screenshot(study.tmp / "ohif-sr.png")
    keep_screenshot(shot)


def test_seg_paints_both_lungs_on_their_sides_and_finishes_loading(viewer_study: ViewerStudy) -> None:
    study, browser = viewer_study, viewer_study.browser
    study.viewer.sr_guard = False  # the SEG opens in OHIF's stock configuration
    open_series(study, study.seg_series_uid)
    rect = browser.wait_for(VIEWPORT_RECT_JS, timeout=VIEWER_TIMEOUT_S, what="the image viewport")
    shot = study.tmp / "ohif-seg-lungs.png"

    def both_lungs_painted() -> bool:
        browser.screenshot(shot, clip=rect)
        pink, cyan = lung_colour_masks(shot)
        return pink.mean() > MIN_LUNG_COLOUR_SHARE and cyan.mean() > MIN_LUNG_COLOUR_SHARE

    browser.poll(both_lungs_painted, timeout=VIEWER_TIMEOUT_S, what="both lungs painted by the SEG overlay")
    pink, cyan = lung_colour_masks(shot)
    middle = pink.shape[1] / 2
    # Segment 1 (left lung, pink) lies on the image's right in a PA view, segment 2 (cyan) on its left.
    assert np.nonzero(pink)[1].mean() > middle > np.nonzero(cyan)[1].mean()
    browser.wait_for(
        "!document.body.innerText.includes('Loading SEG')", timeout=VIEWER_TIMEOUT_S, what="SEG loading to finish"
    )
    assert_no_error_screen(study)
    full = browser.screenshot(study.tmp / "ohif-seg.png")
    keep_screenshot(full)

    # A radiologist accepts the prompt and opens the segmentation panel: the segments are listed.
    browser.wait_for(
        "document.body.innerText.includes('Do you want to open this Segmentation?')",
        timeout=VIEWER_TIMEOUT_S,
        what="OHIF's prompt to open the segmentation",
    )
    browser.evaluate("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Yes').click()")
    browser.wait_for(
        "!document.body.innerText.includes('Do you want to open this Segmentation?')",
        timeout=VIEWER_TIMEOUT_S,
        what="the segmentation to be opened",
    )
    browser.evaluate("document.querySelector('[data-cy=\"panelSegmentation-btn\"]').click()")
    browser.wait_for(
        "document.body.innerText.includes('Left lung') && document.body.innerText.includes('Right lung')",
        timeout=VIEWER_TIMEOUT_S,
        what="the segment labels in the segmentation panel",
    )
    assert_no_error_screen(study)
    keep_screenshot(browser.screenshot(study.tmp / "ohif-seg-panel.png"))
