"""Which images are near-copies of each other: perceptual hashes, and the
groups of images that must stay together.

The leak of merged and scraped sets is the same picture saved twice:
another JPEG quality, resized and back, re-exported a few pixels off or a
little brighter, under an unrelated name. The file hashes differ; the
pictures do not.

How (measured in docs/data.md, "Near-duplicates"):
- An image's hash is the 64-bit DCT hash (pHash: the 8x8 lowest
  frequencies of a 32x32 grey thumbnail, each bit above or below their
  median), taken of 9 windows: the middle 90% of the picture and the same
  window moved by 4% of a side in each direction. Two pictures' distance
  is the fewest differing bits between one's middle window and any window
  of the other, so a copy cut 3 px off is compared aligned. (One hash of
  the whole picture puts a shifted texture as far from its copy as from
  another texture.)
- A pair is a near-copy when its distance is at most `max_distance` bits
  and, unless it is nearly identical (at most SURE_DISTANCE bits), also
  less than RATIO times the distance of each image to its
  NEIGHBOURS-th nearest other image: a copy is much closer than the
  images around it. Where every image has close neighbours (handwritten
  digits of one class), only much closer pairs join.
- Groups are the connected pairs. Up to EXACT_LIMIT images every pair is
  compared (in numpy, by blocks); above it, candidate pairs come from
  hash tables on random bit samples (locality-sensitive hashing), so
  100,000 images never compare all pairs.
"""

import numpy as np

HASH_SIZE = 8  # 8x8 DCT coefficients: 64 bits
THUMBNAIL = 32
WINDOW = 0.9  # each hash sees the middle 90% of the picture...
STEP = 0.04  # ...moved by 4% of a side, 3 x 3 windows; the middle one is CENTER
CENTER = 4
WINDOWS = 9
SURE_DISTANCE = 2
RATIO = 0.5
NEIGHBOURS = 8
DEFAULT_DISTANCE = 10
EXACT_LIMIT = 3000
TABLES = 24  # hash tables of the large-folder search, each on SAMPLE_BITS random bits
SAMPLE_BITS = 20
BUCKET_LIMIT = 512  # a bucket this full holds images alike in most bits: they join by SURE pairs
MODES = ("off", "warn", "group")


SIDE = 4 * THUMBNAIL  # the picture is first made a SIDE x SIDE grey square
WINDOW_SIDE = round(WINDOW * SIDE)
SHIFT = round(STEP * SIDE)


def _window_matrix():
    """(HASH_SIZE, WINDOW_SIDE): a window's box average down to THUMBNAIL x
    THUMBNAIL, then the first HASH_SIZE rows of the orthonormal DCT-II, as
    one matrix, so a window's coefficients are M @ window @ M.T."""
    frequencies = np.arange(HASH_SIZE)[:, None]
    samples = np.arange(THUMBNAIL)[None, :]
    dct = np.cos(np.pi * (2 * samples + 1) * frequencies / (2 * THUMBNAIL)) * np.sqrt(2 / THUMBNAIL)
    dct[0] /= np.sqrt(2)
    # Pixel p of the window falls in thumbnail cell p * THUMBNAIL // WINDOW_SIDE.
    cells = np.arange(WINDOW_SIDE) * THUMBNAIL // WINDOW_SIDE
    average = np.zeros((THUMBNAIL, WINDOW_SIDE))
    average[cells, np.arange(WINDOW_SIDE)] = 1
    average /= average.sum(axis=1, keepdims=True)
    return dct @ average


_WINDOW_MATRIX = _window_matrix().astype(np.float32)
FLAT = 2.0  # grey levels: a picture with less spread has no structure to hash


def image_hashes(pixels):
    """The WINDOWS perceptual hashes of one picture (an RGB or grey uint8
    array, or a PIL image), as a tuple of ints; the middle window's is at
    CENTER. () for a flat picture (one colour, give or take FLAT grey
    levels): its bits would be noise, so it is nobody's near-copy (identical
    files are still found by their content)."""
    from PIL import Image

    image = pixels if isinstance(pixels, Image.Image) else _as_image(np.asarray(pixels))
    # Passes over the full picture are Pillow's, in C: a whole-factor
    # reduction first, then grey and the SIDE x SIDE square.
    factor = min(image.size) // SIDE
    if factor > 1:
        image = image.reduce(factor)
    grey = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.BOX), dtype=np.float32)
    if grey.std() < FLAT:
        return ()
    # The 9 windows in small matrix products: the three bands of rows once,
    # then each band's three windows.
    start = (SIDE - WINDOW_SIDE) // 2
    bands = [_WINDOW_MATRIX @ grey[start + row * SHIFT : start + row * SHIFT + WINDOW_SIDE] for row in (-1, 0, 1)]
    coefficients = np.stack([
        band[:, start + column * SHIFT : start + column * SHIFT + WINDOW_SIDE] @ _WINDOW_MATRIX.T
        for band in bands for column in (-1, 0, 1)
    ]).reshape(WINDOWS, -1)
    bits = coefficients > np.median(coefficients, axis=1, keepdims=True)
    return tuple(int(word) for word in np.packbits(bits, axis=1).view(">u8").ravel())


def _as_image(array):
    """A PIL image over a uint8 HxW or HxWx3 array, without a copy."""
    from PIL import Image

    array = np.ascontiguousarray(array.squeeze())
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.frombuffer("RGB", (array.shape[1], array.shape[0]), array, "raw", "RGB", 0, 1)
    return Image.fromarray(array)


def to_text(hashes):
    """The hashes of one picture as one string (16 hex digits each), as the
    audit's cache and a run's seen-images file keep them."""
    return "".join(f"{value:016x}" for value in hashes)


def from_texts(texts):
    """(n, WINDOWS) uint64 array of hashes given as to_text strings."""
    if not len(texts):
        return np.zeros((0, WINDOWS), dtype=np.uint64)
    return np.array(
        [[int(text[16 * window : 16 * (window + 1)], 16) for window in range(WINDOWS)] for text in texts],
        dtype=np.uint64,
    )


def _distances(centers, windows):
    """Bits differing between each center hash and the closest window of
    each other picture: (len(centers), len(windows)) uint8."""
    return np.bitwise_count(centers[:, None, None] ^ windows[None, :, :]).min(axis=-1).astype(np.uint8)


def _all_pairs(hashes, limit, block=256):
    """(first, second, distance) of every pair closer than `limit`, each
    pair once (first < second), comparing all pairs by blocks."""
    count = len(hashes)
    firsts, seconds, distances = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.uint8)]
    for start in range(0, count, block):
        rows = _distances(hashes[start : start + block, CENTER], hashes)
        # Symmetric: the closest of my middle against your windows and yours against mine.
        columns = _distances(hashes[:, CENTER], hashes[start : start + block]).T
        block_distances = np.minimum(rows, columns)
        first, second = np.nonzero(block_distances < limit)
        first += start
        keep = first < second
        firsts.append(first[keep])
        seconds.append(second[keep])
        distances.append(block_distances[first[keep] - start, second[keep]])
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(distances)


def _pair_distances(hashes, first, second):
    """The distance of each pair (first[i], second[i])."""
    return np.minimum(
        np.bitwise_count(hashes[first, CENTER][:, None] ^ hashes[second]).min(axis=1),
        np.bitwise_count(hashes[second, CENTER][:, None] ^ hashes[first]).min(axis=1),
    ).astype(np.uint8)


def _table_pairs(hashes, limit, seed=0):
    """(first, second) pairs (first < second, unique) closer than `limit`
    among the candidates: pictures
    one of whose windows agrees with the other's middle hash on
    SAMPLE_BITS sampled bits, in any of TABLES tables (bit-sampling
    locality-sensitive hashing: a pair d bits apart meets in one table
    with probability about (1 - d/64) ** SAMPLE_BITS)."""
    rng = np.random.default_rng(seed)
    count = len(hashes)
    owners = np.repeat(np.arange(count), WINDOWS)
    found = []
    for _ in range(TABLES):
        mask = np.uint64(sum(1 << int(bit) for bit in rng.choice(64, size=SAMPLE_BITS, replace=False)))
        center_keys = hashes[:, CENTER] & mask
        order = np.argsort(center_keys)
        sorted_keys = center_keys[order]
        # Sorted needles: each binary search starts where the last ended.
        all_window_keys = hashes.ravel() & mask
        window_order = np.argsort(all_window_keys)
        window_keys = all_window_keys[window_order]
        starts = np.searchsorted(sorted_keys, window_keys, side="left")
        sizes = np.searchsorted(sorted_keys, window_keys, side="right") - starts
        sizes[sizes > BUCKET_LIMIT] = 0
        queries = np.repeat(owners[window_order], sizes)
        offsets = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        partners = order[np.repeat(starts, sizes) + offsets]
        first, second = np.minimum(queries, partners), np.maximum(queries, partners)
        keep = first != second
        first, second = first[keep], second[keep]
        distances = _pair_distances(hashes, first, second)
        close = distances < limit
        found.append(first[close].astype(np.int64) * count + second[close])
    pairs = np.unique(np.concatenate(found))
    return pairs // count, pairs % count


def close_pairs(hashes, limit):
    """(first, second, distance) arrays of the pairs of pictures (rows of
    `hashes`, an (n, WINDOWS) uint64 array) closer than `limit` bits: every
    pair up to EXACT_LIMIT pictures, the pairs the hash tables find above."""
    if len(hashes) <= EXACT_LIMIT:
        return _all_pairs(hashes, limit)
    first, second = _table_pairs(hashes, limit)
    return first, second, _pair_distances(hashes, first, second)


def _neighbour_distances(count, first, second, distances, limit):
    """Each picture's distance to its NEIGHBOURS-th nearest other picture
    among the pairs found (`limit` where fewer were found)."""
    nearest = np.full((count, NEIGHBOURS), limit, dtype=np.float64)
    mine = np.concatenate([first, second])
    both = np.concatenate([distances, distances])
    order = np.lexsort((both, mine))
    ranked = mine[order]
    rank = np.arange(len(ranked)) - np.searchsorted(ranked, ranked, side="left")
    keep = rank < NEIGHBOURS
    nearest[ranked[keep], rank[keep]] = both[order][keep]
    return nearest[:, NEIGHBOURS - 1]


def components(count, first, second):
    """The connected components of `count` items joined by the pairs
    (first[i], second[i]): each item's component, named by an item of it."""
    parent = np.arange(count)

    def root(item):
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for one, other in zip(first.tolist(), second.tolist()):
        parent[root(one)] = root(other)
    return np.array([root(item) for item in range(count)])


def near_copy_pairs(hashes, max_distance=DEFAULT_DISTANCE):
    """(first, second, distance) of the pairs the rule calls near-copies
    (see the module's docstring)."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, WINDOWS)
    # Neighbours up to twice the distance decide whether a pair stands out.
    limit = 2 * max_distance + 1
    first, second, distances = close_pairs(hashes, limit)
    reference = _neighbour_distances(len(hashes), first, second, distances, limit)
    joined = (distances <= SURE_DISTANCE) | (
        (distances <= max_distance)
        & (distances < RATIO * reference[first])
        & (distances < RATIO * reference[second])
    )
    return first[joined], second[joined], distances[joined]


def near_duplicate_groups(hashes, max_distance=DEFAULT_DISTANCE):
    """Groups of near-copies among pictures (rows of `hashes`): a list of
    sorted index lists, each of two pictures or more, largest first."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1, WINDOWS)
    first, second, _ = near_copy_pairs(hashes, max_distance)
    labels = components(len(hashes), first, second)
    groups = {}
    for item, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(item)
    return sorted((members for members in groups.values() if len(members) > 1), key=lambda members: (-len(members), members))
