"""Table and plots from `qwen3-mpi bench` JSON lines.

    python bench/report.py results.jsonl [--plots DIR]
Plots (matplotlib, if installed): tokens/s against prompt length, standard vs streaming, per rank
count; tokens/s against ranks, per kernel, at the longest prompt.
"""

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    latest = {}
    for r in rows:  # the last measurement of each configuration wins
        latest[(r["ranks"], r["threads_per_rank"], r["attention"], r["prompt_len"], r["gen_len"])] = r
    return sorted(latest.values(), key=lambda r: (r["ranks"], r["prompt_len"], r["attention"]))


def table(rows) -> str:
    lines = [
        "| ranks | threads/rank | attention | prompt | new | prefill tokens/s | decode tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ranks']} | {r['threads_per_rank']} | {r['attention']} | {r['prompt_len']} | "
            f"{r['gen_len']} | {r['prefill_tokens_per_s']:.1f} | {r['decode_tokens_per_s']:.2f} |"
        )
    return "\n".join(lines)


def plots(rows, directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric, label in (("prefill_tokens_per_s", "prefill"), ("decode_tokens_per_s", "decode")):
        fig, ax = plt.subplots(figsize=(6, 4))
        series = defaultdict(list)
        for r in rows:
            series[(r["ranks"], r["attention"])].append((r["prompt_len"], r[metric]))
        for (ranks, kernel), points in sorted(series.items()):
            points.sort()
            ax.plot(
                [p for p, _ in points],
                [v for _, v in points],
                marker="o",
                linestyle="-" if kernel == "streaming" else "--",
                label=f"{kernel}, {ranks} rank(s)",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(f"{label} tokens/s")
        ax.set_title(f"{label}: standard vs streaming attention")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = directory / f"{label}_vs_prompt_len.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

        longest = max(r["prompt_len"] for r in rows)
        fig, ax = plt.subplots(figsize=(6, 4))
        by_kernel = defaultdict(list)
        for r in rows:
            if r["prompt_len"] == longest:
                by_kernel[r["attention"]].append((r["ranks"], r[metric]))
        for kernel, points in sorted(by_kernel.items()):
            points.sort()
            ax.plot([n for n, _ in points], [v for _, v in points], marker="o", label=kernel)
        ax.set_xlabel("ranks")
        ax.set_ylabel(f"{label} tokens/s")
        ax.set_title(f"{label} against ranks (prompt {longest})")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = directory / f"{label}_vs_ranks.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    parser.add_argument("--plots", type=Path, help="directory for the PNG plots")
    args = parser.parse_args()
    rows = load(args.results)
    print(table(rows))
    if args.plots:
        try:
            for path in plots(rows, args.plots):
                print(f"wrote {path}")
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[bench]'): no plots")


if __name__ == "__main__":
    main()
