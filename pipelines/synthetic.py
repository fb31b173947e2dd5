"""Deterministic synthetic referring videos: moving textured objects over photographs.

This is the project's test, demo and benchmark data. A video is described by a small
frozen `SyntheticVideo` (objects, their attributes and trajectories, the background
recipe); its frames are rendered lazily, one at a time, so a 1080p video never sits in
memory. Everything random is drawn at construction time from an explicitly seeded
`numpy.random.Generator`, so the same (video_id, seed, size, frame count, object count)
always gives the same pixels, masks and text.

Realism comes from real photographs bundled with scikit-image (backgrounds, and the
textures of textured objects). Objects are polygons rasterised with cv2.fillPoly; masks are
*modal* (visible): an object's mask excludes the pixels of objects nearer the camera, the
way SA-V masklets are annotated.

Referring text is built from the attributes and from facts measured on the very masks that
`frames()` yields (see `ObjectFacts`), so "passes behind the grey box" or "leaves the frame
and comes back" is true of the rendered video, not merely of the design. The generator
also *designs* for those events (one object flies out of the frame and comes back, one
object crosses in front of another) and re-draws a layout that fails to show them, so
short default videos reliably contain them.

Coordinates: x to the right, y down, in pixels; frame indices are 24 fps indices.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from itertools import chain
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

FPS = 24

# Shape nouns, used verbatim in the text (and as the object's category word).
SHAPES: tuple[str, ...] = ("ball", "box", "triangle", "star", "ring", "diamond", "cross", "hexagon")
# Shapes whose rotation is visible; a spinning ball or ring would look static, and a
# spinning diamond would pass through the look of a box.
SPINNABLE_SHAPES = frozenset({"box", "triangle", "star", "cross"})

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (45, 165, 60),
    "blue": (35, 80, 205),
    "yellow": (228, 204, 45),
    "orange": (240, 130, 25),
    "purple": (135, 55, 175),
    "pink": (240, 125, 185),
    "white": (222, 222, 216),  # headroom for shading and grain, so it is not clipped flat
    "black": (28, 28, 30),
    "grey": (128, 128, 128),
}
# Textured appearances: (skimage.data grey photograph, RGB tint). The photos are grey,
# so the tint gives brick its clay colour and grass its green.
TEXTURES: dict[str, tuple[str, tuple[float, float, float]]] = {
    "brick-textured": ("brick", (1.05, 0.55, 0.42)),
    "grass-textured": ("grass", (0.62, 0.95, 0.45)),
    "gravel-textured": ("gravel", (0.95, 0.9, 0.82)),
}
APPEARANCES: tuple[str, ...] = tuple(COLOURS) + tuple(TEXTURES)

# Size words are relative to the frame (fraction of W*H covered by the shape), so a scene
# looks the same at every resolution. At 640x360 "small" is ~350-900 px^2 and "large"
# reaches ~10% of the frame, the range of SA-V masklets. (SA-V's own size *bucket* is
# absolute, 32^2 / 96^2 px; compute it from the masks, not from this word.)
SIZES: tuple[str, ...] = ("small", "medium", "large")
SIZE_AREA_FRACTION: dict[str, tuple[float, float]] = {
    "small": (0.0015, 0.004),
    "medium": (0.01, 0.025),
    "large": (0.05, 0.10),
}

# Photographs bundled inside the scikit-image wheel (no download needed). Textures are
# kept out of the backgrounds so a grass-textured object is never camouflaged on grass.
BACKGROUNDS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera", "hubble")
_PHOTOS_WITH_TEXT = frozenset({"astronaut"})  # never mirrored: backwards lettering gives it away

# Eight compass directions in image terms; index i points at angle 45*i degrees
# counter-clockwise from "right" (with y pointing *up* for the purpose of naming).
DIRECTIONS: tuple[str, ...] = (
    "right",
    "up and to the right",
    "up",
    "up and to the left",
    "left",
    "down and to the left",
    "down",
    "down and to the right",
)

# An object "passes behind" another when the nearer object hides at least this much of it
# on some frame; tiny edge contacts would make the sentence misleading.
OCCLUSION_MIN_PIXELS = 20
OCCLUSION_MIN_FRACTION = 0.1

# Guarantees (a returning object, an occlusion) are only attempted for videos long enough
# to show them.
MIN_FRAMES_FOR_RETURN = 16
MIN_FRAMES_FOR_OCCLUSION = 8
_MAX_LAYOUT_ATTEMPTS = 40


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class SyntheticObject:
    """One object: attributes used in text, plus its trajectory in frame units.

    Centre at frame t: anchor + vel*(t - anchor_t) + acc*(t - anchor_t)^2 (pixels).
    A "linear" object has acc = 0; a "return" object has vel = 0 and turns around at the
    anchor (placed outside the frame), so it flies out and comes back.
    """

    object_id: int  # 0..K-1, also the SA-V masklet column index
    shape: str  # noun used in text, e.g. "ball"
    appearance: str  # "red" or "brick-textured"
    size: str  # "small" | "medium" | "large", relative to the frame
    kind: str  # "linear" | "return"
    direction: str  # initial direction of motion, one of DIRECTIONS
    spins: bool
    depth: int  # larger = nearer the camera; unique within a video
    area: float  # polygon area in px^2 (before clipping and occlusion)
    anchor_x: float
    anchor_y: float
    anchor_t: float  # frame index (may be fractional)
    vel_x: float  # px / frame
    vel_y: float
    acc_x: float  # px / frame^2
    acc_y: float
    angle0: float  # radians, orientation at frame 0
    spin_rate: float  # radians / frame, 0 when not spinning
    texture_u: float  # where in the texture photograph the object's pattern is cut, in [0, 1)
    texture_v: float

    @property
    def category(self) -> str:
        return self.shape

    @property
    def motion(self) -> str:
        """Motion label, e.g. "moves left", "moves up and comes back"."""
        if self.kind == "return":
            return f"moves {self.direction} and comes back"
        return f"moves {self.direction}"

    def center(self, t: float) -> tuple[float, float]:
        dt = t - self.anchor_t
        return (
            self.anchor_x + self.vel_x * dt + self.acc_x * dt * dt,
            self.anchor_y + self.vel_y * dt + self.acc_y * dt * dt,
        )

    def angle(self, t: float) -> float:
        return self.angle0 + self.spin_rate * t

    @property
    def scale(self) -> float:
        return math.sqrt(self.area)  # shape templates have unit area

    @property
    def radius(self) -> float:
        """Radius of the circle around the centre that contains the whole shape."""
        return self.scale * _template(self.shape).radius


@dataclass(frozen=True)
class BackgroundRecipe:
    """How the background is cut from its photograph and panned (all relative units)."""

    photo: str  # one of BACKGROUNDS
    flip: bool  # mirror horizontally
    crop_scale: float  # (0, 1]: fraction of the largest crop of the right aspect ratio
    crop_u: float  # [0, 1]: where that crop sits in the photo
    crop_v: float
    pan_x: float  # total pan over the video as a fraction of the width (signed)
    pan_y: float  # ... of the height
    gain: float  # brightness multiplier


@dataclass(frozen=True)
class ObjectFacts:
    """Facts measured on the full-resolution masks that `frames()` yields."""

    visible_frames: int  # frames with a non-empty visible mask
    first_visible: int  # first frame with a non-empty visible mask, -1 if never
    last_visible: int  # last such frame, -1 if never
    starts_off_screen: bool  # no pixel inside the frame at frame 0
    ends_off_screen: bool  # no pixel inside the frame at the last frame
    leaves_and_reenters: bool  # inside, then fully outside the frame, then inside again
    passes_behind: tuple[int, ...]  # ids of nearer objects that hide part of it on some frame
    passes_in_front_of: tuple[int, ...]  # ids of objects it hides part of on some frame
    mean_visible_area: float  # px^2, mean over frames where visible


@dataclass(frozen=True)
class ObjectText:
    """Referring expressions; each one identifies its object uniquely within the video."""

    long: str  # Ref-SAV "formated"
    short: tuple[str, ...]  # Ref-SAV "short_caps", 1-3 entries


@dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    seed: int
    width: int
    height: int
    fps: int
    num_frames: int
    background: BackgroundRecipe
    objects: tuple[SyntheticObject, ...]
    facts: tuple[ObjectFacts, ...]  # aligned with objects
    texts: tuple[ObjectText, ...]  # aligned with objects

    def frames(self, indices: Iterable[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (rgb uint8 (H, W, 3), visible masks bool (K, H, W)) per frame.

        Frames are rendered on demand; `indices` (default: all frames, in order) lets a
        caller render only, say, the annotated frames. Each yielded array is new.
        """
        assets = _Assets.build(self)
        for t, layers in self._iter_layers(indices):
            rgb = assets.background_at(t)
            masks = np.zeros((len(self.objects), self.height, self.width), dtype=bool)
            for layer in layers:
                y0, y1, x0, x1 = layer.box
                masks[layer.object_id, y0:y1, x0:x1] = layer.visible
                texture = assets.texture_at(layer.object_id, t, layer.box)
                # cv2's masked copy is ~20x faster than np.copyto(where=); it is given a
                # contiguous region and its result is written back, so it never matters
                # whether OpenCV could have written into the strided view in place.
                region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
                rgb[y0:y1, x0:x1] = cv2.copyTo(texture, layer.visible.view(np.uint8), region)
            yield rgb, masks

    def masks(self, indices: Iterable[int] | None = None, amodal: bool = False) -> Iterator[np.ndarray]:
        """Yield bool (K, H, W) masks per frame without rendering pixels (cheaper).

        Visible (modal) masks by default, identical to those of `frames()`; with
        amodal=True, each object's full in-frame silhouette, ignoring occlusion.
        """
        for _, layers in self._iter_layers(indices):
            masks = np.zeros((len(self.objects), self.height, self.width), dtype=bool)
            for layer in layers:
                y0, y1, x0, x1 = layer.box
                masks[layer.object_id, y0:y1, x0:x1] = layer.amodal if amodal else layer.visible
            yield masks

    def _iter_layers(self, indices: Iterable[int] | None) -> Iterator[tuple[int, list[_Layer]]]:
        """The single place where masks are made, so frames, masks and facts agree."""
        front_to_back = sorted(self.objects, key=lambda o: -o.depth)
        for t in range(self.num_frames) if indices is None else indices:
            if not 0 <= t < self.num_frames:
                raise IndexError(f"frame {t} outside 0..{self.num_frames - 1}")
            # Painting nearest first: whatever is already covered is hidden for the rest.
            covered = np.zeros((self.height, self.width), dtype=bool)
            layers: list[_Layer] = []
            for obj in front_to_back:
                raster = _rasterise(obj, t, self.width, self.height)
                if raster is None:
                    continue
                box, amodal = raster
                y0, y1, x0, x1 = box
                covered_here = covered[y0:y1, x0:x1]
                visible = amodal & ~covered_here
                covered_here |= amodal
                layers.append(_Layer(obj.object_id, box, amodal, visible))
            yield t, layers


@dataclass(frozen=True)
class _Layer:
    object_id: int
    box: tuple[int, int, int, int]  # y0, y1, x0, x1, clipped to the frame
    amodal: np.ndarray  # bool crop of the box
    visible: np.ndarray  # bool crop of the box


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Template:
    outer: np.ndarray  # (N, 2) float, unit total area, centred on the origin
    hole: np.ndarray | None  # (M, 2) for the ring
    radius: float  # max distance of a vertex from the origin


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


@lru_cache(maxsize=None)
def _template(shape: str) -> _Template:
    hole = None
    if shape == "ball":
        outer = _regular(96)
    elif shape == "box":
        outer = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    elif shape == "triangle":
        outer = _regular(3, phase=-np.pi / 2)  # apex up
    elif shape == "star":
        points = _regular(10, phase=-np.pi / 2)
        points[1::2] *= 0.45
        outer = points
    elif shape == "ring":
        outer = _regular(96)
        hole = _regular(96, radius=0.55)
    elif shape == "diamond":
        # Taller than wide, so it never reads as a box turned by 45 degrees.
        outer = np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], dtype=float)
    elif shape == "cross":
        a = 1.0 / 3.0
        outer = np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=float,
        )
    elif shape == "hexagon":
        outer = _regular(6)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    area = _polygon_area(outer) - (_polygon_area(hole) if hole is not None else 0.0)
    k = 1.0 / math.sqrt(area)
    outer = outer * k
    hole = hole * k if hole is not None else None
    outer.setflags(write=False)
    if hole is not None:
        hole.setflags(write=False)
    return _Template(outer, hole, float(np.linalg.norm(outer, axis=1).max()))


_SHIFT = 4  # fillPoly fixed-point bits: sub-pixel vertices keep slow motion smooth


def _rasterise(obj: SyntheticObject, t: int, width: int, height: int) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The object's silhouette at frame t, cropped to its bounding box inside the frame."""
    template = _template(obj.shape)
    cx, cy = obj.center(t)
    a = obj.angle(t)
    c, s = math.cos(a), math.sin(a)
    rotation = obj.scale * np.array([[c, s], [-s, c]])  # row vectors: p @ rotation
    outer = template.outer @ rotation + (cx, cy)
    x0 = max(int(math.floor(outer[:, 0].min())), 0)
    x1 = min(int(math.floor(outer[:, 0].max())) + 2, width)
    y0 = max(int(math.floor(outer[:, 1].min())), 0)
    y1 = min(int(math.floor(outer[:, 1].max())) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return None
    polygons = [outer]
    if template.hole is not None:
        polygons.append(template.hole @ rotation + (cx, cy))
    fixed = [np.round((p - (x0, y0)) * (1 << _SHIFT)).astype(np.int32) for p in polygons]
    crop = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(crop, fixed, 1, lineType=cv2.LINE_8, shift=_SHIFT)
    mask = crop.view(bool)
    if not mask.any():
        return None
    return (y0, y1, x0, x1), mask


# --------------------------------------------------------------------------- pixels


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph from skimage.data (bundled files only, read-only)."""
    from skimage import data

    if name == "motorcycle":
        image = data.stereo_motorcycle()[0]
    elif name == "hubble":
        image = data.hubble_deep_field()
    else:
        image = getattr(data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    image.setflags(write=False)
    return image


@lru_cache(maxsize=None)
def _grey_texture(name: str) -> np.ndarray:
    """A grey photo as float32 with zero mean and unit spread, for shading patterns."""
    image = _photo(name)[:, :, 0].astype(np.float32)
    image = (image - image.mean()) / max(float(image.std()), 1.0)
    image.setflags(write=False)
    return image


class _Assets:
    """Per-render buffers (background canvas, object texture patches); never stored on
    the video so that describing a 1080p video costs no memory."""

    def __init__(self, video: SyntheticVideo, canvas: np.ndarray, patches: list[np.ndarray]):
        self.video = video
        self.canvas = canvas
        self.patches = patches
        self.objects = video.objects

    @classmethod
    def build(cls, video: SyntheticVideo) -> _Assets:
        return cls(video, _background_canvas(video), [_texture_patch(o) for o in video.objects])

    def background_at(self, t: int) -> np.ndarray:
        v = self.video
        s = t / max(v.num_frames - 1, 1)
        # The canvas is larger than the frame by the pan; integer offsets keep this a copy.
        ox = round(s * abs(v.background.pan_x) * v.width)
        oy = round(s * abs(v.background.pan_y) * v.height)
        if v.background.pan_x < 0:
            ox = self.canvas.shape[1] - v.width - ox
        if v.background.pan_y < 0:
            oy = self.canvas.shape[0] - v.height - oy
        return self.canvas[oy : oy + v.height, ox : ox + v.width].copy()

    def texture_at(self, object_id: int, t: int, box: tuple[int, int, int, int]) -> np.ndarray:
        """Texture pixels for the box, moving (and turning, for spinners) with the object."""
        obj = self.objects[object_id]
        patch = self.patches[object_id]
        y0, y1, x0, x1 = box
        half = patch.shape[0] // 2
        cx, cy = obj.center(t)
        if obj.spins:
            a = obj.angle(t) - obj.angle0
            c, s = math.cos(a), math.sin(a)
            # Maps patch pixels to box pixels: rotate about the patch centre, then move
            # that centre onto the object centre.
            m = np.array([[c, s, 0.0], [-s, c, 0.0]])
            m[:, 2] = (cx - x0, cy - y0) - m[:, :2] @ (half, half)
            return cv2.warpAffine(patch, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        px = round(cx) - half
        py = round(cy) - half
        return patch[y0 - py : y1 - py, x0 - px : x1 - px]


def _background_canvas(video: SyntheticVideo) -> np.ndarray:
    r = video.background
    photo = _photo(r.photo)
    if r.flip:
        photo = photo[:, ::-1]
    cw = video.width + math.ceil(abs(r.pan_x) * video.width) + 1
    ch = video.height + math.ceil(abs(r.pan_y) * video.height) + 1
    ph, pw = photo.shape[:2]
    # Largest crop with the canvas's aspect ratio, shrunk by crop_scale, placed by (u, v).
    fit = min(pw / cw, ph / ch) * r.crop_scale
    sw, sh = max(int(cw * fit), 2), max(int(ch * fit), 2)
    sx = int(round(r.crop_u * (pw - sw)))
    sy = int(round(r.crop_v * (ph - sh)))
    crop = np.ascontiguousarray(photo[sy : sy + sh, sx : sx + sw])
    interpolation = cv2.INTER_AREA if sw > cw else cv2.INTER_CUBIC
    canvas = cv2.resize(crop, (cw, ch), interpolation=interpolation)
    if r.gain != 1.0:
        canvas = cv2.convertScaleAbs(canvas, alpha=r.gain)
    return canvas


def _texture_patch(obj: SyntheticObject) -> np.ndarray:
    """A square RGB patch centred on the object, big enough for any rotation of it."""
    half = math.ceil(obj.radius) + 4
    size = 2 * half + 1
    if obj.appearance in TEXTURES:
        photo_name, tint = TEXTURES[obj.appearance]
        # Cut a few bricks' / blades' worth of photo, whatever the object size, so the
        # pattern stays recognisable on small objects and is not over-enlarged on big ones.
        pattern = _cut(_grey_texture(photo_name), obj, size, source_px=int(np.clip(size, 96, 400)))
        grey = np.clip(118.0 + 45.0 * pattern, 0, 255)
        rgb = grey[:, :, None] * np.asarray(tint, dtype=np.float32)
    else:
        # Plain colours still get a faint surface grain so they do not look flat.
        grain = _cut(_grey_texture("moon"), obj, size, source_px=int(np.clip(size, 64, 256)))
        base = np.asarray(COLOURS[obj.appearance], dtype=np.float32)
        rgb = base * _shading(obj.shape, size)[:, :, None] + 14.0 * np.clip(grain, -2.0, 2.0)[:, :, None]
        return np.clip(rgb, 0, 255).astype(np.uint8)
    rgb = rgb * _shading(obj.shape, size)[:, :, None]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _cut(texture: np.ndarray, obj: SyntheticObject, size: int, source_px: int) -> np.ndarray:
    th, tw = texture.shape
    source_px = min(source_px, th, tw)
    x = int(obj.texture_u * (tw - source_px))
    y = int(obj.texture_v * (th - source_px))
    piece = texture[y : y + source_px, x : x + source_px]
    return cv2.resize(piece, (size, size), interpolation=cv2.INTER_LINEAR)


def _shading(shape: str, size: int) -> np.ndarray:
    """Light from the upper left: a sphere-like falloff for balls, a soft ramp otherwise."""
    coords = (np.arange(size, dtype=np.float32) - size // 2) / max(size // 2, 1)
    x, y = np.meshgrid(coords, coords)
    if shape == "ball":
        r2 = x * x + y * y
        highlight = np.exp(-((x + 0.35) ** 2 + (y + 0.35) ** 2) / 0.12)
        shade = 1.05 - 0.4 * np.clip(r2, 0, 1) * (0.6 + 0.4 * (x + y + 2) / 4) + 0.25 * highlight
    else:
        shade = 1.08 - 0.1 * (x + y)
    return shade.astype(np.float32)


# --------------------------------------------------------------------------- layout


def _seed_sequence(video_id: str, seed: int) -> np.random.SeedSequence:
    # A stable digest (not hash(), which is salted per process) ties the draw to the id.
    digest = int.from_bytes(hashlib.sha256(video_id.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, digest])


def _unit(direction_index: int, jitter_deg: float) -> tuple[float, float]:
    a = math.radians(45.0 * direction_index + jitter_deg)
    return math.cos(a), -math.sin(a)  # image y points down


@dataclass
class _Draft:
    """Mutable per-object choices while a layout is being designed."""

    shape: str
    appearance: str
    size: str
    area: float
    radius: float = 0.0
    kind: str = "linear"
    direction_index: int = 0
    anchor: tuple[float, float] = (0.0, 0.0)
    anchor_t: float = 0.0
    vel: tuple[float, float] = (0.0, 0.0)
    acc: tuple[float, float] = (0.0, 0.0)

    def center(self, t: float) -> tuple[float, float]:
        dt = t - self.anchor_t
        return (
            self.anchor[0] + self.vel[0] * dt + self.acc[0] * dt * dt,
            self.anchor[1] + self.vel[1] * dt + self.acc[1] * dt * dt,
        )


def _draw_layout(
    rng: np.random.Generator, width: int, height: int, num_frames: int, num_objects: int
) -> tuple[BackgroundRecipe, tuple[SyntheticObject, ...]]:
    last = max(num_frames - 1, 1)  # trajectories are designed over normalised time t/last
    k = num_objects

    panning = rng.random() < 0.7
    photo = str(rng.choice(BACKGROUNDS))
    mirror = bool(rng.random() < 0.5)
    background = BackgroundRecipe(
        photo=photo,
        flip=mirror and photo not in _PHOTOS_WITH_TEXT,
        crop_scale=float(rng.uniform(0.75, 1.0)),
        crop_u=float(rng.random()),
        crop_v=float(rng.random()),
        pan_x=float(rng.uniform(-0.08, 0.08)) if panning else 0.0,
        pan_y=float(rng.uniform(-0.03, 0.03)) if panning else 0.0,
        gain=float(rng.uniform(0.85, 1.1)),
    )

    # Attributes: (appearance, shape) pairs unique; shapes may repeat, which makes the
    # referring task need the colour.
    drafts: list[_Draft] = []
    pairs: set[tuple[str, str]] = set()
    while len(drafts) < k:
        shape = str(rng.choice(SHAPES))
        appearance = str(rng.choice(APPEARANCES))
        if (appearance, shape) in pairs:
            continue
        pairs.add((appearance, shape))
        size = str(rng.choice(SIZES, p=[0.3, 0.4, 0.3]))
        drafts.append(_Draft(shape, appearance, size, 0.0))

    # Roles: one object flies out and comes back; one (nearer) object crosses another.
    order = [int(i) for i in rng.permutation(k)]
    returners = [order[0]] if num_frames >= MIN_FRAMES_FOR_RETURN else []
    if k >= 5 and num_frames >= MIN_FRAMES_FOR_RETURN and rng.random() < 0.3:
        returners.append(order[3])
    occludee = occluder = None
    if k >= 2 and num_frames >= MIN_FRAMES_FOR_OCCLUSION:
        occludee, occluder = (order[1], order[2]) if k >= 3 else (order[0], order[1])
        # A large object hides a small one convincingly; the reverse barely registers.
        if SIZES.index(drafts[occluder].size) < SIZES.index(drafts[occludee].size):
            drafts[occluder].size, drafts[occludee].size = drafts[occludee].size, drafts[occluder].size

    for d in drafts:
        lo, hi = SIZE_AREA_FRACTION[d.size]
        d.area = float(rng.uniform(lo, hi)) * width * height
        d.radius = math.sqrt(d.area) * _template(d.shape).radius

    for i, d in enumerate(drafts):
        if i in returners:
            _design_return(rng, d, width, height, last)
        elif i != occluder:
            _design_linear(rng, d, width, height, last, enter=bool(rng.random() < 0.3))
    if occluder is not None and occludee is not None:
        _design_occluder(rng, drafts[occluder], drafts[occludee], width, height, last)

    depths = [int(x) for x in rng.permutation(k)]
    if occluder is not None and occludee is not None and depths[occluder] < depths[occludee]:
        depths[occluder], depths[occludee] = depths[occludee], depths[occluder]

    objects = []
    for i, d in enumerate(drafts):
        spins = d.shape in SPINNABLE_SHAPES and bool(rng.random() < 0.5)
        if spins:
            turns = float(rng.uniform(0.4, 1.2)) * (1 if rng.random() < 0.5 else -1)
            spin_rate = 2 * math.pi * turns / last
        else:
            spin_rate = 0.0
        objects.append(
            SyntheticObject(
                object_id=i,
                shape=d.shape,
                appearance=d.appearance,
                size=d.size,
                kind=d.kind,
                direction=DIRECTIONS[d.direction_index],
                spins=spins,
                depth=depths[i],
                area=d.area,
                anchor_x=d.anchor[0],
                anchor_y=d.anchor[1],
                anchor_t=d.anchor_t,
                vel_x=d.vel[0],
                vel_y=d.vel[1],
                acc_x=d.acc[0],
                acc_y=d.acc[1],
                angle0=float(rng.uniform(-0.4, 0.4)),
                spin_rate=spin_rate,
                texture_u=float(rng.random()),
                texture_v=float(rng.random()),
            )
        )
    return background, tuple(objects)


def _linear_velocity(rng: np.random.Generator, d: _Draft, width: int, height: int, last: int) -> tuple[float, float]:
    # Jitter stays well inside the 45-degree sector so the direction word is right.
    ux, uy = _unit(d.direction_index, float(rng.uniform(-12.0, 12.0)))
    extent = abs(ux) * width + abs(uy) * height
    speed = float(rng.uniform(0.3, 0.8)) * extent / last
    return ux * speed, uy * speed


def _design_linear(rng: np.random.Generator, d: _Draft, width: int, height: int, last: int, enter: bool) -> None:
    d.kind = "linear"
    d.direction_index = int(rng.integers(8))
    d.vel = _linear_velocity(rng, d, width, height, last)
    if enter:
        # Start just outside the edge it moves away from, so it enters within the video.
        vx, vy = d.vel
        speed = math.hypot(vx, vy)
        ux, uy = vx / speed, vy / speed
        cx, cy = _inside_point(rng, d.radius, width, height)
        back = _distance_to_exit(cx, cy, -ux, -uy, width, height) + d.radius + float(rng.uniform(0.0, 0.1)) * last * speed
        d.anchor = (cx - ux * back, cy - uy * back)
        d.anchor_t = 0.0
    else:
        d.anchor = _inside_point(rng, d.radius, width, height)
        d.anchor_t = float(rng.uniform(0.15, 0.85)) * last


def _design_return(rng: np.random.Generator, d: _Draft, width: int, height: int, last: int) -> None:
    """Parabolic out-and-back: starts inside, flies out across one edge, turns around
    outside the frame (for about a fifth of the video) and comes back in."""
    d.kind = "return"
    d.direction_index = int(rng.choice([0, 2, 4, 6]))  # out across a single edge
    ux, uy = _unit(d.direction_index, 0.0)
    ux, uy = round(ux), round(uy)
    t0 = float(rng.uniform(0.4, 0.6)) * last  # turning point
    half_gap = float(rng.uniform(0.08, 0.13)) * last  # frames spent fully outside on each side of t0
    if ux:
        edge, cross_extent = width / 2, height
    else:
        edge, cross_extent = height / 2, width
    r = d.radius
    # Along-axis position (from the frame centre) at frame 0, inside the frame.
    start = float(rng.uniform(-0.2, 0.5)) * max(edge - r, 1.0)
    # Fully outside while along > edge + r; solve for the overshoot g beyond that line so
    # that the object is there for |t - t0| < half_gap and at `start` at frame 0.
    ratio = (t0 / half_gap) ** 2
    g = (edge + r - start) / (ratio - 1.0)
    k = g / half_gap**2
    turn = edge + r + g
    lateral = float(rng.uniform(-0.6, 0.6)) * max(cross_extent / 2 - r, 0.0)
    if ux:
        d.anchor = (width / 2 + ux * turn, height / 2 + lateral)
    else:
        d.anchor = (width / 2 + lateral, height / 2 + uy * turn)
    d.anchor_t = t0
    d.vel = (0.0, 0.0)
    d.acc = (-ux * k, -uy * k)


def _design_occluder(rng: np.random.Generator, d: _Draft, target: _Draft, width: int, height: int, last: int) -> None:
    """Make `d` cross `target`: both centres nearly coincide at a frame when the target
    is fully inside the frame."""
    crossing = None
    for _ in range(50):
        t = float(rng.uniform(0.2, 0.8)) * last
        x, y = target.center(t)
        m = min(target.radius, 0.45 * min(width, height))
        if m <= x <= width - m and m <= y <= height - m:
            crossing = (t, x, y)
            break
    if crossing is None:
        # Cannot happen for sensible sizes; fall back to the frame centre at mid-video.
        crossing = (0.5 * last, width / 2, height / 2)
    t, x, y = crossing
    d.kind = "linear"
    target_dir = target.direction_index
    # Move across the target's path (at least 90 degrees apart) so they pass each other.
    d.direction_index = (target_dir + int(rng.choice([2, 3, 4, 5, 6]))) % 8
    d.vel = _linear_velocity(rng, d, width, height, last)
    offset = 0.3 * target.radius * math.sqrt(float(rng.random()))
    phi = float(rng.uniform(0, 2 * math.pi))
    d.anchor = (x + offset * math.cos(phi), y + offset * math.sin(phi))
    d.anchor_t = t


def _inside_point(rng: np.random.Generator, radius: float, width: int, height: int) -> tuple[float, float]:
    mx = min(radius, 0.45 * width)
    my = min(radius, 0.45 * height)
    return float(rng.uniform(mx, width - mx)), float(rng.uniform(my, height - my))


def _distance_to_exit(x: float, y: float, ux: float, uy: float, width: int, height: int) -> float:
    """How far from (x, y) along (ux, uy) until the frame border."""
    ts = []
    if ux > 1e-9:
        ts.append((width - x) / ux)
    elif ux < -1e-9:
        ts.append(-x / ux)
    if uy > 1e-9:
        ts.append((height - y) / uy)
    elif uy < -1e-9:
        ts.append(-y / uy)
    return max(min(ts), 0.0) if ts else 0.0


# --------------------------------------------------------------------------- facts


def _measure_facts(video: SyntheticVideo) -> tuple[ObjectFacts, ...]:
    k, n = len(video.objects), video.num_frames
    in_frame = np.zeros((k, n), dtype=bool)
    visible_area = np.zeros((k, n), dtype=np.int64)
    behind = [set() for _ in range(k)]
    for t, layers in video._iter_layers(None):
        for i, layer in enumerate(layers):
            own = int(layer.amodal.sum())
            in_frame[layer.object_id, t] = own > 0
            visible_area[layer.object_id, t] = int(layer.visible.sum())
            threshold = max(OCCLUSION_MIN_PIXELS, OCCLUSION_MIN_FRACTION * own)
            # Layers are nearest first, so the ones before i are the possible occluders.
            for nearer in layers[:i]:
                hidden = _overlap(layer.box, layer.amodal, nearer.box, nearer.visible)
                if hidden >= threshold:
                    behind[layer.object_id].add(nearer.object_id)
    facts = []
    for i in range(k):
        seen = np.flatnonzero(visible_area[i] > 0)
        inside = np.flatnonzero(in_frame[i])
        # Leaving means no pixel inside the frame (being hidden by another object is not
        # leaving); re-entering means inside again later.
        reenters = inside.size > 0 and bool((~in_frame[i, inside[0] : inside[-1] + 1]).any())
        in_front_of = tuple(sorted(j for j in range(k) if i in behind[j]))
        facts.append(
            ObjectFacts(
                visible_frames=int(seen.size),
                first_visible=int(seen[0]) if seen.size else -1,
                last_visible=int(seen[-1]) if seen.size else -1,
                starts_off_screen=not bool(in_frame[i, 0]),
                ends_off_screen=not bool(in_frame[i, n - 1]),
                leaves_and_reenters=reenters,
                passes_behind=tuple(sorted(behind[i])),
                passes_in_front_of=in_front_of,
                mean_visible_area=float(visible_area[i, seen].mean()) if seen.size else 0.0,
            )
        )
    return tuple(facts)


def _overlap(box_a, mask_a: np.ndarray, box_b, mask_b: np.ndarray) -> int:
    y0, x0 = max(box_a[0], box_b[0]), max(box_a[2], box_b[2])
    y1, x1 = min(box_a[1], box_b[1]), min(box_a[3], box_b[3])
    if y0 >= y1 or x0 >= x1:
        return 0
    a = mask_a[y0 - box_a[0] : y1 - box_a[0], x0 - box_a[2] : x1 - box_a[2]]
    b = mask_b[y0 - box_b[0] : y1 - box_b[0], x0 - box_b[2] : x1 - box_b[2]]
    return int(np.count_nonzero(a & b))


def _layout_ok(video: SyntheticVideo) -> bool:
    n, k = video.num_frames, len(video.objects)
    min_visible = max(1, math.ceil(0.25 * n))
    if any(f.visible_frames < min_visible for f in video.facts):
        return False
    if n >= MIN_FRAMES_FOR_RETURN and not any(f.leaves_and_reenters for f in video.facts):
        return False
    if k >= 2 and n >= MIN_FRAMES_FOR_OCCLUSION and not any(f.passes_behind for f in video.facts):
        return False
    return True


# --------------------------------------------------------------------------- text


def _name(obj: SyntheticObject) -> str:
    return f"the {obj.appearance} {obj.shape}"


def _join(clauses: Sequence[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    # A serial comma keeps "leaves the frame and comes back, and spins" readable when a
    # clause has its own "and".
    nested = any(" and " in c for c in clauses) if len(clauses) > 2 else "," in clauses[0]
    last = ", and " if nested else " and "
    return ", ".join(clauses[:-1]) + last + clauses[-1]


def _describe(objects: Sequence[SyntheticObject], facts: Sequence[ObjectFacts], rng: np.random.Generator) -> tuple[ObjectText, ...]:
    texts = []
    for obj, fact in zip(objects, facts):
        clauses = []
        if obj.kind == "return" and fact.leaves_and_reenters:
            clauses.append(f"moves {obj.direction}, leaves the frame and comes back")
        else:
            clauses.append(obj.motion)
            if fact.leaves_and_reenters:  # not designed for, but true if it happens
                clauses.append("leaves the frame and comes back")
            elif fact.starts_off_screen:
                clauses.append("enters the frame")
            elif fact.ends_off_screen:
                clauses.append("leaves the frame")
        if obj.spins:
            clauses.append("spins")
        if fact.passes_behind:
            clauses.append("passes behind " + _join([_name(objects[j]) for j in fact.passes_behind]))
        elif fact.passes_in_front_of:
            clauses.append("passes in front of " + _join([_name(objects[j]) for j in fact.passes_in_front_of]))
        long = f"the {obj.size} {obj.appearance} {obj.shape} that {_join(clauses)}"

        def unique(predicate) -> bool:
            return sum(1 for other, other_fact in zip(objects, facts) if predicate(other, other_fact)) == 1

        # Every short expression must still single out this object in the video.
        candidates = []
        if unique(lambda o, f: o.shape == obj.shape):
            candidates.append(f"the {obj.shape}")
        if unique(lambda o, f: (o.size, o.shape) == (obj.size, obj.shape)):
            candidates.append(f"the {obj.size} {obj.shape}")
        if unique(lambda o, f: (o.size, o.shape, o.direction) == (obj.size, obj.shape, obj.direction)):
            candidates.append(f"{obj.size} {obj.shape} moving {obj.direction}")
        if obj.spins and unique(lambda o, f: o.shape == obj.shape and o.spins):
            candidates.append(f"the spinning {obj.shape}")
        if fact.leaves_and_reenters and unique(lambda o, f: o.shape == obj.shape and f.leaves_and_reenters):
            candidates.append(f"the {obj.shape} that comes back")
        if unique(lambda o, f: o.appearance == obj.appearance):
            candidates.append(f"the {obj.appearance} one")
        extra = int(rng.integers(0, min(2, len(candidates)) + 1))
        picked = [candidates[i] for i in sorted(rng.choice(len(candidates), size=extra, replace=False))] if extra else []
        texts.append(ObjectText(long=long, short=(_name(obj), *picked)))
    return tuple(texts)


# --------------------------------------------------------------------------- public


def make_video(
    video_id: str,
    seed: int,
    width: int = 640,
    height: int = 360,
    num_frames: int = 48,
    num_objects: int = 4,
    fps: int = FPS,
) -> SyntheticVideo:
    """Design one video. Deterministic in all arguments; cost is one mask-only pass.

    The same (video_id, seed, num_frames, num_objects) at another resolution of the same
    aspect ratio gives the same scene, scaled (draws are in relative units).
    """
    if width < 16 or height < 16:
        raise ValueError(f"frame must be at least 16x16, got {width}x{height}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 1 <= num_objects <= 12:
        raise ValueError(f"num_objects must be in 1..12, got {num_objects}")
    layout_seq, text_seq = _seed_sequence(video_id, seed).spawn(2)
    layout_rng = np.random.default_rng(layout_seq)
    video = None
    for _ in range(_MAX_LAYOUT_ATTEMPTS):
        background, objects = _draw_layout(layout_rng, width, height, num_frames, num_objects)
        video = SyntheticVideo(
            video_id=video_id,
            seed=int(seed),
            width=int(width),
            height=int(height),
            fps=int(fps),
            num_frames=int(num_frames),
            background=background,
            objects=objects,
            facts=(),
            texts=(),
        )
        video = replace(video, facts=_measure_facts(video))
        if _layout_ok(video):
            break
    # After the attempts (only for degenerate requests, e.g. 12 large objects in a tiny
    # frame) the last layout is used: its facts and text are still true.
    assert video is not None
    texts = _describe(video.objects, video.facts, np.random.default_rng(text_seq))
    return replace(video, texts=texts)


def write_mp4(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: int = FPS,
    crf: int = 18,
    preset: str = "veryfast",
) -> int:
    """Encode RGB uint8 (H, W, 3) frames as H.264 yuv420p mp4; return the frame count.

    The file appears atomically: it is written next to `path` under a temporary name and
    renamed when complete, so readers never see a half-written video.
    """
    import av

    path = os.fspath(path)
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_mp4 needs at least one frame")
    height, width = _check_frame(first, None)
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even width and height, got {width}x{height}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".mp4", dir=directory)
    os.close(fd)
    count = 0
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf), "preset": preset}
            for frame in chain([first], iterator):
                _check_frame(frame, (height, width))
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                video_frame.pts = count
                video_frame.time_base = Fraction(1, fps)
                container.mux(stream.encode(video_frame))
                count += 1
            container.mux(stream.encode(None))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a dataset file should be readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return count


def _check_frame(frame: np.ndarray, shape: tuple[int, int] | None) -> tuple[int, int]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames must be RGB uint8 arrays of shape (H, W, 3), got {got}")
    if shape is not None and frame.shape[:2] != shape:
        raise ValueError(f"all frames must have the same size: expected {shape}, got {frame.shape[:2]}")
    return frame.shape[0], frame.shape[1]
