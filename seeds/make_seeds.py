"""Draw the 10 demo seed images and write ``demo.jsonl`` in MMEvol's native seed format.

Run from anywhere: ``python seeds/make_seeds.py``. Output is deterministic (no randomness) and goes next to
this file: ``images/demo-NNN.{png,jpg}`` plus ``demo.jsonl``. Every question, caption and box below describes
exactly what the drawing code draws; bounding boxes are derived from the same pixel coordinates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

W, H = 320, 240
HERE = Path(__file__).resolve().parent
IMAGE_DIR = HERE / "images"
OUT_JSONL = HERE / "demo.jsonl"

Box = tuple[int, int, int, int]
Dets = list[tuple[str, Box]]
Step = tuple[str, str]


@dataclass
class QA:
    """One seed question with its answer, object/skill tags and optional manipulation steps."""

    question: str
    answer: str
    objects: list[str]
    skills: list[str]
    steps: list[Step] = field(default_factory=list)


@dataclass
class Scene:
    """A drawn scene plus the honest text that goes with it."""

    draw: Callable[[], tuple[Image.Image, Dets]]
    qas: list[QA]
    caption: str | None  # None => caption [] and det [] (as in the imageless-annotation real seeds)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in default font at the given size."""
    return ImageFont.load_default(size=size)


def canvas(color: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A new RGB image filled with one colour and a drawing context on it."""
    img = Image.new("RGB", (W, H), color)
    return img, ImageDraw.Draw(img)


def centered_text(
    d: ImageDraw.ImageDraw, cx: float, cy: float, text: str, size: int, fill: tuple[int, int, int]
) -> None:
    """Draw text centred on (cx, cy)."""
    d.text((cx, cy), text, font=font(size), fill=fill, anchor="mm")


# ----------------------------------------------------------------------------- scenes


def street() -> tuple[Image.Image, Dets]:
    """A red car on a road with a green tree on the sidewalk to its left, sun in the sky."""
    img, d = canvas((135, 206, 235))
    d.rectangle((0, 140, W, 165), fill=(200, 200, 200))  # sidewalk
    d.rectangle((0, 165, W, H), fill=(100, 100, 100))  # road
    for x in range(10, W, 50):
        d.rectangle((x, 230, x + 26, 233), fill=(255, 255, 255))  # lane dashes
    d.ellipse((248, 18, 292, 62), fill=(255, 215, 0))  # sun
    d.rectangle((52, 95, 66, 160), fill=(110, 70, 30))  # trunk
    d.ellipse((25, 35, 95, 110), fill=(40, 150, 50))  # canopy
    red = (210, 30, 30)
    d.rectangle((175, 145, 245, 172), fill=red)  # cabin
    d.rectangle((182, 150, 207, 168), fill=(190, 230, 255))
    d.rectangle((213, 150, 238, 168), fill=(190, 230, 255))
    d.rectangle((150, 170, 270, 205), fill=red)  # body
    d.ellipse((163, 192, 193, 222), fill=(20, 20, 20))
    d.ellipse((227, 192, 257, 222), fill=(20, 20, 20))
    return img, [("tree", (25, 35, 95, 160)), ("car", (150, 145, 270, 222))]


def cups() -> tuple[Image.Image, Dets]:
    """Three cups (red, blue, green, left to right) on a brown wooden table."""
    img, d = canvas((245, 235, 215))
    brown = (139, 90, 43)
    d.rectangle((30, 140, 290, 160), fill=brown)
    d.rectangle((45, 160, 60, 235), fill=brown)
    d.rectangle((260, 160, 275, 235), fill=brown)
    dets: Dets = [("dining table", (30, 140, 290, 235))]
    for x1, color in ((60, (200, 40, 40)), (140, (40, 80, 200)), (220, (40, 160, 70))):
        x2 = x1 + 40
        d.ellipse((x2 - 8, 103, x2 + 14, 130), outline=color, width=5)  # handle on the right
        d.rectangle((x1, 95, x2, 140), fill=color)
        dets.append(("cup", (x1, 95, x2 + 14, 140)))
    return img, dets


def park() -> tuple[Image.Image, Dets]:
    """A brown park bench on grass with a brown dog standing to its right, one cloud in the sky."""
    img, d = canvas((170, 215, 245))
    d.rectangle((0, 130, W, H), fill=(90, 170, 70))
    for box in ((200, 32, 250, 60), (225, 22, 270, 55), (245, 35, 290, 62)):
        d.ellipse(box, fill=(255, 255, 255))  # cloud
    wood = (120, 72, 30)
    d.rectangle((40, 118, 170, 128), fill=wood)  # backrest slats
    d.rectangle((40, 133, 170, 143), fill=wood)
    d.rectangle((50, 118, 56, 162), fill=wood)  # back posts
    d.rectangle((154, 118, 160, 162), fill=wood)
    d.rectangle((40, 150, 170, 162), fill=wood)  # seat
    d.rectangle((48, 162, 56, 195), fill=wood)  # legs
    d.rectangle((154, 162, 162, 195), fill=wood)
    dog = (150, 100, 50)
    d.line((207, 158, 190, 138), fill=dog, width=5)  # tail
    for x in (212, 225, 245, 256):
        d.rectangle((x, 175, x + 6, 205), fill=dog)  # four legs
    d.ellipse((205, 150, 265, 180), fill=dog)  # body
    d.ellipse((255, 128, 285, 158), fill=dog)  # head, on the right
    d.ellipse((257, 124, 268, 144), fill=(90, 55, 25))  # ear
    d.ellipse((272, 137, 276, 141), fill=(0, 0, 0))  # eye
    d.ellipse((281, 143, 287, 149), fill=(0, 0, 0))  # nose
    return img, [("bench", (40, 118, 170, 195)), ("dog", (190, 124, 287, 205))]


def sign() -> tuple[Image.Image, Dets]:
    """A white sign with a red border on a grey post, reading "OPEN 9-5" in black."""
    img, d = canvas((200, 225, 245))
    d.rectangle((0, 210, W, H), fill=(150, 150, 150))  # pavement
    d.rectangle((155, 140, 165, 225), fill=(120, 120, 120))  # post
    d.rectangle((60, 50, 260, 140), fill=(255, 255, 255), outline=(210, 30, 30), width=6)
    centered_text(d, 160, 95, "OPEN 9-5", 36, (0, 0, 0))
    return img, [("sign", (60, 50, 260, 140))]


def bar_chart() -> tuple[Image.Image, Dets]:
    """A bar chart titled "Sales by team" with bars A=3, B=5, C=8, D=2."""
    img, d = canvas((255, 255, 255))
    x0, y0, unit = 50, 200, 20
    for v in range(0, 9, 2):
        y = y0 - v * unit
        d.line((x0, y, 300, y), fill=(220, 220, 220), width=1)
        centered_text(d, 35, y, str(v), 14, (0, 0, 0))
    centered_text(d, 175, 18, "Sales by team", 16, (0, 0, 0))
    bars = (
        ("A", 3, (40, 90, 200)),
        ("B", 5, (240, 140, 30)),
        ("C", 8, (40, 160, 70)),
        ("D", 2, (140, 60, 170)),
    )
    dets: Dets = []
    for i, (name, value, color) in enumerate(bars):
        cx = 90 + 55 * i
        box = (cx - 18, y0 - value * unit, cx + 18, y0)
        d.rectangle(box, fill=color)
        centered_text(d, cx, 215, name, 16, (0, 0, 0))
        dets.append((f"bar {name}", box))
    d.line((x0, 30, x0, y0), fill=(0, 0, 0), width=2)
    d.line((x0, y0, 300, y0), fill=(0, 0, 0), width=2)
    return img, dets


def shapes() -> tuple[Image.Image, Dets]:
    """Four shapes in a row: red circle, blue square, green triangle, yellow diamond."""
    img, d = canvas((250, 250, 250))
    d.ellipse((24, 92, 80, 148), fill=(220, 30, 30))
    d.rectangle((100, 92, 156, 148), fill=(30, 70, 210))
    d.polygon(((176, 148), (204, 92), (232, 148)), fill=(30, 160, 60))
    d.polygon(((280, 92), (308, 120), (280, 148), (252, 120)), fill=(240, 200, 0), outline=(120, 100, 0))
    return img, [
        ("circle", (24, 92, 80, 148)),
        ("square", (100, 92, 156, 148)),
        ("triangle", (176, 92, 232, 148)),
        ("diamond", (252, 92, 308, 148)),
    ]


def clock() -> tuple[Image.Image, Dets]:
    """A round wall clock showing 3:00: hour hand at 3, minute hand at 12."""
    img, d = canvas((230, 230, 240))
    cx, cy, r = 160, 120, 95
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 255, 255), outline=(0, 0, 0), width=6)
    ticks = [
        (0, -1),
        (0.5, -0.866),
        (0.866, -0.5),
        (1, 0),
        (0.866, 0.5),
        (0.5, 0.866),
        (0, 1),
        (-0.5, 0.866),
        (-0.866, 0.5),
        (-1, 0),
        (-0.866, -0.5),
        (-0.5, -0.866),
    ]
    for dx, dy in ticks:
        d.line((cx + dx * 80, cy + dy * 80, cx + dx * 88, cy + dy * 88), fill=(0, 0, 0), width=3)
    for label, dx, dy in (("12", 0, -1), ("3", 1, 0), ("6", 0, 1), ("9", -1, 0)):
        centered_text(d, cx + dx * 64, cy + dy * 64, label, 22, (0, 0, 0))
    d.line((cx, cy, cx + 40, cy), fill=(0, 0, 0), width=8)  # hour hand -> 3
    d.line((cx, cy, cx, cy - 50), fill=(0, 0, 0), width=4)  # minute hand -> 12
    d.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=(200, 0, 0))
    return img, [("clock", (cx - r, cy - r, cx + r, cy + r))]


def house() -> tuple[Image.Image, Dets]:
    """A beige house with a red roof, a brown door in the middle and two blue windows."""
    img, d = canvas((180, 220, 250))
    d.rectangle((0, 200, W, H), fill=(100, 180, 80))
    d.rectangle((80, 110, 240, 200), fill=(235, 215, 170))
    d.polygon(((65, 110), (160, 45), (255, 110)), fill=(190, 40, 40))
    d.rectangle((145, 150, 175, 200), fill=(110, 65, 30))
    d.ellipse((167, 174, 171, 178), fill=(230, 200, 60))  # door knob
    dets: Dets = [("house", (65, 45, 255, 200)), ("door", (145, 150, 175, 200))]
    for x1 in (97, 188):
        box = (x1, 130, x1 + 35, 165)
        d.rectangle(box, fill=(150, 200, 240), outline=(255, 255, 255), width=3)
        d.line((x1 + 17, 130, x1 + 17, 165), fill=(255, 255, 255), width=3)
        d.line((x1, 147, x1 + 35, 147), fill=(255, 255, 255), width=3)
        dets.append(("window", box))
    return img, dets


def traffic_light() -> tuple[Image.Image, Dets]:
    """A three-lamp traffic light on a pole with only the top (red) lamp lit."""
    img, d = canvas((200, 225, 245))
    d.rectangle((152, 170, 168, H), fill=(70, 70, 70))
    d.rounded_rectangle((125, 20, 195, 175), radius=12, fill=(40, 40, 40))
    for cy, color in ((47, (255, 30, 30)), (97, (90, 70, 20)), (147, (20, 70, 30))):
        d.ellipse((140, cy - 20, 180, cy + 20), fill=color)
    return img, [("traffic light", (125, 20, 195, 175))]


BOOKS_TOP = ((200, 40, 40), (40, 80, 200), (40, 160, 70), (230, 190, 30), (130, 60, 160))
BOOKS_BOTTOM = ((240, 130, 30), (30, 150, 150), (30, 40, 110))


def bookshelf() -> tuple[Image.Image, Dets]:
    """A brown two-shelf bookcase: five books on the top shelf, three on the bottom shelf."""
    img, d = canvas((240, 230, 210))
    d.rectangle((60, 20, 260, 230), fill=(120, 75, 35))
    d.rectangle((70, 30, 250, 120), fill=(80, 50, 25))
    d.rectangle((70, 130, 250, 220), fill=(80, 50, 25))
    dets: Dets = [("bookshelf", (60, 20, 260, 230))]
    for i, color in enumerate(BOOKS_TOP):
        x1, top = 78 + 26 * i, 45 + (i % 3) * 6
        box = (x1, top, x1 + 22, 120)
        d.rectangle(box, fill=color)
        dets.append(("book", box))
    for i, color in enumerate(BOOKS_BOTTOM):
        x1, top = 78 + 30 * i, 148 + (i % 2) * 8
        box = (x1, top, x1 + 26, 220)
        d.rectangle(box, fill=color)
        dets.append(("book", box))
    return img, dets


# ----------------------------------------------------------------------------- text

SCENES: list[Scene] = [
    Scene(
        street,
        [
            QA(
                "What colour is the car in the image?",
                "The car is red.",
                ["car"],
                ["Referencing"],
            ),
            QA(
                "Is the tree to the left or to the right of the car?",
                "The tree is to the left of the car.",
                ["tree", "car"],
                ["Relationship Description"],
            ),
            QA(
                "How many wheels of the car are visible?",
                "Two wheels of the car are visible.",
                ["car", "wheel"],
                ["Calculating"],
            ),
            QA(
                "Is it day or night in this scene?",
                (
                    "It is daytime: the sky is light blue and a yellow sun is shining in the "
                    "upper right corner."
                ),
                ["sky", "sun"],
                ["Context Understanding"],
            ),
        ],
        (
            "The image is a simple illustration of a street on a sunny day. The upper "
            "part is a light blue sky with a yellow sun in the upper right corner. Below "
            "it runs a light grey sidewalk and then a dark grey road with white lane "
            "dashes along the bottom edge. On the left side of the sidewalk stands a tree"
            " with a brown trunk and a round green crown. On the road, to the right of "
            "the tree, is a red car seen from the side, with two light blue windows in "
            "its cabin and two black wheels."
        ),
    ),
    Scene(
        cups,
        [
            QA(
                "How many cups are on the table?",
                "There are three cups on the table.",
                ["cup", "dining table"],
                ["Calculating"],
            ),
            QA(
                "What colour is the cup in the middle?",
                "The cup in the middle is blue.",
                ["cup"],
                ["Referencing"],
            ),
            QA(
                "What colour is the cup on the far right?",
                "The cup on the far right is green.",
                ["cup"],
                ["Grounding", "Referencing"],
            ),
            QA(
                "On which side are the cup handles?",
                "All three cups have their handles on the right side.",
                ["cup", "handle"],
                ["Relationship Description"],
            ),
        ],
        (
            "The image shows a brown wooden table with two legs against a cream-coloured "
            "wall. Three cups stand in a row on the table top, evenly spaced: a red cup "
            "on the left, a blue cup in the middle and a green cup on the right. Each cup"
            " is a plain straight-sided mug with a ring-shaped handle on its right side."
        ),
    ),
    Scene(
        park,
        [
            QA(
                "What kind of seat is shown in the park?",
                "A brown wooden park bench with a two-slat backrest.",
                ["bench"],
                ["Existence", "Referencing"],
            ),
            QA(
                "Where is the dog relative to the bench?",
                "The dog is standing on the grass to the right of the bench.",
                ["dog", "bench"],
                ["Relationship Description"],
            ),
            QA(
                "Which direction is the dog facing?",
                (
                    "The dog is facing to the right; its head is on the right end of its body and"
                    " its tail is on the left."
                ),
                ["dog"],
                ["Grounding"],
            ),
            QA(
                "How many legs does the dog have in the picture?",
                "The dog has four legs visible.",
                ["dog", "leg"],
                ["Calculating"],
            ),
        ],
        (
            "The image shows a simple park scene. The lower half is green grass and the "
            "upper half is a pale blue sky with a single white cloud on the right. On the"
            " left stands an empty brown wooden bench with a seat, a backrest made of two"
            " horizontal slats and two legs. To the right of the bench a brown dog stands"
            " on the grass on four legs, facing right, with a dark ear, a black eye and "
            "nose, and its tail raised behind it."
        ),
    ),
    Scene(
        sign,
        [
            QA(
                "What text is written on the sign?",
                'The sign says "OPEN 9-5".',
                ["sign", "text"],
                ["OCR"],
                [
                    (
                        "Grounding_1(sign)->bbx_1",
                        "Locate the white rectangular sign in the upper middle of the image.",
                    ),
                    ("OCR_1(bbx_1)->txt_1", 'Read the black text on the sign, which is "OPEN 9-5".'),
                ],
            ),
            QA(
                "What colour is the border of the sign?",
                "The border of the sign is red.",
                ["sign"],
                ["Referencing"],
            ),
            QA(
                ("If the hours on the sign mean 9 am to 5 pm, how many hours a day is the place open?"),
                "It is open for 8 hours a day, from 9 to 5.",
                ["sign", "text"],
                ["OCR", "Calculating"],
                [
                    ("OCR_1(sign)->txt_1", 'The sign reads "OPEN 9-5", so it opens at 9 and closes at 5.'),
                    ("Calculate(17 - 9)->res_1", "From 9:00 to 17:00 is 8 hours."),
                ],
            ),
        ],
        (
            "The image shows a rectangular white sign with a thick red border, mounted on"
            " a grey post that stands on a grey pavement in front of a pale blue "
            'background. The sign carries the text "OPEN 9-5" in large black capital '
            "letters, centred on the board."
        ),
    ),
    Scene(
        bar_chart,
        [
            QA(
                "How many bars are in the chart?",
                "There are four bars, labelled A, B, C and D.",
                ["bar"],
                ["Calculating"],
            ),
            QA(
                "Which bar is the tallest and what value does it reach?",
                "Bar C is the tallest; it reaches 8.",
                ["bar", "axis"],
                ["Grounding", "OCR"],
            ),
            QA(
                "What is the sum of the values of bars A and B?",
                "Bar A is 3 and bar B is 5, so the sum is 8.",
                ["bar"],
                ["OCR", "Calculating"],
                [
                    (
                        "OCR_1(y axis)->txt_1",
                        "Read the y-axis ticks 0, 2, 4, 6 and 8 next to the grid lines.",
                    ),
                    ("Calculate(A + B)->res_1", "Bar A ends at 3 and bar B ends at 5; 3 + 5 = 8."),
                ],
            ),
        ],
        None,
    ),
    Scene(
        shapes,
        [
            QA(
                "How many shapes are there in the image?",
                "There are four shapes.",
                ["shape"],
                ["Calculating"],
            ),
            QA(
                "What colour is the triangle?",
                "The triangle is green.",
                ["triangle"],
                ["Referencing"],
            ),
            QA(
                "Which shape is second from the left, and what colour is it?",
                "The second shape from the left is a blue square.",
                ["square"],
                ["Grounding", "Referencing"],
            ),
            QA(
                "Which shape is on the far right?",
                "A yellow diamond is on the far right.",
                ["diamond"],
                ["Grounding"],
            ),
        ],
        (
            "The image shows four flat coloured shapes of equal size arranged in a "
            "horizontal row across the middle of an off-white background. From left to "
            "right they are a red circle, a blue square, a green triangle pointing upward"
            " and a yellow diamond with a thin dark outline."
        ),
    ),
    Scene(
        clock,
        [
            QA(
                "What time does the clock show?",
                (
                    "The clock shows 3:00: the short hour hand points to the 3 and the long "
                    "minute hand points straight up to the 12."
                ),
                ["clock", "clock hand"],
                ["OCR", "Grounding"],
            ),
        ],
        (
            "The image shows a round analogue clock with a thick black rim and a white "
            "face on a pale grey background. It has twelve tick marks and the numbers 12,"
            " 3, 6 and 9. The short thick hour hand points right at the 3 and the long "
            "thin minute hand points up at the 12, so the time is 3 o'clock. A small red "
            "dot covers the centre where the hands meet."
        ),
    ),
    Scene(
        house,
        [
            QA(
                "How many windows does the house have?",
                "The house has two windows.",
                ["window", "house"],
                ["Calculating"],
            ),
            QA(
                "What colour is the roof?",
                "The roof is red and triangular.",
                ["roof"],
                ["Referencing"],
            ),
            QA(
                "Where is the door located?",
                "The brown door is in the middle of the front wall, between the two windows.",
                ["door", "window"],
                ["Relationship Description"],
            ),
        ],
        (
            "The image shows a simple house standing on green grass under a light blue "
            "sky. The house has beige walls and a red triangular roof. In the middle of "
            "the front wall is a brown door with a small yellow knob, and on either side "
            "of it is a square light blue window divided into four panes by a white "
            "cross."
        ),
    ),
    Scene(
        traffic_light,
        [
            QA(
                "Which light is currently lit?",
                "The top light is lit, and it is red.",
                ["traffic light"],
                ["Grounding", "Referencing"],
            ),
            QA(
                "What should a driver facing this traffic light do?",
                "The driver should stop, because the red light is on.",
                ["traffic light"],
                ["Behavior Prediction"],
            ),
            QA(
                "How many lamps does the traffic light have?",
                "It has three lamps arranged vertically.",
                ["traffic light"],
                ["Calculating"],
            ),
        ],
        None,
    ),
    Scene(
        bookshelf,
        [
            QA(
                "How many books are on the top shelf?",
                "There are five books on the top shelf.",
                ["book", "shelf"],
                ["Calculating"],
            ),
            QA(
                "How many books are on the bookshelf in total?",
                "There are eight books in total.",
                ["book"],
                ["Calculating"],
                [
                    ("Grounding_1(top shelf)->bbx_1", "Count the books on the top shelf: 5."),
                    ("Grounding_2(bottom shelf)->bbx_2", "Count the books on the bottom shelf: 3."),
                    ("Calculate(5 + 3)->res_1", "5 + 3 = 8 books."),
                ],
            ),
            QA(
                "What colour is the leftmost book on the top shelf?",
                "It is red.",
                ["book"],
                ["Grounding"],
            ),
            QA(
                "Which shelf has more empty space?",
                ("The bottom shelf, which holds only three books and is empty on its right side."),
                ["shelf", "book"],
                ["Relationship Description"],
            ),
        ],
        (
            "The image shows a brown wooden bookcase with two shelves against a beige "
            "wall. The top shelf holds five upright books of slightly different heights, "
            "coloured from left to right red, blue, green, yellow and purple, which fill "
            "most of the shelf. The bottom shelf holds three books, orange, teal and dark"
            " blue, on its left side, leaving the right half of the shelf empty."
        ),
    ),
]


def norm(box: Box) -> list[float]:
    """Pixel box -> [x1, y1, x2, y2] normalised to 0-1."""
    x1, y1, x2, y2 = box
    return [round(x1 / W, 4), round(y1 / H, 4), round(x2 / W, 4), round(y2 / H, 4)]


def save(img: Image.Image, path: Path) -> None:
    """Save as optimised palette PNG or JPEG (quality 80) depending on the suffix."""
    if path.suffix == ".png":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, optimize=True)
    else:
        img.save(path, quality=80, optimize=True)


def record(index: int, scene: Scene) -> dict[str, Any]:
    """Draw one scene, save its image and return its seed record."""
    sid = f"demo-{index + 1:03d}"
    rel = f"images/{sid}.{'png' if index % 2 == 0 else 'jpg'}"
    img, dets = scene.draw()
    save(img, HERE / rel)
    convs = [
        {
            "image_position": "single",
            "objects": qa.objects,
            "skills": qa.skills,
            "format": "Norm",
            "question": qa.question,
            "steps": [{"manipulation": m, "description": t} for m, t in qa.steps],
            "answer": qa.answer,
        }
        for qa in scene.qas
    ]
    caption: list[dict[str, str]] = []
    det: list[dict[str, Any]] = []
    if scene.caption is not None:
        caption = [
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": scene.caption},
        ]
        det = [{"label": label, "bbox": norm(box)} for label, box in dets]
    return {
        "id": sid,
        "image": rel,
        "conversations_v0": convs,
        "caption": caption,
        "det": det,
        "hash_id": f"{index}_{rel.replace('/', '_')}",
    }


def main() -> None:
    """Regenerate all images and demo.jsonl."""
    IMAGE_DIR.mkdir(exist_ok=True)
    with OUT_JSONL.open("w", encoding="utf-8") as fh:
        for i, scene in enumerate(SCENES):
            fh.write(json.dumps(record(i, scene), ensure_ascii=False) + "\n")
    print(f"wrote {len(SCENES)} images to {IMAGE_DIR} and {OUT_JSONL}")


if __name__ == "__main__":
    main()
