"""`python -m bench`: the benchmarks of issue 4, and HubSpot's of issue 9 (`--only hubspot`), in
one command.

    python -m bench --quick        # smoke check, about two minutes
    python -m bench                # the full run (about 25 minutes on 2 cores): publishes docs/

Starts an embedded PostgreSQL and the sandbox APIs in this process, runs crmsyncd (and the
guide's loop, bench/baseline.py) as separate processes against them, and writes
bench/results/<mode>-<time>.{json,md}; the full run also updates docs/benchmarks.md and
docs/benchmarks.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import Postgres, scratch_dir, snapshot_source
from bench.hubspot import hubspot_initial
from bench.report import machine_facts, publish, render_markdown, write_plot
from bench.scenarios import FULL, QUICK, Bench, Plan

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("initial", "limited", "paced", "scale", "hubspot")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data sets: a smoke check (~2 min)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this part (repeatable)")
    parser.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md and docs/benchmarks.png (default: on for the full run)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="results directory")
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS.json",
        help="run nothing: write the markdown and the plot again from a results file",
    )
    return parser.parse_args(argv)


async def run(plan: Plan, only: set[str], out_dir: Path, stamp: str) -> dict[str, Any]:
    def say(text: str) -> None:
        print(text, flush=True)

    work = scratch_dir()
    source = snapshot_source(work / "src")
    logs = out_dir / "logs" / f"{plan.mode}-{stamp}"
    pg = Postgres(work)
    await pg.start()
    results: dict[str, Any] = {"mode": plan.mode, "started": stamp}
    try:
        results["machine"] = machine_facts()
        results["machine"]["snapshot"] = f"{source.digest} ({source.files} files)"
        results["postgres"] = await pg.settings()
        results["plan"] = {name: getattr(plan, name) for name in plan.__dataclass_fields__}
        bench = Bench(plan, pg, logs, say, source)
        started = time.monotonic()
        if "initial" in only:
            say("2/4. initial sync at 20 ms latency: baseline and crmsyncd; then quiet passes")
            results["initial"] = await bench.initial_and_quiet()
        if "limited" in only:
            say("3. rate-limited sync")
            results["limited"] = await bench.rate_limited()
        if "paced" in only:
            say("3b. pace set by the server's rate-limit headers")
            results["paced"] = await bench.paced_by_headers()
        if "scale" in only:
            say("5. scale and memory")
            results["scale"] = await bench.scale()
        if "hubspot" in only:
            say("6. HubSpot: initial sync against the HubSpot sandbox at HubSpot's limits")
            results["hubspot"] = await hubspot_initial(bench)
        results["bench_seconds"] = time.monotonic() - started
        results["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        await pg.stop()
        shutil.rmtree(work, ignore_errors=True)  # the database files: gigabytes after a full run
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render_again(args.render, bool(args.publish))
    plan = QUICK if args.quick else FULL
    only = set(args.only or SECTIONS)
    publish_docs = args.publish if args.publish is not None else (not args.quick and only == set(SECTIONS))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    results = asyncio.run(run(plan, only, out_dir, stamp))
    base = out_dir / f"{plan.mode}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    plot = write_plot(results, base.with_suffix(".png"))
    markdown = render_markdown(results)
    base.with_suffix(".md").write_text(markdown)
    print()
    print(markdown)
    print(f"results: {base}.md, {base}.json" + (f", {plot}" if plot else ""))
    if publish_docs:
        targets = publish(markdown, plot, ROOT / "docs")
        print("published: " + ", ".join(str(t) for t in targets))
    return 0


def render_again(path: Path, publish_docs: bool) -> int:
    results = json.loads(path.read_text())
    plot = write_plot(results, path.with_suffix(".png"))
    markdown = render_markdown(results)
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
    if publish_docs:
        targets = publish(markdown, plot, ROOT / "docs")
        print("published: " + ", ".join(str(t) for t in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
