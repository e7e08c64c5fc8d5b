#!/usr/bin/env python3
"""Runs `kvtier bench <suite> --quick --json` and checks the output contract: the last stdout
line is one JSON object {"suite", "results": [{name, value, unit, baseline_name, baseline,
ratio}]} with ratio == value / baseline where a baseline exists."""
import json
import math
import subprocess
import sys


def main() -> int:
    binary, suite = sys.argv[1], sys.argv[2]
    proc = subprocess.run([binary, "--log-level", "warn", "bench", suite, "--quick", "--json"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, sep="\n")
        print(f"kvtier bench {suite} exited with {proc.returncode}")
        return 1
    last = proc.stdout.strip().splitlines()[-1]
    doc = json.loads(last)
    assert doc["suite"] == suite, doc
    assert isinstance(doc["results"], list) and doc["results"], doc
    for r in doc["results"]:
        assert set(r) == {"name", "value", "unit", "baseline_name", "baseline", "ratio"}, r
        assert isinstance(r["name"], str) and r["name"], r
        assert isinstance(r["value"], (int, float)) and math.isfinite(r["value"]), r
        assert isinstance(r["unit"], str) and r["unit"], r
        if r["baseline"] is None:
            assert r["ratio"] is None and r["baseline_name"] is None, r
        else:
            assert isinstance(r["baseline_name"], str), r
            if r["baseline"] != 0:
                assert math.isclose(r["ratio"], r["value"] / r["baseline"], rel_tol=1e-9), r
    print(f"{suite}: {len(doc['results'])} results, contract holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
