"""DICOM pixel data -> model input: every encoding of one phantom gives the same image."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.processing.pixels import model_input
from training.dicom_export import CR_IMAGE, RadiographIdentity, radiograph_dataset
from training.phantoms import generate_phantom

ATOL = 2.0e-3  # a few 12-bit quantisation steps


@pytest.fixture(scope="module")
def phantom_image() -> np.ndarray:
    """A phantom stretched to span exactly [0, 1], so min/max scaling is the identity."""
    image = generate_phantom(96, seed=11).image.astype(np.float64)
    return ((image - image.min()) / (image.max() - image.min())).astype(np.float32)


def _reread(ds: Dataset) -> Dataset:
    """Round trip through bytes, as the worker reads a spooled file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _dx(image: np.ndarray, **kwargs: object) -> Dataset:
    return radiograph_dataset(image, RadiographIdentity.new(), **kwargs)  # type: ignore[arg-type]


def _stored(image: np.ndarray, bits: int = 12) -> np.ndarray:
    return np.rint(image * ((1 << bits) - 1)).astype(np.int64)


def _set_pixels(ds: Dataset, stored: np.ndarray, *, bits_stored: int, signed: bool = False) -> None:
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()


def _strip_voi(ds: Dataset) -> Dataset:
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def test_monochrome2_dx_with_full_window_is_the_phantom(phantom_image: np.ndarray) -> None:
    result = model_input(_reread(_dx(phantom_image)))
    assert result.image.dtype == np.float32 and result.image.shape == phantom_image.shape
    np.testing.assert_allclose(result.image, phantom_image, atol=ATOL)
    assert result.view_position == "PA"


def test_monochrome1_gives_the_same_input_as_monochrome2(phantom_image: np.ndarray) -> None:
    mono1 = _reread(_dx(phantom_image, photometric_interpretation="MONOCHROME1"))
    assert mono1.PresentationLUTShape == "INVERSE"  # DX rule: MONOCHROME1 carries INVERSE
    stored = mono1.pixel_array.astype(np.float64) / 4095
    assert np.corrcoef(stored.ravel(), phantom_image.ravel())[0, 1] < -0.99  # stored inverted
    np.testing.assert_allclose(model_input(mono1).image, phantom_image, atol=ATOL)
    assert any("MONOCHROME1" in note for note in model_input(mono1).notes)


def test_monochrome1_cr_without_presentation_lut_is_inverted_once(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image, modality="CR", sop_class_uid=CR_IMAGE, photometric_interpretation="MONOCHROME1")
    assert "PresentationLUTShape" not in ds
    np.testing.assert_allclose(model_input(_reread(ds)).image, phantom_image, atol=ATOL)


def test_presentation_lut_shape_inverse_on_monochrome2_inverts(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    ds.PresentationLUTShape = "INVERSE"
    np.testing.assert_allclose(model_input(_reread(ds)).image, 1.0 - phantom_image, atol=ATOL)


def test_rescale_with_window_in_modality_units_gives_the_same_input(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -4096  # modality values -4096 .. 4094
    ds.WindowCenter, ds.WindowWidth = 0, 8192
    np.testing.assert_allclose(model_input(_reread(ds)).image, phantom_image, atol=ATOL)


def test_rescale_without_window_is_scaled_by_min_and_max(phantom_image: np.ndarray) -> None:
    ds = _strip_voi(_dx(phantom_image))
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, 100
    result = model_input(_reread(ds))
    np.testing.assert_allclose(result.image, phantom_image, atol=ATOL)
    assert any("minimum and maximum" in note for note in result.notes)


def test_sixteen_bit_storage_gives_the_same_input_as_twelve_bit(phantom_image: np.ndarray) -> None:
    twelve = model_input(_reread(_dx(phantom_image, bits_stored=12))).image
    sixteen = model_input(_reread(_dx(phantom_image, bits_stored=16))).image
    np.testing.assert_allclose(sixteen, twelve, atol=ATOL)


def test_signed_pixels_with_a_window_in_stored_units(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        delattr(ds, keyword)
    _set_pixels(ds, _stored(phantom_image) - 2048, bits_stored=12, signed=True)
    ds.WindowCenter, ds.WindowWidth = 0, 4096
    np.testing.assert_allclose(model_input(_reread(ds)).image, phantom_image, atol=ATOL)


def test_narrow_linear_window_clips_outside_and_stretches_inside(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    ds.WindowCenter, ds.WindowWidth = 2048, 2048  # values 1024..3072 span the output
    ds.VOILUTFunction = "LINEAR_EXACT"
    expected = np.clip((_stored(phantom_image) - 1024) / 2048, 0, 1)
    np.testing.assert_allclose(model_input(_reread(ds)).image, expected, atol=ATOL)


def test_sigmoid_window_follows_the_standard_formula(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    ds.WindowCenter, ds.WindowWidth = 2000, 1500
    ds.VOILUTFunction = "SIGMOID"
    expected = 1.0 / (1.0 + np.exp(-4.0 * (_stored(phantom_image) - 2000) / 1500))
    np.testing.assert_allclose(model_input(_reread(ds)).image, expected, atol=ATOL)


def test_voi_lut_sequence_is_applied_before_any_window(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)  # keeps its window: the LUT must win
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tolist()
    ds.VOILUTSequence = [lut]
    ds["VOILUTSequence"].value[0]["LUTData"].VR = "US"
    expected = np.sqrt(_stored(phantom_image) / 4095)
    np.testing.assert_allclose(model_input(_reread(ds)).image, expected, atol=ATOL)


def test_rgb_secondary_capture_is_reduced_to_luma(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    grey = np.rint(phantom_image * 255).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    _strip_voi(ds)
    ds.PixelData = np.stack([grey] * 3, axis=-1).tobytes()
    np.testing.assert_allclose(model_input(_reread(ds)).image, phantom_image, atol=3e-3)


def test_pixel_spacing_prefers_pixel_spacing_then_corrected_imager_spacing(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image, pixel_spacing_mm=(0.2, 0.25))
    assert model_input(ds).pixel_spacing_mm == pytest.approx((0.2, 0.25))
    del ds.PixelSpacing
    assert model_input(ds).pixel_spacing_mm == pytest.approx((0.2, 0.25))
    ds.EstimatedRadiographicMagnificationFactor = 1.25
    assert model_input(ds).pixel_spacing_mm == pytest.approx((0.16, 0.2))
    del ds.ImagerPixelSpacing
    assert model_input(ds).pixel_spacing_mm is None


def test_instance_without_pixel_data_is_refused_with_the_rule(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    del ds.PixelData
    with pytest.raises(ValueError, match="no Pixel Data"):
        model_input(ds)


def test_palette_colour_is_refused_naming_the_interpretation(phantom_image: np.ndarray) -> None:
    ds = _dx(phantom_image)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(ValueError, match="PALETTE COLOR is not supported"):
        model_input(ds)
