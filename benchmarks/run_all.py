"""Run every benchmark one after the other and collect their tables.

Usage:
    .venv/bin/python benchmarks/run_all.py --data_dir ../shared/data      # MNIST from <data_dir>/mnist
    .venv/bin/python benchmarks/run_all.py --quick                        # bundled digits, minutes
    .venv/bin/python benchmarks/run_all.py --only export,robustness

Each benchmark prints a Markdown table (ratios against the baseline measured in the same run)
and writes JSON to out/bench/<name>.json; this script also saves each one's output to
out/bench/<name>.log and exits non-zero if any benchmark failed.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ("export", "robustness", "safecompress", "atmc", "self_compress", "rlnet", "compare")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="folder holding mnist/ (IDX files)")
    parser.add_argument("--quick", action="store_true", help="bundled digits and small settings")
    parser.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(BENCHMARKS))
    parser.add_argument("--out_dir", default="out/bench")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {BENCHMARKS}")
    os.makedirs(args.out_dir, exist_ok=True)
    failed = []
    for name in names:
        script = os.path.join(HERE, "compare.py" if name == "compare" else f"{name}_bench.py")
        if not os.path.exists(script):
            print(f"== {name}: {script} missing", flush=True)
            failed.append(name)
            continue
        cmd = [sys.executable, script, "--out", os.path.join(args.out_dir, f"{name}.json")]
        if args.quick:
            cmd.append("--quick")
        elif args.data_dir:
            cmd += ["--data_dir", os.path.join(args.data_dir, "mnist")]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        with open(os.path.join(args.out_dir, f"{name}.log"), "w") as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            log.write(proc.stdout)
        print(proc.stdout, flush=True)
        print(f"== {name}: exit {proc.returncode} after {time.perf_counter() - start:.0f}s", flush=True)
        if proc.returncode:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
