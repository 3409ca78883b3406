"""Regenerate the image fixtures of this folder (run from the repository root).

The photos are resized copies of /work/shared/data/faces (provenance in SOURCES.md); the rest are
crafted edge cases for `src/pipeline/image.rs`: a truncated JPEG, a PNG whose header claims
100000 x 100000 pixels, garbage bytes, unsupported formats (GIF, BMP) and a JPEG whose EXIF asks for
a 90 degree clockwise rotation (orientation 6).
"""

from __future__ import annotations

import random
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
FACES = Path("/work/shared/data/faces")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A well-formed PNG header for width x height RGB8 pixels, with only two rows of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (2 * (1 + 3 * 64)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def quadrants(width: int, height: int) -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right."""
    img = Image.new("RGB", (width, height))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for y in range(height):
        for x in range(width):
            img.putpixel((x, y), colours[(y >= height // 2) * 2 + (x >= width // 2)])
    return img


def two_people() -> Image.Image:
    """Eileen Collins (astronaut.png) left, Grace Hopper (grace_hopper.jpg) right, each cut around the face
    and scaled to 200 px high: the faces are about 82 and 98 px wide (Hopper's the larger, area ratio 0.69:
    similar enough that a reference showing both is ambiguous)."""
    left = Image.open(FACES / "astronaut.png").convert("RGB").crop((120, 10, 330, 260))
    left = left.resize((168, 200), Image.LANCZOS)
    right = Image.open(FACES / "grace_hopper.jpg").convert("RGB").crop((90, 60, 450, 480))
    right = right.resize((171, 200), Image.LANCZOS)
    both = Image.new("RGB", (left.width + right.width, 200))
    both.paste(left, (0, 0))
    both.paste(right, (left.width, 0))
    return both


def main() -> int:
    obama = Image.open(FACES / "obama.jpg").convert("RGB").resize((160, 200), Image.LANCZOS)
    obama.save(HERE / "obama_160x200.jpg", quality=90)
    hopper = Image.open(FACES / "grace_hopper.jpg").convert("RGB").resize((128, 150), Image.LANCZOS)
    hopper.save(HERE / "hopper_128x150.png", optimize=True)
    two_people().save(HERE / "two_people.jpg", quality=90)

    whole = (HERE / "obama_160x200.jpg").read_bytes()
    (HERE / "truncated.jpg").write_bytes(whole[: len(whole) * 6 // 10])
    (HERE / "bomb_100000x100000.png").write_bytes(bomb_png(100_000, 100_000))
    (HERE / "garbage.bin").write_bytes(random.Random(7).randbytes(256))

    small = quadrants(8, 6)
    small.save(HERE / "tiny.gif")
    small.save(HERE / "tiny.bmp")

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels must be turned 90 degrees clockwise
    quadrants(24, 16).save(HERE / "exif_orientation6.jpg", quality=95, exif=exif.tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
