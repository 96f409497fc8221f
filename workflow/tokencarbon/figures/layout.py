"""Text that stays readable: point labels moved apart until they do not overlap, and a check that
no text of a drawn figure leaves the canvas or overlaps other text (matplotlib's own extents)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

# Text leaving the canvas by less than this many pixels is anti-aliasing, not clipping.
TOLERANCE_PX = 1.0
# Two texts closer than this read as one ("0.0142 mg0.0139"): about a space at small font sizes.
MIN_GAP_PT = 3.0


def _renderer(fig: Figure):
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # a Figure made outside pyplot has a canvas that cannot render
    fig.canvas.draw()  # runs the layout engine, so extents are the final ones
    return fig.canvas.get_renderer()


def _overlap(a: Bbox, b: Bbox, gap: float) -> bool:
    """Whether boxes a and b overlap, or come closer than `gap` pixels, on both axes."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > -gap and min(a.y1, b.y1) - max(a.y0, b.y0) > -gap


def declutter(fig: Figure, labels: Sequence[Annotation], step_pt: float = 2.0, rounds: int = 60):
    """Move annotations (offset in points from their anchor) apart until none overlaps another:
    each overlapping pair pushes its later label up (or down where that leaves the axes), a few
    points at a time. The anchor stays put; only the text's offset changes."""
    labels = [t for t in labels if t.get_visible() and t.get_text()]
    if len(labels) < 2:
        return
    renderer = _renderer(fig)
    px_per_pt = fig.dpi / 72.0
    for _ in range(rounds):
        moved = False
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i in range(len(labels)):
            for j in range(i + 1, len(labels)):
                if not _overlap(boxes[i], boxes[j], MIN_GAP_PT * px_per_pt):
                    continue
                lower, upper = (i, j) if boxes[i].y0 <= boxes[j].y0 else (j, i)
                label = labels[upper]
                x, y = label.xyann
                ax_box = label.axes.get_window_extent(renderer) if label.axes else None
                direction = 1.0
                if ax_box is not None and boxes[upper].y1 + step_pt * px_per_pt > ax_box.y1:
                    label, direction = labels[lower], -1.0
                    x, y = label.xyann
                label.xyann = (x, y + direction * step_pt)
                moved = True
        if not moved:
            return
        fig.canvas.draw()


def _drawn_tick_labels(axis: Axis) -> list[Text]:
    """The tick labels matplotlib draws: those of ticks inside the view limits (Axis._update_ticks,
    what Axis.draw itself calls), visible and non-empty."""
    ticks = axis._update_ticks()
    return [
        label
        for tick in ticks
        for label in (tick.label1, tick.label2)
        if label.get_visible() and label.get_text().strip()
    ]


def _all_tick_labels(axis: Axis) -> list[Text]:
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [label for tick in ticks for label in (tick.label1, tick.label2)]


def layout_problems(fig: Figure) -> list[str]:
    """What a reader would see garbled, as sentences (empty when the figure is clean):
    text reaching outside the canvas, tick labels of one axis overlapping each other, and any
    two texts of the figure overlapping (titles, labels, annotations, legend entries)."""
    renderer = _renderer(fig)
    canvas = fig.bbox
    gap = MIN_GAP_PT * fig.dpi / 72.0
    axes = [ax for ax in fig.axes if ax.get_visible()]
    tick_axis: dict[int, Axis] = {}  # id(label) -> its axis, for labels that are drawn
    undrawn: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            drawn = _drawn_tick_labels(axis) if ax in axes else []
            tick_axis.update({id(t): axis for t in drawn})
            undrawn.update(id(t) for t in _all_tick_labels(axis) if id(t) not in tick_axis)
    problems = []
    items = []
    for text in fig.findobj(Text):
        if id(text) in undrawn or not text.get_visible() or not text.get_text().strip():
            continue
        if text.axes is not None and not text.axes.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.width <= 0 or box.height <= 0:
            continue
        where = "figure" if text.axes is None else (text.axes.get_title() or "axes")
        items.append((text, where, box))
        if (
            box.x0 < canvas.x0 - TOLERANCE_PX
            or box.y0 < canvas.y0 - TOLERANCE_PX
            or box.x1 > canvas.x1 + TOLERANCE_PX
            or box.y1 > canvas.y1 + TOLERANCE_PX
        ):
            problems.append(f"text {text.get_text()!r} ({where}) leaves the canvas")
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (a, wa, ba), (b, wb, bb) = items[i], items[j]
            axis_a, axis_b = tick_axis.get(id(a)), tick_axis.get(id(b))
            if axis_a is not None and axis_a is axis_b:
                # Neighbouring labels of one axis must keep a space between them.
                if _overlap(ba, bb, gap):
                    problems.append(
                        f"tick labels {a.get_text()!r} and {b.get_text()!r} of one axis overlap "
                        f"or touch ({wa})"
                    )
            elif _overlap(ba, bb, 0.0):
                problems.append(f"texts {a.get_text()!r} ({wa}) and {b.get_text()!r} ({wb}) overlap")
    return problems
