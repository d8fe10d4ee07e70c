#!/usr/bin/env python3
"""Summarises an Autobahn|Testsuite fuzzingclient report (index.json).

    summarise.py INDEX_JSON [EXPECTED_CASES_JSON]

Prints counts by `behavior` and by `behaviorClose`, then every case whose behavior or
behaviorClose is not acceptable (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED), with the
start of its result and description from the per-case report. EXPECTED_CASES_JSON (a JSON
list of case ids, written by scripts/autobahn) makes cases that never ran count as failures.

AUTOBAHN_ALLOW: comma-separated case-id prefixes ("9.1.3", "9.1", "9.*") whose failures are
still listed but do not fail the run. A prefix matches whole components: "5.1" covers 5.1
and 5.1.x, not 5.10. AUTOBAHN_ALLOW_CLOSE_CODE (e.g. 1009) narrows that: an allowed case is
excused only if the server closed it with this code.

Exit status: 0 nothing unacceptable, 1 some case failed or did not run, 2 unreadable input.
"""
import json
import os
import sys
from collections import Counter

ACCEPTABLE = {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"}
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE",
         "UNCLEAN", "FAILED BY CLIENT", "NO_CLOSE"]
SNIPPET = 200


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def allowed(case_id, prefixes):
    for p in prefixes:
        p = p[:-2] if p.endswith(".*") else p.rstrip("*")
        if case_id == p or case_id.startswith(p + "."):
            return True
    return False


def snippet(text):
    text = " ".join(str(text).split())
    return text if len(text) <= SNIPPET else text[:SNIPPET - 3] + "..."


def counts_line(counter):
    names = [n for n in ORDER if n in counter] + sorted(n for n in counter if n not in ORDER)
    return ", ".join(f"{n} {counter[n]}" for n in names) or "none"


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    index_path = argv[1]
    try:
        with open(index_path) as f:
            index = json.load(f)
        expected = None
        if len(argv) == 3:
            with open(argv[2]) as f:
                expected = json.load(f)
    except (OSError, ValueError) as e:
        print(f"summarise: cannot read report: {e}", file=sys.stderr)
        return 2
    outdir = os.path.dirname(os.path.abspath(index_path))
    allow = [p.strip() for p in os.environ.get("AUTOBAHN_ALLOW", "").split(",") if p.strip()]
    allow_code = os.environ.get("AUTOBAHN_ALLOW_CLOSE_CODE", "").strip()

    status = 0
    if not index:
        print("No agent in the report: no case ran (was the server reachable?)")
        return 1
    for agent in sorted(index):
        results = index[agent]
        ids = sorted(results, key=case_key)
        behavior = Counter(results[c]["behavior"] for c in ids)
        behavior_close = Counter(results[c]["behaviorClose"] for c in ids)
        total_ms = sum(results[c].get("duration") or 0 for c in ids)
        print(f"Autobahn report for agent '{agent}': {len(ids)} cases, "
              f"{total_ms / 1000:.1f} s in cases ({os.path.join(outdir, 'index.html')})")
        print(f"  behavior:      {counts_line(behavior)}")
        print(f"  behaviorClose: {counts_line(behavior_close)}")
        slowest = sorted(ids, key=lambda c: results[c].get("duration") or 0, reverse=True)[:5]
        print("  slowest:       " + ", ".join(
            f"{c} {(results[c].get('duration') or 0) / 1000:.1f} s" for c in slowest))

        bad = [c for c in ids if results[c]["behavior"] not in ACCEPTABLE
               or results[c]["behaviorClose"] not in ACCEPTABLE]
        failing = [c for c in bad if not allowed(c, allow)
                   or (allow_code and str(results[c].get("remoteCloseCode")) != allow_code)]
        if bad:
            print(f"\nUnacceptable cases: {len(bad)} ({len(failing)} failing, "
                  f"{len(bad) - len(failing)} allowed by AUTOBAHN_ALLOW)")
        for c in bad:
            r = results[c]
            tag = "ALLOWED" if c not in failing else "FAIL"
            print(f"  {tag:7} {c}: behavior={r['behavior']} behaviorClose={r['behaviorClose']} "
                  f"remoteCloseCode={r.get('remoteCloseCode')}")
            try:
                with open(os.path.join(outdir, r["reportfile"])) as f:
                    detail = json.load(f)
            except (OSError, ValueError, KeyError) as e:
                print(f"          (no case report: {e})")
                continue
            if r["behavior"] not in ACCEPTABLE:
                print(f"          result: {snippet(detail.get('result', ''))}")
            if r["behaviorClose"] not in ACCEPTABLE:
                print(f"          resultClose: {snippet(detail.get('resultClose', ''))}")
            print(f"          description: {snippet(detail.get('description', ''))}")

        missing = []
        if expected is not None:
            missing = [c for c in expected if c not in results]
            if missing:
                shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
                print(f"\nCases that did not run: {len(missing)} ({shown}); "
                      "did the server stop answering?")
        if failing or missing:
            status = 1

    print("\nVerdict: " + ("FAIL" if status else "PASS"))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
