"""A contact sheet: the suggested images side by side, each captioned (one PNG to glance at)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_LINES = 2
LINE_HEIGHT = 14


def contact_sheet(images: Sequence[np.ndarray], captions: Sequence[Sequence[str]], *, tile: int = 224,
                  columns: int = 5, gap: int = 6) -> np.ndarray:
    """uint8 (H, W, 3) RGB images and their caption lines → one (rows·(tile+caption), columns·tile) sheet.

    Each image is scaled to fit a tile² square (aspect kept, centred on white); up to
    ``CAPTION_LINES`` lines of text sit under it, cut to fit the tile.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_h = tile + CAPTION_LINES * LINE_HEIGHT + gap
    sheet = Image.new("RGB", (columns * (tile + gap) + gap, rows * cell_h + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (image, lines) in enumerate(zip(images, captions)):
        x0 = gap + (i % columns) * (tile + gap)
        y0 = gap + (i // columns) * cell_h
        thumb = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
        scale = tile / max(thumb.width, thumb.height)  # small pictures are enlarged too
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                             Image.BILINEAR)
        sheet.paste(thumb, (x0 + (tile - thumb.width) // 2, y0 + (tile - thumb.height) // 2))
        for j, line in enumerate(list(lines)[:CAPTION_LINES]):
            text = str(line)
            while text and draw.textlength(text, font=font) > tile:
                text = text[:-2] + "…"
            draw.text((x0, y0 + tile + 2 + j * LINE_HEIGHT), text, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def write_contact_sheet(path: str | Path, images: Sequence[np.ndarray], captions: Sequence[Sequence[str]],
                        **kwargs) -> None:
    """``contact_sheet`` written atomically as a PNG."""
    from coordgan_cli.io.images import write_image

    write_image(path, contact_sheet(images, captions, **kwargs))
