"""Refresh the vendored uPlot in collector/static/ui/vendor/uplot from npm.

    python scripts/vendor_uplot.py                 # the pinned version, hash checked
    python scripts/vendor_uplot.py --version X --sha256 H   # move the pin

Fetches the release tarball with ``npm pack`` (npm is needed only here, never to install
or run flightlog), refuses it unless its sha256 is the pinned one, and copies the ES
module, its CSS and the licence into the package. Update VERSION and SHA256 below when
moving the pin.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "1.6.32"
SHA256 = "4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d"
FILES = {
    "package/dist/uPlot.esm.js": "uPlot.esm.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "LICENSE",
}
TARGET = Path(__file__).resolve().parent.parent / "collector" / "static" / "ui" / "vendor" / "uplot"


def main() -> int:
    """Fetch, check and copy; exit 1 on a hash mismatch."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--version", default=VERSION)
    p.add_argument("--sha256", default=SHA256)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"uplot@{args.version}", "--silent"], cwd=tmp, check=True)
        tarball = Path(tmp) / f"uplot-{args.version}.tgz"
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
        if digest != args.sha256:
            print(f"sha256 mismatch for {tarball.name}: {digest} != {args.sha256}", file=sys.stderr)
            return 1
        TARGET.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for member, name in FILES.items():
                src = tar.extractfile(member)
                if src is None:
                    raise SystemExit(f"{member} missing from {tarball.name}")
                with src, open(TARGET / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        (TARGET / "VERSION").write_text(f"uplot {args.version} sha256 {digest}\n")
    print(f"uPlot {args.version} ({digest}) -> {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
