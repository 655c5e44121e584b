"""`python -m benchmarks.profile_summary FILE.speedscope.json [--top N] [--filter TEXT]`: what a py-spy
speedscope profile (from `python -m benchmarks noop --profile DIR`) says, as text.

Prints the number of samples, then the functions with the most self time and the most inclusive time
(a function counted once per sample however deep it recurses), as a share of all samples. py-spy records
only samples where the thread was active (not waiting in epoll), so 100 % is the worker's CPU time.
"""
import argparse
import collections
import json
import sys

# Frames that mark the worker's start-up (imports, command line parsing), not the drain.
STARTUP = ("_find_and_load", "(exekutor/cli/")


def load(path):
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    frames = data["shared"]["frames"]
    stacks, weights = [], []
    for profile in data["profiles"]:
        if profile.get("type") == "sampled":
            stacks.extend(profile["samples"])
            weights.extend(profile.get("weights") or [1] * len(profile["samples"]))
    return frames, stacks, weights


def label(frame, lines=False):
    name = frame.get("name", "?")
    file = frame.get("file") or ""
    short = file.split("site-packages/")[-1].split("/lib/python3")[-1]
    if "/exekutor/" in short:
        short = "exekutor/" + short.split("/exekutor/", 1)[1]
    line = frame.get("line")
    return f"{name} ({short}{':' + str(line) if line and lines else ''})"


def summarize(path, top=25, text_filter=None, exclude=(), lines=False):
    frames, stacks, weights = load(path)
    self_time = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    for stack, weight in zip(stacks, weights):
        labels = [label(frames[i], lines) for i in stack]
        if text_filter and not any(text_filter in name for name in labels):
            continue
        if any(text in name for text in exclude for name in labels):
            continue
        total += weight
        if labels:
            self_time[labels[-1]] += weight
        for name in set(labels):
            inclusive[name] += weight
    print(f"{path}: {total:.2f} s of CPU samples" + (f", only stacks with {text_filter!r}" if text_filter else "")
          + (f", without stacks with {', '.join(map(repr, exclude))}" if exclude else ""))
    for title, counter in (("self", self_time), ("inclusive", inclusive)):
        print(f"\n-- top {top} by {title} time --")
        for name, weight in counter.most_common(top):
            print(f"{100.0 * weight / total:6.1f}%  {name}")


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_summary")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default=None, help="only samples whose stack has a frame containing TEXT")
    parser.add_argument("--exclude", action="append", default=None,
                        help="leave out samples whose stack has a frame containing TEXT (repeatable; default: "
                             "the start-up, i.e. '_find_and_load' and 'exekutor/cli/'; --exclude '' keeps all)")
    parser.add_argument("--lines", action="store_true", help="per line instead of per function")
    args = parser.parse_args(argv)
    exclude = [t for t in (args.exclude if args.exclude is not None else STARTUP) if t]
    for path in args.files:
        summarize(path, args.top, args.filter, exclude, args.lines)


if __name__ == "__main__":
    main(sys.argv[1:])
