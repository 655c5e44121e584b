"""The table printed at the end and the JSON written to benchmarks/results/."""
import datetime as _dt
import os

from benchmarks import harness

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _number(value, unit):
    if value is None:
        return "-"
    if unit in ("jobs/s", "jobs/CPU-s"):
        return f"{value:,.0f}"
    if unit in ("ms", "%", "MB"):
        return f"{value:.2f}" if unit == "ms" else f"{value:.1f}"
    if unit == "ratio":
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:g}"


def _target_text(target, unit):
    if target is None:
        return ""
    op, value = target
    shown = f"{value:,.0f}" if unit == "jobs/s" else (f"{value:g}")
    return f"{op} {shown} {unit}" if unit not in ("ratio",) else f"{op} {value:.2f}"


def passes(target, value):
    if target is None or value is None:
        return None
    op, bound = target
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound, ">": value > bound}[op]


def finish_figures(ctx):
    """Ratios to the bare loop, the derived no-op/bare row, pass/miss."""
    bare = ctx.bare["median"] if ctx.bare else None
    figures = list(ctx.figures)
    noop = next((f for f in figures if f["key"] == "noop"), None)
    if noop and bare and noop["median"]:
        index = figures.index(noop) + 1
        figures.insert(index, {
            "key": "noop_vs_bare", "label": f"no-op / bare loop (batch {ctx.bare_batch})", "unit": "%",
            "median": noop["median"] / bare * 100, "min": noop["min"] / bare * 100, "max": noop["max"] / bare * 100,
            "runs": noop["runs"], "values": [v / bare * 100 for v in noop["values"]], "target": (">=", 30.0),
            "throughput": False, "reference": None, "partial": noop["partial"]})
    for figure in figures:
        figure["ratio_to_bare"] = (figure["median"] / bare
                                   if figure["throughput"] and bare and figure["median"] is not None else None)
        figure["pass"] = passes(figure["target"], figure["median"])
    return figures


def table(ctx, figures, meta):
    lines = []
    pg, machine = meta["postgres"], meta["machine"]
    mode = "quick (1 run each, smaller counts)" if ctx.quick else f"full ({ctx.runs} runs each)"
    lines.append(f"exekutor benchmarks  {meta['started_at']}  {mode}  {meta['duration_s']:.0f}s")
    settings = " ".join(f"{k}={pg.get(k)}" for k in ("shared_buffers", "synchronous_commit", "fsync",
                                                       "max_connections", "work_mem"))
    lines.append(f"PostgreSQL {pg.get('version')} at {meta['database']}: {settings}")
    lines.append(f"machine: {machine.get('cores')} cores ({machine.get('cpu', '?')}), {machine.get('memory_gb')} GB, "
                 f"Python {machine.get('python')}; load average {machine['loadavg_at_start'][0]:.2f} at start, "
                 f"{meta['loadavg_at_end'][0]:.2f} at end")
    if meta.get("busy_processes_at_start"):
        busy = ", ".join(f"pid {p['pid']} {p['cpu_percent']:.0f}%" for p in meta["busy_processes_at_start"][:4])
        lines.append(f"WARNING: other processes were using the CPU at start ({busy}): figures may be low")
    if ctx.bare:
        lines.append(f"'vs bare' = median / the bare loop's median (batch {ctx.bare_batch}: "
                     f"{ctx.bare['median']:,.0f} jobs/s)")
    header = ("Figure", "Median", "Min", "Max", "Runs", "vs bare", "Target", "Result")
    rows = []
    for f in figures:
        result = {True: "pass", False: "MISS", None: ""}[f["pass"]]
        if not f["target"] and f.get("reference"):
            result = f"ref: {f['reference']}"
        if f.get("partial"):
            result = (result + " (partial)").strip()
        elif f.get("overrun"):
            result = (result + " (budget: fewer runs)").strip()
        unit = f["unit"]
        rows.append((f"{f['label']} [{unit}]", _number(f["median"], unit), _number(f["min"], unit),
                     _number(f["max"], unit), str(f["runs"]),
                     f"{f['ratio_to_bare']:.2f}" if f["ratio_to_bare"] is not None else "",
                     _target_text(f["target"], unit), result))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    def fmt(row):
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:6], widths[1:6])]
        cells += [str(row[6]).ljust(widths[6]), str(row[7])]
        return "  ".join(cells).rstrip()
    lines.append("")
    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in rows)
    if ctx.results.get("peers", {}).get("comparison"):
        lines.extend(peer_table(ctx.results["peers"]))
    if ctx.errors:
        lines.append("")
        for name, error in ctx.errors.items():
            lines.append(f"scenario {name} FAILED: {error.splitlines()[0] if error else ''}")
    return "\n".join(lines)


def peer_table(peers):
    """The side-by-side comparison of `python -m benchmarks peers` (medians; the ratio is exekutor / PgQueuer)."""
    header = ("Figure", "PgQueuer", "exekutor", "ratio", "Goal", "Result")
    rows = [(f"{row['label']} [{row['unit']}]", _number(row["pgqueuer"], row["unit"]),
             _number(row["exekutor"], row["unit"]), f"{row['ratio']:.2f}x" if row["ratio"] else "-", row["goal"],
             {True: "pass", False: "MISS", None: ""}[row["pass"]]) for row in peers["comparison"]]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def fmt(row):
        return "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:4], widths[1:4])]
                         + [row[4].ljust(widths[4]), row[5]]).rstrip()

    title = (f"PgQueuer {peers['pgqueuer_version']} vs exekutor, {peers['repetitions']} interleaved "
             f"repetition(s), medians")
    return ["", title, fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def save(data, stamp):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{stamp}.json")
    harness.dump_json(path, data)
    harness.dump_json(os.path.join(RESULTS_DIR, "latest.json"), data)
    return path


def timestamp():
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
