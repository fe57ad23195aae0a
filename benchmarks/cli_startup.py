"""How long `tfsafe <command> --help` and a flag error take, and whether TensorFlow was imported.

Each case runs in a fresh interpreter (`python -m tfsafe_cli ...`), like the console script,
a few times; the median wall time is printed with the modules that `-X importtime` saw.

Usage:
    .venv/bin/python benchmarks/cli_startup.py [--repeats 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [["--help"], ["compress", "--help"], ["export", "--helpshort"], ["compress", "--method=nope"],
         ["bench", "--nosuchflag"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print("| command | exit | median s | TensorFlow imported |")
    print("|---|---|---|---|")
    for case in CASES:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tfsafe_cli", *case],
                                  capture_output=True, text=True, env=env, cwd=ROOT)
            times.append(time.perf_counter() - start)
        imported = any(line.split("|")[-1].strip().startswith("tensorflow")
                       for line in proc.stderr.splitlines() if line.startswith("import time:"))
        print(f"| tfsafe {' '.join(case)} | {proc.returncode} | {statistics.median(times):.2f} | "
              f"{'yes' if imported else 'no'} |")


if __name__ == "__main__":
    main()
