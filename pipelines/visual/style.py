"""How the target object is marked: modes, named colours, line and image sizes."""
from __future__ import annotations

from dataclasses import dataclass

from refsav.schemas.errors import SchemaError

MODES = ("contour", "tint", "box", "crop")
# Named colours only, so a prompt can say "the object outlined in red".
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (235, 30, 30),
    "green": (30, 210, 50),
    "blue": (30, 90, 255),
    "yellow": (250, 225, 0),
    "magenta": (235, 0, 235),
    "cyan": (0, 225, 235),
}


@dataclass(frozen=True)
class HighlightStyle:
    """How the target object is marked and how big the images sent to the VLM are.

    mode:
      contour  a line of `colour` hugging the mask from outside (default)
      tint     the mask filled with `colour` at opacity `alpha` (alters the object's colour)
      box      a rectangle just outside the mask's bounding box
      crop     nothing drawn: views are cropped on the object and everything outside
               the mask is darkened by `alpha` (the reverse-mask idea of FGVP)
    """

    mode: str = "contour"
    colour: str = "auto"  # a PALETTE name, or "auto": the one that stands out most around the object
    line_fraction: float = 0.004  # line thickness as a fraction of the output image's long side
    min_line_px: int = 2
    alpha: float = 0.4  # tint opacity; for "crop", how much the outside is darkened
    context_margin: float = 0.3  # crop margin on each side, as a fraction of the box size
    min_crop_px: int = 128  # small objects still get this much context (source pixels)
    max_side: int = 768  # long side of stage-1 crops and the stage-2 frame, at most (never upscaled)
    # Stage 3 sends 8 frames; video VLMs shrink each to ~448 px anyway (InternVL2: one
    # 448x448 tile per frame), so larger frames cost tokens and time for nothing.
    video_max_side: int = 512
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SchemaError(f"unknown highlight mode {self.mode!r}; one of {', '.join(MODES)}", field="mode")
        if self.colour != "auto" and self.colour not in PALETTE:
            raise SchemaError(f"unknown colour {self.colour!r}; 'auto' or one of {', '.join(PALETTE)}", field="colour")
        if not 0 < self.line_fraction < 0.1:
            raise SchemaError(f"must be in (0, 0.1), got {self.line_fraction}", field="line_fraction")
        if self.min_line_px < 1:
            raise SchemaError(f"must be >= 1, got {self.min_line_px}", field="min_line_px")
        if not 0 <= self.alpha <= 1:
            raise SchemaError(f"must be in [0, 1], got {self.alpha}", field="alpha")
        if not 0 <= self.context_margin <= 5:
            raise SchemaError(f"must be in [0, 5], got {self.context_margin}", field="context_margin")
        if self.min_crop_px < 1:
            raise SchemaError(f"must be >= 1, got {self.min_crop_px}", field="min_crop_px")
        for name in ("max_side", "video_max_side"):
            if getattr(self, name) < 32:
                raise SchemaError(f"must be >= 32, got {getattr(self, name)}", field=name)
        if not 1 <= self.jpeg_quality <= 100:
            raise SchemaError(f"must be in 1..100, got {self.jpeg_quality}", field="jpeg_quality")

    def line_px(self, width: int, height: int) -> int:
        """Line thickness for an output image of this size."""
        return max(self.min_line_px, round(self.line_fraction * max(width, height)))
