"""Every depends_on of a compose file names a service of that file (the Compose schema cannot
say so): `python .ci/check_compose_depends.py [docker-compose.yml]`, exit 1 naming each one."""

import sys
from pathlib import Path

import yaml


def problems(doc: dict[str, object]) -> list[str]:
    services = doc.get("services") or {}
    assert isinstance(services, dict)
    bad = []
    for name, service in services.items():
        deps = (service or {}).get("depends_on") or []
        # depends_on is a list of names or a mapping of name -> condition.
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                bad.append(f"service {name!r}: depends_on {dep!r}, which is no service of the file")
    return bad


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docker-compose.yml")
    doc = yaml.safe_load(path.read_text())
    bad = problems(doc)
    for line in bad:
        print(f"{path}: {line}", file=sys.stderr)
    if not bad:
        print(f"{path}: depends_on ok ({len(doc.get('services') or {})} services)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
