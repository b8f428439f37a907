"""Rasterize DejaVu Sans into the glyph atlas `--plot PATH.png` draws text with.

A PNG has no viewer fonts to lean on (an SVG does), and a TrueType
rasterizer is a large dependency for a few labels, so the glyphs are drawn
once here, at the pixel sizes the plot uses, and embedded in the binary
(`atlas.bin.z`, read by `../png.rs`). Rerun after changing SIZES or CHARS:

    python -m venv /tmp/v && /tmp/v/bin/pip install pillow==13.0.0
    /tmp/v/bin/python src/frontend/bench/font/make_atlas.py \
        /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf src/frontend/bench/font/atlas.bin.z

DejaVu Sans is under the Bitstream Vera licence, which allows embedding.

Format: zlib-compressed; inflated (little-endian): b"AIQF", u8 size count; per size: u16 pixel size,
u16 ascent, u16 descent, u16 glyph count; per glyph: u32 code point,
u16 advance, i16 left, i16 top (offset of the bitmap from the pen position
on the baseline, y down), u16 width, u16 height, then width*height coverage
bytes (0 = none, 255 = full), row by row.
"""

import struct
import zlib
import sys

from PIL import Image, ImageDraw, ImageFont

SIZES = [13, 14, 16, 22]
# Printable ASCII and Latin-1, plus the few typographic marks aiq writes.
CHARS = [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xA0, 0x100)] + list("–—…≈≤≥·•←→")


def main(ttf, out):
    data = bytearray(b"AIQF")
    data += struct.pack("<B", len(SIZES))
    for size in SIZES:
        font = ImageFont.truetype(ttf, size)
        ascent, descent = font.getmetrics()
        data += struct.pack("<HHHH", size, ascent, descent, len(CHARS))
        for ch in CHARS:
            advance = round(font.getlength(ch))
            left, top, right, bottom = font.getbbox(ch, anchor="ls")
            w, h = max(right - left, 0), max(bottom - top, 0)
            img = Image.new("L", (max(w, 1), max(h, 1)), 0)
            if w and h:
                ImageDraw.Draw(img).text((-left, -top), ch, font=font, fill=255, anchor="ls")
            pixels = img.tobytes() if w and h else b""
            data += struct.pack("<IHhhHH", ord(ch), advance, left, top, w, h)
            data += pixels
    packed = zlib.compress(bytes(data), 9)
    with open(out, "wb") as f:
        f.write(packed)
    print(f"{out}: {len(packed)} bytes ({len(data)} inflated), {len(CHARS)} glyphs x {len(SIZES)} sizes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
