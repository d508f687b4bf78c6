"""The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), read
strictly: a bad magic number, wrong dimensions, a truncated or over-long file is a one-line
DataError naming the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from convvae.errors import DataError

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, bottom of page).
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, raw or gzipped; returns an array of the header's shape and type.

    Type 0x08 (the MNIST images and labels) gives uint8; the other IDX types give native-endian
    int8, int16, int32, float32 or float64.
    """
    return read_idx_and_hash(Path(path))[0]


def read_idx_and_hash(path: Path, fix: str = "re-download it") -> tuple[np.ndarray, str]:
    """``read_idx`` and the sha256 of the file's bytes; a problem is a DataError ending in
    ``fix``. One read serves both the parse and the checksum: the training files are tens of MB."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror}); check its permissions") from None
    digest = hashlib.sha256(raw).hexdigest()
    # Detect gzip by content: a renamed or re-compressed file keeps working.
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip ({err}); {fix}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (magic {raw[:4].hex()!r}); {fix}")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}; {fix}")
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header gives {ndim} dimensions (1..4 expected); {fix}")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated inside the IDX header; {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header_size
    if got != expected:
        problem = "truncated" if got < expected else "trailing bytes"
        raise DataError(
            f"{path}: {problem}: header says shape {'x'.join(map(str, shape))} of {dtype.name} "
            f"({expected} bytes of data) but the file holds {got} bytes of data; {fix}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("=")), digest
