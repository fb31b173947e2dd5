"""JPEG encoding of the images sent to the VLM and of benchmark frames."""
from __future__ import annotations

import os

import cv2
import numpy as np

from refsav.schemas.errors import SchemaError
from refsav.schemas.io import atomic_path


def encode_jpeg(bgr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image (OpenCV's order, as `highlight` returns)."""
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image as JPEG")
    return data.tobytes()


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> None:
    """An RGB frame as a JPEG file, written atomically (a reader never sees half a file)."""
    try:
        data = encode_jpeg(np.ascontiguousarray(rgb[:, :, ::-1]), quality)
    except RuntimeError as err:
        raise SchemaError(str(err), file=path) from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
