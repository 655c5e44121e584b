"""Charts drawn on the server as inline SVG: no script and no external asset, so they work offline and under a
Content-Security-Policy without 'unsafe-inline' (colours come from classes in dashboard.css, not style
attributes). Only numbers go into the markup; the label is escaped.

A chart says what it shows: its scale (the peak per minute, at the top of the y axis, with 0 at the bottom) and
its time span (60 min ago to now) are written on it, and each bar has a tooltip with its figures. Failed jobs
(failed, discarded and cancelled) are the red part at the foot of each bar."""
from markupsafe import Markup, escape

AXIS_WIDTH = 34  # room for the y axis' labels
LABEL_HEIGHT = 13


def bar_chart(values, failed=None, width=240, height=40, label="jobs finished per minute", axis=False):
    """One bar per value, oldest first, scaled to the largest; `failed` (same length) marks the failed part of
    each. With `axis`, a y axis (0 and the peak) and the time span below; without, the peak above (small charts)."""
    failed = failed or [0] * len(values)
    peak = max(values) if values else 0
    count = max(len(values), 1)
    left = AXIS_WIDTH if axis else 0
    top = 0 if axis else LABEL_HEIGHT
    plot = width - left
    step = plot / count
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{top + height + (LABEL_HEIGHT if axis else 0)}" '
             f'viewBox="0 0 {width} {top + height + (LABEL_HEIGHT if axis else 0)}" role="img" '
             f'aria-label="{escape(label)}: {int(sum(values))} in {count} min, {int(sum(failed))} failed, '
             f'peak {int(peak)}/min">',
             f'<line class="baseline" x1="{left}" y1="{top + height}" x2="{width}" y2="{top + height}"/>']
    for index, (value, bad) in enumerate(zip(values, failed)):
        if value:
            parts.append(_bar(index, value, bad, peak, left + index * step, step, top, height, count))
    parts += _axis(peak, count, left, width, height) if axis else _peak(peak)
    parts.append("</svg>")
    return Markup("".join(parts))


def _bar(index, value, bad, peak, x, step, top, height, count):
    bar_height = max(1.0, value / peak * height)
    bad_height = min(bar_height, max(1.0, bad / peak * height)) if bad else 0
    tip = f"{int(value)} finished" + (f", {int(bad)} failed" if bad else "") + f" ({count - index} min ago)"
    shapes = [f'<rect class="bar" x="{x:.2f}" y="{top + height - bar_height:.2f}" width="{max(step - 1, 1):.2f}" '
              f'height="{bar_height:.2f}"/>']
    if bad_height:
        shapes.append(f'<rect class="bar failed" x="{x:.2f}" y="{top + height - bad_height:.2f}" '
                      f'width="{max(step - 1, 1):.2f}" height="{bad_height:.2f}"/>')
    return f'<g><title>{tip}</title>{"".join(shapes)}</g>'


def _axis(peak, count, left, width, height):
    middle = left + (width - left) / 2
    return [f'<line class="axis-line" x1="{left}" y1="0" x2="{left}" y2="{height}"/>',
            f'<line class="grid" x1="{left}" y1="0.5" x2="{width}" y2="0.5"/>',
            f'<text class="axis" x="{left - 3}" y="9" text-anchor="end">{int(peak)}</text>',
            f'<text class="axis" x="{left - 3}" y="{height}" text-anchor="end">0</text>',
            f'<text class="axis" x="{left}" y="{height + 11}">{count} min ago</text>',
            f'<text class="axis" x="{middle:.0f}" y="{height + 11}" text-anchor="middle">{count // 2} min ago</text>',
            f'<text class="axis" x="{width}" y="{height + 11}" text-anchor="end">now</text>']


def _peak(peak):
    return [f'<text class="axis" x="0" y="10">peak {int(peak)}/min</text>'] if peak else []
