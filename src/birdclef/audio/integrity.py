"""Cheap checks that an audio file holds all it claims: truncation and non-finite samples.

libsndfile opens a cut-short file without complaint: a truncated Ogg reports (and decodes) only the
samples that survived, a truncated WAV is read up to its last whole frame, and a truncated FLAC
reports its full STREAMINFO length and fails only when the decoder reaches the cut. None of that
raises at open time, so a batch job would silently use a fragment. These checks read a file's
container structure (tail pages, chunk headers) instead of decoding it:

* Ogg: the last page of a finished stream carries the end-of-stream flag (RFC 3533 §6,
  ``header_type & 0x04``); a cut file ends without it, or in the middle of a page.
* WAV: the ``data`` chunk size says more bytes than the file holds after the chunk header.
* FLAC: STREAMINFO's total samples cannot be reached (a seek to the last block fails).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import soundfile as sf

FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
"""libsndfile subtypes that store IEEE floats and so can hold NaN or Inf; integer PCM, Vorbis,
Opus, FLAC and MP3 cannot."""

_OGG_MAX_PAGE = 27 + 255 + 255 * 255
"""Largest possible Ogg page in bytes (27-byte header, 255 lacing values of up to 255 bytes each)."""
_OGG_TAIL = 4 * _OGG_MAX_PAGE
"""Bytes read from the end of an Ogg file: always holds at least two whole pages of a long file."""
_OGG_EOS = 0x04
_WAV_MAX_CHUNKS = 64
"""Chunks walked before giving up on finding ``data`` (real files have a handful)."""
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)
"""data sizes that streaming writers (ffmpeg to a pipe, sox) leave as "unknown"; not a truncation."""
_FLAC_TAIL_FRAMES = 1_024
_SCAN_BLOCK_FRAMES = 1 << 20


def truncation(path: Path, f: sf.SoundFile) -> str | None:
    """Why the open file `f` (of `path`) looks cut short, or None when it looks complete.

    Unknown formats and structures the checks cannot parse give None: only positive evidence of
    a cut is reported. `f` is left at frame 0 when the file looks complete.
    """
    held_s = f.frames / f.samplerate if f.samplerate else 0.0
    if f.format == "OGG":
        return _ogg_truncation(path, held_s)
    if f.format in ("WAV", "WAVEX"):
        return _wav_truncation(path, f, held_s)
    if f.format == "FLAC":
        return _flac_truncation(f)
    return None


def _ogg_truncation(path: Path, held_s: float) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - _OGG_TAIL))
        tail = fh.read()
    ending = _ogg_ending(tail, from_file_start=size <= _OGG_TAIL)
    if ending == "mid-page":
        return f"truncated: the Ogg stream ends in the middle of a page after {held_s:.2f} s"
    if ending == "no-eos":
        return f"truncated: the Ogg stream has no end-of-stream page (it stops after {held_s:.2f} s)"
    return None


def _ogg_ending(tail: bytes, from_file_start: bool) -> str | None:
    """"mid-page", "no-eos" or None (complete, or the page structure could not be found).

    The walk starts at the first "OggS" whose page ends exactly on another "OggS" (or at the file's
    start), so a capture pattern that happens to occur inside packet data is never taken for a page.
    """
    start = tail.find(b"OggS")
    while start >= 0:
        end = _ogg_page_end(tail, start)
        if (from_file_start and start == 0) or (end is not None and tail.startswith(b"OggS", end)):
            return _ogg_walk(tail, start)
        start = tail.find(b"OggS", start + 1)
    return None


def _ogg_page_end(buf: bytes, pos: int) -> int | None:
    """Offset just past the page starting at `pos`, or None when its header runs past `buf`."""
    if pos + 27 > len(buf):
        return None
    n_segments = buf[pos + 26]
    if pos + 27 + n_segments > len(buf):
        return None
    return pos + 27 + n_segments + sum(buf[pos + 27 : pos + 27 + n_segments])


def _ogg_walk(buf: bytes, pos: int) -> str | None:
    flags = 0
    while pos < len(buf):
        if not buf.startswith(b"OggS", pos):
            break  # bytes after the last page: judge by that page's flags
        end = _ogg_page_end(buf, pos)
        if end is None or end > len(buf):
            return "mid-page"
        flags, pos = buf[pos + 5], end
    return None if flags & _OGG_EOS else "no-eos"


def _wav_truncation(path: Path, f: sf.SoundFile, held_s: float) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos, block_align = 12, 0
        for _ in range(_WAV_MAX_CHUNKS):
            fh.seek(pos)
            header = fh.read(8)
            if len(header) < 8:
                return None
            chunk_id, chunk_size = struct.unpack("<4sI", header)
            if chunk_id == b"fmt ":
                block_align = struct.unpack("<H", fh.read(14)[12:14])[0] if chunk_size >= 14 else 0
            elif chunk_id == b"data":
                held = size - pos - 8
                if chunk_size in _WAV_UNKNOWN_SIZES or chunk_size <= held or block_align == 0:
                    return None
                header_s = chunk_size / block_align / f.samplerate
                return f"truncated: header says {header_s:.2f} s, file holds {held_s:.2f} s"
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _flac_truncation(f: sf.SoundFile) -> str | None:
    if f.frames <= _FLAC_TAIL_FRAMES:
        return None
    header_s = f.frames / f.samplerate
    try:
        f.seek(f.frames - _FLAC_TAIL_FRAMES)
        got = len(f.read(_FLAC_TAIL_FRAMES, dtype="float32", always_2d=True))
        f.seek(0)
    except (sf.LibsndfileError, RuntimeError):
        got = 0  # the decoder is left in an error state: the file is refused, never read further
    if got < _FLAC_TAIL_FRAMES:
        return f"truncated: header says {header_s:.2f} s, but the file ends before its last samples"
    return None


def first_nonfinite_s(f: sf.SoundFile) -> float | None:
    """Time (s) of the first NaN or Inf sample of a float-subtype file, None when all are finite.

    Integer and compressed subtypes cannot hold non-finite values and are not read. Float files
    are read in blocks of about a million frames (4 MB per channel), then `f` is left at frame 0.
    """
    if f.subtype not in FLOAT_SUBTYPES:
        return None
    f.seek(0)
    done = 0
    try:
        for block in f.blocks(_SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True):
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                return (done + int(bad.argmax())) / f.samplerate
            done += len(block)
    finally:
        f.seek(0)
    return None
