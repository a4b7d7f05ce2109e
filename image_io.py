"""How one file becomes a uint8 HxWx3 array.

The one decode path of training, evaluation and prediction, so an image
looks the same to the model in all three (`load_image`):
- JPEG, PNG, GIF and BMP files that TensorFlow decodes correctly take the
  fast native path (tf.io.decode_image).
- Everything else is read in Python by Pillow, in parallel inside tf.data:
  TIFF, WebP and other formats; CMYK JPEGs; images with an EXIF orientation
  (turned upright); images with transparency (composited on white,
  ALPHA_BACKGROUND); 16-bit TIFFs (scaled by bit depth: 65535 -> 255);
  the palette and 1-bit BMPs TensorFlow gets wrong.
- Custom readers, {extension: function(path) -> uint8 HxWxC array}, read
  formats nobody else does (.npy arrays, DICOM, ...); see `load_readers`.

Which decoder a file needs is decided from its first bytes and header
(`sniff_format`, `choose_decoder`), never from its extension. This module
imports nothing else from the project but safe_text (how a name is
printed): it can be read, tested and reused on its own.
"""

import functools
import hashlib
import importlib
import os
import re
import stat
import sys
import types

import numpy as np

import safe_text

# Transparent pixels are composited on this colour (white): most transparent
# images in classification data are cut-outs, logos and icons meant for a
# light page. A documented constant, so training and prediction agree.
ALPHA_BACKGROUND = (255, 255, 255)


# (format, Pillow mode) pairs whose tf.io.decode_image result was checked
# against Pillow (see tests/test_audit.py): e.g. TensorFlow turns 8-bit
# palette BMPs black and ignores alpha, so those stay in Python.
NATIVE_MODES = {
    "JPEG": ("L", "RGB"),
    "MPO": ("L", "RGB"),  # multi-picture JPEGs from cameras: TF reads the first
    "PNG": ("1", "L", "P", "RGB", "I;16", "I;16B", "I"),
    "GIF": ("L", "P"),
    "BMP": ("RGB",),
}


# The raster formats Pillow may open. Leaves out those whose reading runs
# other programs (EPS runs Ghostscript) or that are not images (MPEG, WMF).
PILLOW_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "BMP",
    "DIB",
    "WEBP",
    "TIFF",
    "AVIF",
    "JPEG2000",
    "PSD",
    "ICO",
    "CUR",
    "ICNS",
    "TGA",
    "PPM",
    "SGI",
    "QOI",
    "DDS",
    "PCX",
)


EXIF_ORIENTATION = 0x0112


def file_extension(name):
    return os.path.splitext(name)[1].lower()


def display_path(path):
    """`path` (or a class name) printable as UTF-8 on a terminal even when
    the file name is not valid UTF-8 or holds control characters (an ESC
    sequence prints as \\x1b[2J, it never clears the screen):
    safe_text.terminal."""
    return safe_text.terminal(path)


def error_text(error):
    """An exception as one short line (TensorFlow's op names removed)."""
    text = str(error).strip() or type(error).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\]( name: )?$", "", text)
    return text.splitlines()[-1][:200] if text else type(error).__name__


class ReaderError(ValueError):
    """A `--reader` spec that cannot be turned into a function: the caller
    reports it as the user's mistake."""


def describe_reader(function):
    """'FILE_OR_MODULE:FUNCTION' naming a reader, for messages and the cache."""
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    where = getattr(module, "__file__", None) or getattr(function, "__module__", "?")
    return f"{where}:{getattr(function, '__qualname__', repr(function))}"


def _load_module_from_file(path):
    """Imports a Python file as a module without writing bytecode next to
    it (it may sit inside a dataset folder, which is never written)."""
    real = os.path.realpath(path)
    name = "reader_" + hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    with open(real, encoding="utf-8") as handle:
        source = handle.read()
    module = types.ModuleType(name)
    module.__file__ = real
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        exec(compile(source, real, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _load_reader(spec):
    extension, _, target = spec.partition("=")
    location, _, function_name = target.rpartition(":")
    extension = "." + extension.strip().lower().lstrip(".")
    if extension == "." or not location or not function_name:
        raise ReaderError(
            "reader must be EXT=FILE.py:FUNCTION or EXT=MODULE:FUNCTION, e.g. "
            f"npy=my_readers.py:read_npy. Received: reader={spec}"
        )
    try:
        if location.endswith(".py") or os.sep in location:
            if not os.path.isfile(location):
                raise ReaderError(f"reader file not found. Received: reader={spec}")
            module = _load_module_from_file(location)
        else:
            module = importlib.import_module(location)
    except ReaderError:
        raise
    except Exception as error:  # the user's code: report it in one line
        raise ReaderError(f"cannot load reader {spec}: {type(error).__name__}: {error}")
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ReaderError(f"reader {spec}: {location} has no function {function_name}")
    return extension, function


def load_readers(specs):
    """Custom readers from command-line specs (`--reader`).

    Each spec is `EXT=FILE.py:FUNCTION` or `EXT=MODULE:FUNCTION`; the
    function takes a file path and returns a uint8 numpy array HxW or HxWxC
    (C = 1, 3 or 4). Returns {".ext": function}. A registered extension
    takes precedence over the built-in decoders. Raises ReaderError.
    """
    return dict(_load_reader(spec) for spec in specs or ())


def normalize_readers(readers):
    return {
        "." + extension.lower().lstrip("."): function
        for extension, function in (readers or {}).items()
    }


def as_rgb_uint8(array, source="reader"):
    """A reader's output as a uint8 HxWx3 array: gray is repeated, alpha is
    composited on ALPHA_BACKGROUND. Raises ValueError for anything that is
    not a uint8 HxW or HxWxC (C = 1, 3, 4) array."""
    if not isinstance(array, np.ndarray):
        raise ValueError(
            f"{source} returned {type(array).__name__}, expected a uint8 numpy array HxWxC"
        )
    if array.dtype != np.uint8:
        raise ValueError(
            f"{source} returned dtype {array.dtype}, expected uint8 (scale to 0-255 in the reader)"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape:
        raise ValueError(
            f"{source} returned shape {array.shape}, expected HxW or HxWxC with C = 1, 3 or 4"
        )
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = composite_on_background(array)
    return np.ascontiguousarray(array)


class NotRegularFileError(OSError):
    """A path that is not a regular file (a FIFO, socket, device or folder):
    never read."""


def _file_kind(mode):
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def open_regular_file(path):
    """Opens a regular file (links followed) for binary reading.

    Anything else raises NotRegularFileError before it is read: opening a
    FIFO waits for a writer forever, and a device may never end. The file
    is opened non-blocking and checked again, in case it was swapped for a
    FIFO in between. Raises OSError when it cannot be opened.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(f"not a regular file ({_file_kind(mode)})")
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"not a regular file ({_file_kind(mode)})")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


class TooLargeError(ValueError):
    """An image over Pillow's decompression-bomb limit: never decoded."""


def sniff_format(head):
    """What the first bytes of a file say it is: ("image", Pillow format id
    or name), ("other", what it is), or (None, None) when unrecognised."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image", "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image", "GIF"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in (
        12,
        16,
        40,
        52,
        56,
        64,
        108,
        124,
    ):
        return "image", "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image", "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "image", "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "image", "AVIF"
    if head[4:8] == b"ftyp" and head[8:12] in (
        b"heic",
        b"heix",
        b"hevc",
        b"hevx",
        b"heim",
        b"heis",
        b"mif1",
        b"msf1",
    ):
        return "image", "HEIF"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xffO\xffQ")):
        return "image", "JPEG2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "image", "JPEG XL"
    if head[:4] == b"8BPS":
        return "image", "PSD"
    if head[128:132] == b"DICM":
        return "image", "DICOM"
    return _sniff_other(head)


def _sniff_other(head):
    lowered = head.lstrip().lower()
    known = (
        (b"%PDF", "PDF document"),
        (b"PK\x03\x04", "ZIP archive"),
        (b"\x1f\x8b", "gzip archive"),
        (b"\x93NUMPY", "NumPy array (register a reader for it)"),
    )
    for magic, name in known:
        if head.startswith(magic):
            return "other", name
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<html" in lowered[:512]:
        return "other", "HTML page (often a failed download)"
    if b"<svg" in lowered[:512]:
        return "other", "SVG vector drawing"
    if head and b"\x00" not in head:
        printable = sum(byte >= 32 or byte in b"\t\n\r" for byte in head)
        if printable >= 0.95 * len(head):
            return "other", "text file"
    return None, None


def pillow_can_open(format_name):
    from PIL import Image

    Image.init()
    return format_name in PILLOW_FORMATS and format_name in Image.OPEN


def open_image(source):
    """Opens an image with Pillow, reading only its header.

    Raises TooLargeError when width x height is over Pillow's
    decompression-bomb limit (Image.MAX_IMAGE_PIXELS), before any pixel is
    decoded; Pillow's own errors for files it cannot identify.
    """
    from PIL import Image

    Image.init()
    formats = [name for name in PILLOW_FORMATS if name in Image.OPEN]
    try:
        image = Image.open(source, formats=formats)
    except Image.DecompressionBombError as error:  # over twice the limit
        match = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(match.group(1)) if match else 0
        raise TooLargeError(_too_large_reason(pixels, Image.MAX_IMAGE_PIXELS, None))
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise TooLargeError(_too_large_reason(width * height, limit, image.size))
    return image


def _too_large_reason(pixels, limit, size):
    dimensions = f"{size[0]}x{size[1]} = " if size else ""
    return (
        f"too large: {dimensions}{pixels:,} pixels, over Pillow's decompression-bomb "
        f"limit of {limit:,} (not decoded)"
    )


def header_orientation(image):
    """The EXIF orientation (1-8) from an opened image's header, or None.

    Read before decoding, identically for routing and reading: a PNG's EXIF
    is only looked for ahead of the pixel data (finding a later one would
    mean decoding the whole file), so both always agree.
    """
    if image.format == "PNG" and "exif" not in image.info:
        return None
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block: treat as no orientation
        return None


def has_transparency(image):
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _plain_bmp(head):
    """Whether a BMP is uncompressed 24- or 32-bit, the kind TensorFlow reads."""
    header_size = int.from_bytes(head[14:18], "little")
    if header_size == 12:
        return int.from_bytes(head[24:26], "little") == 24
    bits = int.from_bytes(head[28:30], "little")
    compression = int.from_bytes(head[30:34], "little")
    return bits in (24, 32) and compression == 0


def choose_decoder(image, head):
    """("native" or "pillow", why) for an image opened by `open_image`,
    from its header only. Native only where tf.io.decode_image is known to
    give the right pixels; `why` says what sends a file to Pillow."""
    orientation = header_orientation(image)
    if orientation not in (None, 1):
        return "pillow", "EXIF rotation"
    if has_transparency(image):
        return "pillow", "transparency"
    if image.format not in NATIVE_MODES:
        return "pillow", image.format
    if image.mode not in NATIVE_MODES[image.format]:
        return "pillow", f"{image.mode} {image.format}"
    if image.format == "BMP" and not _plain_bmp(head):
        return "pillow", "compressed or palette BMP"
    return "native", ""


def probe_decoder(path, readers=None):
    """The decoder for one file, from its extension (custom readers) or its
    header: what the audit would choose, without decoding anything. Raises
    OSError, TooLargeError or Pillow's errors for files that are not images."""
    readers = normalize_readers(readers)
    extension = file_extension(path)
    if extension in readers:
        return extension
    with open_regular_file(path) as handle:
        head = handle.read(64)
        handle.seek(0)
        return choose_decoder(open_image(handle), head)[0]


def composite_on_background(rgba, background=ALPHA_BACKGROUND):
    """uint8 HxWx4 -> HxWx3, each pixel blended with `background` by alpha."""
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    colour = rgba[:, :, :3].astype(np.uint32)
    back = np.array(background, np.uint32)
    return ((colour * alpha + back * (255 - alpha) + 127) // 255).astype(np.uint8)


def _bits_per_sample(image):
    if image.mode.startswith("I;16"):
        return 16
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0]
    return bits if bits in (8, 16, 32) else 16  # PNG/PPM high-bit gray is 16-bit


def scale_to_uint8(image):
    """A high-bit-depth gray image (I;16, I, F) as uint8, scaled by its bit
    depth so that the brightest value is 255 (65535 -> 255, not clipped);
    floating point images are taken as 0-1."""
    pixels = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        scaled = pixels.astype(np.float64) * (255.0 / (2 ** _bits_per_sample(image) - 1))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb_array(image):
    """Any decoded Pillow image as a uint8 HxWx3 array (see module doc)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return np.repeat(scale_to_uint8(image)[:, :, None], 3, axis=2)
    if has_transparency(image):
        return composite_on_background(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))


def decode_with_pillow(image):
    """Decodes an image opened by `open_image` to a uint8 HxWx3 array: the
    first frame, turned upright by its EXIF orientation, in RGB."""
    from PIL import ImageOps

    orientation = header_orientation(image)  # before load(), as when routing
    image.load()
    if orientation not in (None, 1):
        # Pillow's own table of the 8 orientations; only when the header
        # said so, so a PNG's late EXIF never turns a file the audit routed
        # as upright.
        image = ImageOps.exif_transpose(image)
    return to_rgb_array(image)


def read_with_pillow(path):
    """The built-in Python reader: any format Pillow reads (TIFF, WebP, CMYK
    JPEG, 16-bit, palette, ...) as a uint8 HxWx3 array (see module doc).
    Raises TooLargeError for decompression bombs, Pillow's errors otherwise."""
    with open_regular_file(path) as handle:
        return decode_with_pillow(open_image(handle))


def decode_native(data):
    """TensorFlow's decoder: encoded JPEG/PNG/GIF/BMP bytes (a string
    tensor) -> uint8 (height, width, 3), the first frame of a GIF."""
    import tensorflow as tf

    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _text(value):
    """A string from what tf.numpy_function passes (bytes, or a 0-d array)."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _eager_text(path):
    """A path given as a str, os.PathLike or an eager string tensor, as a str."""
    return path.numpy().decode("utf-8") if hasattr(path, "numpy") else os.fspath(path)


def _probe_in_graph(path, readers):
    """numpy_function body: path -> its decoder's name as bytes."""
    return probe_decoder(_text(path), readers).encode("utf-8")


def _decode_in_python(path, decoder, readers):
    """numpy_function body: path + decoder name -> uint8 HxWx3."""
    path, decoder = _text(path), _text(decoder)
    if decoder == "pillow":
        return read_with_pillow(path)
    if decoder in readers:
        return as_rgb_uint8(readers[decoder](path), f"reader {describe_reader(readers[decoder])}")
    raise ValueError(f"no reader registered for {decoder} (file {path})")


def decode_in_python(path, decoder, readers=None):
    """A graph op reading one file in Python (Pillow or a custom reader):
    string tensors in, uint8 (height, width, 3) out. tf.data runs several
    at once (num_parallel_calls); Pillow and NumPy release the GIL while
    decoding."""
    import tensorflow as tf

    function = functools.partial(_decode_in_python, readers=normalize_readers(readers))
    inputs = [tf.convert_to_tensor(path, tf.string), tf.convert_to_tensor(decoder, tf.string)]
    image = tf.numpy_function(function, inputs, tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def decode_file(path, decoder=None, readers=None):
    """Reads and decodes one image file to uint8 (height, width, 3).

    `decoder`: "native", "pillow" or a custom reader's extension (from the
    audit, see DatasetIndex.decoders), a string tensor of those, or None:
    the file's header decides (`probe_decoder`, as the audit would), read
    eagerly or, inside a graph, by a small Python op per file.
    """
    import tensorflow as tf

    if decoder is None:
        if tf.executing_eagerly():
            decoder = probe_decoder(_eager_text(path), readers)
        else:  # the header is read in Python, then the same branches
            probe = functools.partial(_probe_in_graph, readers=normalize_readers(readers))
            decoder = tf.numpy_function(
                probe, [tf.convert_to_tensor(path, tf.string)], tf.string, stateful=False
            )
    if isinstance(decoder, str):
        if decoder == "native":
            return decode_native(tf.io.read_file(path))
        if tf.executing_eagerly():
            # The same Python body, called as it is: a tf.numpy_function,
            # even an eager one, registers its function with TensorFlow's
            # global graph for as long as the process lives, a few KB per
            # file that a server answering for days never gets back.
            image = _decode_in_python(_eager_text(path), decoder, normalize_readers(readers))
            return tf.convert_to_tensor(image, tf.uint8)
        return decode_in_python(path, tf.constant(decoder), readers)
    return tf.cond(
        tf.equal(decoder, "native"),
        lambda: decode_native(tf.io.read_file(path)),
        lambda: decode_in_python(path, decoder, readers),
    )


def load_image(path, image_size, decoder=None, readers=None):
    """Reads one image file as the model sees it: uint8 (size, size, 3).

    The one decode function of training, evaluation and prediction, so an
    image looks the same in all three: the first frame, upright by its EXIF
    orientation, RGB, transparency on white, 16-bit scaled by bit depth,
    then resized (bilinear). `decoder` and `readers` as in `decode_file`.
    """
    import tensorflow as tf

    image = decode_file(path, decoder, readers)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def load_images(paths, image_size, readers=None):
    """Reads image files one by one, eagerly, by load_image: (positions in
    `paths` of the files read, int; uint8 (read, size, size, 3)). A file
    that cannot be read or decoded is left out, not fatal, as
    data_loader.prediction_dataset leaves it out.

    For a few files at a time, again and again (the web page's uploads):
    no tf.data pipeline is built and no graph traced, each of which
    TensorFlow keeps a little of until the process ends. A large set of
    files reads faster through prediction_dataset (in parallel).
    """
    positions, images = [], []
    for position, path in enumerate(paths):
        try:
            image = load_image(path, image_size, readers=readers).numpy()
        except Exception:  # noqa: BLE001 - whatever a file or a custom reader raises, as the pipeline's ignore_errors
            continue
        positions.append(position)
        images.append(image)
    stacked = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return np.asarray(positions, int), stacked
