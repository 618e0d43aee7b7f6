"""Reading image files: only allowed raster formats (never Ghostscript), a pixel limit, exact RGB for every mode."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data.images import MAX_IMAGE_PIXELS, UnreadableImage, decode_image
from ccn.errors import CCNError, DataError
from ccn.predict import read_image

# A complete EPS file: Pillow identifies it by content and renders it by running Ghostscript.
POSTSCRIPT = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
newpath 0 0 moveto 8 8 lineto stroke
showpage
%%EOF
"""


@pytest.fixture
def ghostscript_calls(monkeypatch):
    """Records every attempt to render with Ghostscript (it is not installed here, so nothing would run anyway)."""
    calls = []

    def fake_ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript would have run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake_ghostscript)
    return calls


def test_postscript_named_jpg_is_refused_and_never_rendered(tmp_path, ghostscript_calls):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(POSTSCRIPT)
    with Image.open(fake) as image, pytest.raises(OSError):  # the threat is real: plain Pillow takes it for EPS
        assert image.format == "EPS"
        image.load()
    assert len(ghostscript_calls) == 1
    with pytest.raises(UnreadableImage, match=r"photo.jpg \(not a JPEG, PNG, BMP, GIF, TIFF, WebP or PPM"):
        decode_image(fake, 8)
    with pytest.raises(CCNError, match="photo.jpg .*not a JPEG.*pass a JPEG") as err:  # ccn predict's reader
        read_image(fake, 8)
    assert "skip_bad_images" not in str(err.value)  # that advice is for training folders
    assert len(ghostscript_calls) == 1


def test_postscript_in_a_training_folder_is_refused_or_skipped(tmp_path, ghostscript_calls):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / split / cls / "ok.png")
    (tmp_path / "train" / "a" / "page.eps").write_bytes(POSTSCRIPT)  # not an allowed extension: not listed
    (tmp_path / "train" / "a" / "evil.jpg").write_bytes(POSTSCRIPT)
    cfg = dict(name="folder", root=str(tmp_path), image_size=4)
    with pytest.raises(DataError, match="evil.jpg .*not a JPEG.*skip_bad_images"):
        load_dataset(DataConfig(**cfg))
    with pytest.warns(UserWarning, match="skipped: cannot read image .*evil.jpg"):
        ds = load_dataset(DataConfig(**cfg, skip_bad_images=True))
    assert len(ds.train_labels) == 2 and ghostscript_calls == []


def _over_white(colour, alpha):
    return [round(c * alpha / 255 + 255 * (1 - alpha / 255)) for c in colour]


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1  # palette entry 1 is fully transparent
    return image


def _cases():
    """(name, image, file suffix, mode it must reopen as, expected RGB of its two pixels)."""
    u16 = Image.fromarray(np.array([[51400, 65535]], dtype=np.uint16))
    i32 = Image.fromarray(np.array([[25700, -5]], dtype=np.int32))
    f32 = Image.fromarray(np.array([[0.25, 7.0]], dtype=np.float32))
    one = Image.fromarray(np.array([[False, True]]))
    return [
        ("L", Image.fromarray(np.array([[200, 3]], dtype=np.uint8)), ".png", "L", [[200] * 3, [3] * 3]),
        ("LA", Image.fromarray(np.array([[[100, 64], [7, 255]]], dtype=np.uint8), "LA"), ".png", "LA",
         [_over_white([100] * 3, 64), [7] * 3]),
        ("P+transparency", _palette_with_transparency(), ".png", "P", [[10, 20, 30], [255, 255, 255]]),
        ("P+transparency gif", _palette_with_transparency(), ".gif", "P", [[10, 20, 30], [255, 255, 255]]),
        ("RGBA", Image.fromarray(np.array([[[200, 100, 0, 128], [1, 2, 3, 255]]], dtype=np.uint8), "RGBA"), ".png",
         "RGBA", [_over_white([200, 100, 0], 128), [1, 2, 3]]),
        ("CMYK", Image.fromarray(np.array([[[0, 255, 0, 0], [51, 0, 0, 102]]], dtype=np.uint8), "CMYK"), ".tif",
         "CMYK", [[255, 0, 255], [round(153 * 204 / 255), 153, 153]]),
        ("I;16", u16, ".png", "I;16", [[200] * 3, [255] * 3]),
        ("I", i32, ".tif", "I", [[100] * 3, [0] * 3]),
        ("F", f32, ".tif", "F", [[64] * 3, [255] * 3]),
        ("1", one, ".png", "1", [[0] * 3, [255] * 3]),
        ("RGB bmp", Image.fromarray(np.array([[[1, 2, 3], [250, 128, 0]]], dtype=np.uint8)), ".bmp", "RGB",
         [[1, 2, 3], [250, 128, 0]]),
        ("RGB webp", Image.new("RGB", (2, 1), (40, 80, 120)), ".webp", "RGB", [[40, 80, 120]] * 2),
        ("L pgm", Image.fromarray(np.array([[17, 240]], dtype=np.uint8)), ".pgm", "L", [[17] * 3, [240] * 3]),
    ]


@pytest.mark.parametrize("name,image,suffix,mode,expected", _cases(), ids=[c[0] for c in _cases()])
def test_every_mode_decodes_to_the_rgb_a_viewer_shows(tmp_path, name, image, suffix, mode, expected):
    path = tmp_path / f"x{suffix}"
    image.save(path, lossless=True) if suffix == ".webp" else image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode  # the file really holds the mode under test
    rgb = decode_image(path, size=2)[:1, :].reshape(-1, 3)[[0, 1]]  # 2 x 2 from 2 x 1: row 0 is the original
    assert np.abs(rgb.astype(int) - np.array(expected)).max() <= 1, rgb.tolist()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in 70 bytes: Pillow reads the header only when opening."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(9000, 8000),     # above ccn's limit, below Pillow's warning
                                          (10000, 9500),    # Pillow would warn (DecompressionBombWarning)
                                          (20000, 20000)])  # Pillow would raise DecompressionBombError
def test_decompression_bomb_is_refused_before_decoding(tmp_path, width, height):
    assert width * height > MAX_IMAGE_PIXELS
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may escape either
        with pytest.raises(UnreadableImage, match=r"bomb.png \(.*more than the limit of 67,108,864"):
            decode_image(bomb, 8)


def test_decompression_bomb_in_a_folder_is_skipped_with_skip_bad_images(tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / cls / "ok.png")
    (tmp_path / "train" / "b" / "bomb.png").write_bytes(_png_header(20000, 20000))
    with pytest.raises(DataError, match="bomb.png .*more than the limit.*skip_bad_images=true"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=4, skip_bad_images=True))
    assert len(ds.train_labels) == 2
    assert [str(w.message) for w in caught if "bomb.png" in str(w.message)]
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_folder_given_as_an_image_is_named_as_a_folder(tmp_path):
    with pytest.raises(CCNError, match="is a folder, not an image file"):
        read_image(tmp_path, 8)
    with pytest.raises(CCNError, match="does not exist"):
        read_image(tmp_path / "nope.png", 8)


def test_files_and_folders_mixed_up(tmp_path):
    from ccn.runs import load_run, resume_run_dir
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="data.root .*file is a file, not a folder"):
        load_dataset(DataConfig(name="folder", root=str(a_file)))
    with pytest.raises(CCNError, match="is a file, not a run folder"):
        load_run(a_file)
    with pytest.raises(CCNError, match="is a file, not a run folder"):
        resume_run_dir(a_file)


def test_an_empty_file_is_named_empty(tmp_path):
    """A 0-byte file was called 'not a JPEG, PNG, ... file', which sends one looking at its format."""
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(CCNError) as err:  # ccn predict's reader
        read_image(empty, 8)
    assert str(err.value) == f"cannot read image {empty} (the file is empty, 0 bytes): pass a JPEG, PNG, BMP, GIF, " \
                             "TIFF, WebP or PPM/PGM/PBM image"
    with pytest.raises(UnreadableImage, match=r"empty.png \(the file is empty, 0 bytes\)"):  # training folders too
        decode_image(empty, 8)


def test_exif_orientation_is_not_applied(tmp_path):
    """Pixels are read as stored, whatever the EXIF orientation tag says (a viewer would rotate an image
    tagged 6 by 90 degrees): training, evaluation and ccn predict all see the same stored pixels."""
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)  # left half red, right half blue: wider than tall as stored
    pixels[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    Image.fromarray(pixels).save(path, exif=exif)
    with Image.open(path) as image:
        assert image.getexif()[0x0112] == 6
    decoded = decode_image(path, 16)  # stretched to 16 x 16: the stored layout keeps red on the left
    assert decoded[:, :6, 0].min() > 200 and decoded[:, 10:, 2].min() > 200
    assert (read_image(path, 16) == decoded).all()
