"""Move the fonts a vendored stylesheet embeds as data: URLs into files beside it.

GraphiQL's CSS embeds its fonts (Roboto, Fira Code) as `url(data:font/...)`. A strict
Content-Security-Policy (`default-src 'self'` without `font-src data:`) blocks those, and
Chromium loads every embedded face eagerly, so each one is a console error even when unused.
Served as files from the service itself, the same fonts are allowed. Run after copying a
new GraphiQL release into web/vendor/:

    python scripts/unembed_css_fonts.py web/vendor/graphiql-X.Y.Z/graphiql.min.css

It rewrites the stylesheet in place and writes fonts/<sha256 prefix>.<woff2|woff> next to
it; a stylesheet with no embedded fonts is left as it is.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
from pathlib import Path

EMBEDDED_FONT = re.compile(r"url\(\s*[\"']?data:font/(woff2|woff|ttf|otf);base64,([A-Za-z0-9+/=]+)[\"']?\s*\)")


def unembed(stylesheet: Path) -> int:
    """Rewrite `stylesheet` to load its embedded fonts from files; return how many moved."""
    fonts = stylesheet.parent / "fonts"
    moved = 0

    def to_file(match: re.Match[str]) -> str:
        nonlocal moved
        data = base64.b64decode(match.group(2))
        name = f"{hashlib.sha256(data).hexdigest()[:16]}.{match.group(1)}"
        fonts.mkdir(exist_ok=True)
        (fonts / name).write_bytes(data)
        moved += 1
        return f"url(fonts/{name})"

    css = stylesheet.read_text(encoding="utf-8")
    rewritten = EMBEDDED_FONT.sub(to_file, css)
    if moved:
        stylesheet.write_text(rewritten, encoding="utf-8")
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stylesheets", nargs="+", type=Path)
    for path in parser.parse_args().stylesheets:
        print(f"{path}: {unembed(path)} embedded fonts moved to {path.parent / 'fonts'}")


if __name__ == "__main__":
    main()
