"""List or fix the code deps of every stage in dvc.yaml (closed under import).

    python scripts/dvc_deps.py           # print what each stage misses (exit 1 if anything)
    python scripts/dvc_deps.py --write   # rewrite each stage's .py deps as the full closure

The closure rule and its exemptions are ``tests/test_dvc_deps.py``'s (the test that fails on a
missing dep); this script only applies them to dvc.yaml, keeping its comments and other deps.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_dvc_deps import EXEMPT, _stages, missing_deps, project_imports  # noqa: E402


def closure(listed: list[str]) -> set[str]:
    found: set[str] = set()
    todo = list(listed)
    while todo:
        path = todo.pop()
        if path in found or path in EXEMPT or not (ROOT / path).is_file():
            continue
        found.add(path)
        todo.extend(project_imports(ROOT / path))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml")
    args = parser.parse_args()
    dvc = ROOT / "dvc.yaml"
    text = dvc.read_text(encoding="utf-8")
    missing_any = False
    for name, stage in _stages().items():
        missing = missing_deps(stage)
        for module, by in sorted(missing.items()):
            missing_any = True
            print(f"{name}: misses {module} (imported by {by})")
        if not args.write:
            continue
        m = re.search(rf"\n  {name}:\n(?:    .*\n|      .*\n)*?    deps:\n((?:      - .*\n)+)", text)
        items = [line[8:] for line in m.group(1).splitlines()]
        others = [i for i in items if not i.endswith(".py")]
        code = sorted(closure([i for i in items if i.endswith(".py")]))
        text = text[:m.start(1)] + "".join(f"      - {i}\n" for i in others + code) + text[m.end(1):]
    if args.write:
        dvc.write_text(text, encoding="utf-8")
        return 0
    return 1 if missing_any else 0


if __name__ == "__main__":
    raise SystemExit(main())
