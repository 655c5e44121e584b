"""Charts drawn on the server as inline SVG: no script and no external asset, so they work offline and under a
Content-Security-Policy without 'unsafe-inline' (colours come from classes in dashboard.css, not style
attributes). Only numbers go into the markup; the label is escaped."""
from markupsafe import Markup, escape


def bar_chart(values, width=240, height=40, label="jobs finished per minute", axis=False):
    """One bar per value, oldest first, scaled to the largest; with `axis`, the peak and the time span below."""
    peak = max(values) if values else 0
    count = max(len(values), 1)
    step = width / count
    bars = []
    for index, value in enumerate(values):
        if not value:
            continue
        bar_height = max(1.0, value / peak * height)
        bars.append(f'<rect class="bar" x="{index * step:.2f}" y="{height - bar_height:.2f}" '
                    f'width="{max(step - 1, 1):.2f}" height="{bar_height:.2f}"><title>{int(value)} '
                    f'({count - index} min ago)</title></rect>')
    total = sum(values)
    extra = 14 if axis else 0
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + extra}" '
             f'viewBox="0 0 {width} {height + extra}" role="img" aria-label="{escape(label)}: {int(total)} in '
             f'{count} min">',
             f'<line class="baseline" x1="0" y1="{height}" x2="{width}" y2="{height}"/>', *bars]
    if axis:
        parts.append(f'<text class="axis" x="0" y="{height + 12}">{count} min ago</text>')
        parts.append(f'<text class="axis" x="{width / 2:.0f}" y="{height + 12}" text-anchor="middle">'
                     f'peak {int(peak)}/min</text>')
        parts.append(f'<text class="axis" x="{width}" y="{height + 12}" text-anchor="end">now</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
