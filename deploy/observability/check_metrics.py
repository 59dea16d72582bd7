#!/usr/bin/env python3
"""Every metric the dashboard and the rules query is one Orderly exports.

Reads the metric names in `dashboard.json` and `rules.yml` (recording rules' own `orderly:`
names aside) and the names the code records (`metrics::counter!("…")`, `gauge!`, `histogram!`
in crates/), and fails naming any queried metric nothing records, so a renamed metric cannot
leave a panel or an alert silently empty.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
QUERIED = re.compile(r"(?<![:\w])((?:http|orderly)_[a-z0-9_]+)")
RECORDED = re.compile(r'(?:counter|gauge|histogram)!\(\s*"((?:http|orderly)_[a-z0-9_]+)"')
SUFFIXES = ("_bucket", "_count", "_sum")


def exported():
    names = set()
    for directory, _, files in os.walk(os.path.join(ROOT, "crates")):
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(directory, name)) as source:
                    names.update(RECORDED.findall(source.read()))
    return names


def queried():
    with open(os.path.join(HERE, "dashboard.json")) as dashboard:
        exprs = [target["expr"] for panel in json.load(dashboard)["panels"] for target in panel.get("targets", [])]
    with open(os.path.join(HERE, "rules.yml")) as rules:
        exprs.append(rules.read())
    names = set()
    for expr in exprs:
        for name in QUERIED.findall(expr):
            for suffix in SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
            names.add(name)
    return names


def main():
    known = exported()
    missing = sorted(queried() - known)
    if missing:
        sys.exit(f"observability: queried but never recorded: {', '.join(missing)}")
    print(f"observability: {len(queried())} metrics queried, all recorded")


if __name__ == "__main__":
    main()
