"""Reading one image file safely: an allow-list of raster formats, a pixel limit, exact RGB.

Pillow picks a decoder from a file's content, not its name, and some of its decoders hand the
file to another program (EPS and PostScript run Ghostscript). So every image ccn reads is opened
with `formats=ALLOWED_FORMATS`: a PostScript file named `.jpg` is refused, never rendered.

A small file can describe an enormous image (a decompression bomb); the size in its header is
checked against MAX_IMAGE_PIXELS before any pixel is decoded.

Every mode Pillow opens becomes 8-bit RGB with the values a viewer would show:
    16- and 32-bit integer images (I;16*, I)  are read as 16-bit: value / 257
    floating-point images (F)                 are read as 0..1: value * 255 (clipped)
    transparent pixels (RGBA, LA, PA, P or L/RGB with a transparent colour) are shown over white
    CMYK, 1, L, P, YCbCr                      Pillow's own conversion to RGB
The pixels are taken as stored: an EXIF orientation tag is not applied (a viewer would turn a photo
tagged "rotate 90" upright), so training, evaluation and `ccn predict` all see the same stored layout.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from struct import error as struct_error  # raised by some decoders on short files

import numpy as np
from PIL import Image, UnidentifiedImageError

from ccn.errors import DataError
from ccn.files import UnsafeFile, read_regular_bytes

# Pillow's names; the JPEG decoder also reads MPO (multi-picture JPEG), PPM also PGM, PBM and PFM.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
ALLOWED_NAMES = "JPEG, PNG, BMP, GIF, TIFF, WebP or PPM/PGM/PBM"
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # 8192 x 8192; Caltech-101's largest image has 14 M pixels
MAX_IMAGE_FILE_BYTES = 512 * 2**20  # an image file is read whole before decoding; no photo is near this
BACKGROUND = (255, 255, 255, 255)  # transparent pixels are shown over white
_HIGH_BIT_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")


BAD_IMAGE_FIX = "remove or replace it, or set data.skip_bad_images=true"  # the fix a run that stops on one names


class UnreadableImage(DataError):
    """`cannot read image PATH (why)`; callers add the fix that fits them (skip it, replace it ...)."""


def image_extensions() -> set[str]:
    """File name endings of the allowed formats (.jpg, .png, .tif, .pgm ...), lower case."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in ALLOWED_FORMATS + ("MPO",)}


def _too_large(path: Path, pixels: str) -> UnreadableImage:
    return UnreadableImage(f"cannot read image {path} ({pixels} pixels, more than the limit of {MAX_IMAGE_PIXELS:,}: "
                           "it may be a decompression bomb; downscale it if it is a real photo)")


def open_image(path: Path) -> Image.Image:
    """The image at `path`, opened (header read, no pixels decoded) by an allowed decoder only."""
    try:
        # read as a regular file within a limit (ccn.files): a FIFO swapped in, a device or a /proc file
        # that blocks (/proc/kmsg) is one line, never a hang; Pillow then decodes the bytes
        data = read_regular_bytes(path, MAX_IMAGE_FILE_BYTES, "image")
    except UnsafeFile as err:
        raise UnreadableImage(f"cannot read image {path} ({err.problem})") from None
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning becomes our error below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(path, f"more than {Image.MAX_IMAGE_PIXELS:,}") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"cannot read image {path} ({_unidentified(path)})") from None
    except OSError as err:
        raise UnreadableImage(f"cannot read image {path} ({err.strerror or err})") from None
    except (SyntaxError, ValueError, struct_error) as err:
        raise UnreadableImage(f"cannot read image {path} ({err})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_large(path, f"{width} x {height} = {width * height:,}")
    return image


def _unidentified(path: Path) -> str:
    """Why Pillow found no allowed decoder for `path`: an empty file is named as such (looked up only then)."""
    try:
        if Path(path).stat().st_size == 0:
            return "the file is empty, 0 bytes"
    except OSError:
        pass
    return f"not a {ALLOWED_NAMES} file"


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the colours a viewer shows (see the module notes for each mode; no EXIF rotation)."""
    if image.mode in _HIGH_BIT_DEPTH:
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        image = Image.fromarray(np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8))
    if image.has_transparency_data:
        return Image.alpha_composite(Image.new("RGBA", image.size, BACKGROUND), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def fit_square(rgb: Image.Image, size: int, fit: str = "stretch") -> Image.Image:
    """An RGB image as the size x size square `fit` makes of it (see decode_image)."""
    return resize_centre_square(rgb, size) if fit == "centre_crop" else rgb.resize((size, size), Image.BILINEAR)


def resize_centre_square(image: Image.Image, size: int) -> Image.Image:
    """The shorter side resized to `size` (the longer to int(size * long / short)), then the centred
    size x size square: torchvision's Resize(size) + CenterCrop(size) on a PIL image, pixel for pixel."""
    width, height = image.size
    new = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    image = image.resize(new, Image.BILINEAR)
    left, top = int(round((new[0] - size) / 2)), int(round((new[1] - size) / 2))
    return image.crop((left, top, left + size, top + size))


def decode_image(path: Path, size: int, fit: str = "stretch") -> np.ndarray:
    """One image as (size, size, 3) uint8; UnreadableImage naming the file when it cannot be read.

    fit="stretch" resizes the whole image to size x size (aspect ratio not kept: small data sets,
    where every pixel counts); fit="centre_crop" resizes the shorter side to `size` and keeps the
    centred square (ImageNet's evaluation resize, ours for its store: see ccn.data.imagenet)."""
    path = Path(path)
    with open_image(path) as image, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # some decoders check frames again
        try:
            image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale, much faster
            return np.asarray(fit_square(to_rgb(image), size, fit), dtype=np.uint8)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_large(path, f"more than {Image.MAX_IMAGE_PIXELS:,}") from None
        except (OSError, SyntaxError, ValueError, struct_error, EOFError) as err:
            raise UnreadableImage(f"cannot read image {path} ({err})") from None

