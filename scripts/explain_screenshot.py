"""The README's picture of the explain page: ``stackrnn predict --explain`` on a made-up
review, rendered by headless Chromium to ``docs/explain.png``.

    python scripts/explain_screenshot.py --workdir runs/simple-best [--out docs/explain.png]

Without ``--workdir`` it uses a tiny untrained model (``tests/tiny_run.py``), which shows
the page's layout but not a trained model's reading.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REVIEW = ("The first hour is slow and the dialogue is clumsy, but the last act is "
          "wonderful: a moving, beautifully acted story that I would gladly watch again. "
          "Zorblax fans will love it.")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path,
                        help="a trained run (default: a tiny untrained one)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "explain.png")
    parser.add_argument("--size", default="1100,1100", help="browser window WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        print("error: no Chromium/Chrome found (apt-get install chromium)", file=sys.stderr)
        return 1
    from stackrnn_jax.cli import main as stackrnn

    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir
        if workdir is None:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_run import make_run
            workdir = make_run(Path(scratch) / "run")
        page = Path(scratch) / "explain.html"
        if stackrnn(["predict", "--workdir", str(workdir), "--explain", str(page), REVIEW]):
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={args.out.resolve()}",
                        f"--window-size={args.size}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
