"""web/: every vendored library sits in vendor/NAME-X.Y.Z/ with its licence and is listed in
web/README.md, and none of our own pages, scripts or stylesheets loads anything from another
host (the dashboard and GraphiQL must work with no internet).

"Would be loaded" is taken precisely, per kind of file, so that a namespace or a comment is
not mistaken for a request:
- HTML and SVG: the attributes a browser fetches (src, srcset, poster, data, background,
  action, formaction, manifest, and href / xlink:href on anything but a navigation link
  <a> or <area>), a meta refresh, and the CSS and JS inside <style>, style= and <script>.
  xmlns declarations are not fetched and are not looked at.
- CSS, comments removed: url(...) and @import.
- JS, comments removed: every string literal (and the fixed parts of template literals).
  A URL in our scripts is taken to be one they may fetch, except the XML namespace URIs that
  createElementNS takes, which are names, never requested.
A URL is remote when it is absolute with a scheme that reaches a network (http, https, ws,
wss, ftp) or protocol-relative (//host/...).
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parents[1] / "web"
VENDOR = WEB / "vendor"
VENDOR_DIR = re.compile(r"(?P<name>[a-z0-9]+(?:[.-][a-z0-9]+)*?)-(?P<version>\d+\.\d+\.\d+)")
FONT_SUFFIXES = {".woff", ".woff2", ".ttf", ".otf", ".eot"}
OWN_SUFFIXES = {".html", ".htm", ".js", ".mjs", ".css", ".svg"}

REMOTE = re.compile(r"^\s*(?:(?:https?|wss?|ftp):)?//", re.IGNORECASE)
NAMESPACES = {
    "http://www.w3.org/2000/svg",
    "http://www.w3.org/1999/xhtml",
    "http://www.w3.org/1999/xlink",
    "http://www.w3.org/2000/xmlns/",
    "http://www.w3.org/1998/Math/MathML",
}
FETCHED_ATTRIBUTES = {"src", "poster", "data", "background", "action", "formaction", "manifest"}
NAVIGATION_TAGS = {"a", "area"}


def is_remote(url: str) -> bool:
    return bool(REMOTE.match(url))


# -- CSS ----------------------------------------------------------------------------------

CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)'"\s]*))\s*\)""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"""@import\s+(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)


def css_remote_urls(text: str) -> list[str]:
    text = CSS_COMMENT.sub(" ", text)
    found = []
    for pattern in (CSS_URL, CSS_IMPORT):
        for match in pattern.finditer(text):
            url = next(group for group in match.groups() if group is not None)
            if is_remote(url):
                found.append(url)
    return found


# -- JS -----------------------------------------------------------------------------------

# After one of these (or at the start) a "/" begins a regular expression, not a division.
REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^") | {""}
REGEX_AFTER_WORDS = {"return", "typeof", "case", "do", "else", "in", "of", "new", "delete", "void", "throw", "yield"}


def js_strings(text: str) -> list[str]:
    """The string literals of a script, and the fixed parts of its template literals, with
    comments and regular expressions skipped. A small lexer: enough for plain ES modules."""
    strings: list[str] = []
    i, n = 0, len(text)
    last = ""  # the last significant character or word outside strings and comments
    stack: list[str] = []  # "`" while inside a template literal, "{" for braces within ${ }
    while i < n:
        c = text[i]
        if stack and stack[-1] == "`":
            start = i
            while i < n and text[i] != "`" and not text.startswith("${", i):
                i += 2 if text[i] == "\\" else 1
            strings.append(text[start:i])
            if i < n and text[i] == "`":
                stack.pop()
                i += 1
                last = "`"
            else:  # "${": code until the matching "}"
                stack.append("{")
                i += 2
                last = "{"
            continue
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            strings.append(text[i + 1 : j])
            i = j + 1
            last = c
        elif c == "`":
            stack.append("`")
            i += 1
        elif c == "/" and (last in REGEX_AFTER or last in REGEX_AFTER_WORDS):
            j, in_class = i + 1, False
            while j < n and text[j] != "\n" and (in_class or text[j] != "/"):
                if text[j] == "\\":
                    j += 1
                elif text[j] == "[":
                    in_class = True
                elif text[j] == "]":
                    in_class = False
                j += 1
            i = j + 1
            last = "/regex"
        elif c.isspace():
            i += 1
        elif c.isalnum() or c in "_$":
            j = i
            while j < n and (text[j].isalnum() or text[j] in "_$"):
                j += 1
            last = text[i:j]
            i = j
        else:
            if c == "{" and stack:
                stack.append("{")
            elif c == "}" and stack and stack[-1] == "{":
                stack.pop()
                i += 1
                continue  # back inside the template literal
            last = c
            i += 1
    return strings


def js_remote_urls(text: str) -> list[str]:
    return [value for value in js_strings(text) if is_remote(value) and value.strip() not in NAMESPACES]


# -- HTML and SVG -------------------------------------------------------------------------


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.remote: list[str] = []
        self.inside: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): value or "" for name, value in attrs}
        for name, value in values.items():
            if name in FETCHED_ATTRIBUTES or (name in {"href", "xlink:href"} and tag not in NAVIGATION_TAGS):
                urls = [value]
            elif name in {"srcset", "imagesrcset"}:
                urls = [candidate.split()[0] for candidate in value.split(",") if candidate.split()]
            elif name == "style":
                self.remote += css_remote_urls(value)
                continue
            elif name == "content" and values.get("http-equiv", "").lower() == "refresh":
                urls = [value.split("=", 1)[1].strip("'\" ")] if "=" in value else []
            else:
                continue
            self.remote += [url for url in urls if is_remote(url)]
        self.inside = tag if tag in {"script", "style"} else None

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.inside = None

    def handle_endtag(self, tag: str) -> None:
        self.inside = None

    def handle_data(self, data: str) -> None:
        if self.inside == "script":
            self.remote += js_remote_urls(data)
        elif self.inside == "style":
            self.remote += css_remote_urls(data)


def html_remote_urls(text: str) -> list[str]:
    parser = _Loads()
    parser.feed(text)
    parser.close()
    return parser.remote


def remote_urls(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".css":
        return css_remote_urls(text)
    if path.suffix in {".js", ".mjs"}:
        return js_remote_urls(text)
    return html_remote_urls(text)


# -- the checks themselves ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        ("html", '<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0"/></svg>', []),
        ("html", '<a href="https://example.org/docs">docs</a>', []),
        ("html", "<!-- <script src='https://cdn.example/x.js'></script> -->", []),
        ("html", '<script src="https://cdn.example/x.js"></script>', ["https://cdn.example/x.js"]),
        ("html", '<link rel="stylesheet" href="//cdn.example/x.css">', ["//cdn.example/x.css"]),
        ("html", '<img srcset="a.png 1x, https://x.example/b.png 2x">', ["https://x.example/b.png"]),
        ("html", '<svg><use xlink:href="https://x.example/s.svg#i"/></svg>', ["https://x.example/s.svg#i"]),
        ("html", '<meta http-equiv="refresh" content="0; url=https://x.example/">', ["https://x.example/"]),
        ("html", "<style>a { background: url(https://x.example/i.png) }</style>", ["https://x.example/i.png"]),
        ("html", "<script>fetch('https://x.example/api')</script>", ["https://x.example/api"]),
        ("html", '<script src="js/main.js"></script><link href="dashboard.css" rel="stylesheet">', []),
        ("css", "/* from https://x.example/ */ a { background: url(img/a.png) }", []),
        ("css", "a { background: url( 'https://x.example/a.png' ) }", ["https://x.example/a.png"]),
        ("css", '@import "https://x.example/a.css";', ["https://x.example/a.css"]),
        ("css", "@font-face { src: url(data:font/woff2;base64,AAAA) }", []),
        ("js", "// https://x.example/ in a comment\n/* and https://y.example/ */ const a = 1;", []),
        ("js", 'const s = "not // a comment"; // https://x.example/', []),
        ("js", 'import { x } from "https://cdn.example/mod.js";', ["https://cdn.example/mod.js"]),
        ("js", "await import('//cdn.example/mod.js')", ["//cdn.example/mod.js"]),
        ("js", "fetch(`https://x.example/${path}?q=1`)", ["https://x.example/"]),
        ("js", "const u = new URL('/graphql', window.location.href); u.protocol = 'ws:';", []),
        ("js", 'document.createElementNS("http://www.w3.org/2000/svg", "svg")', []),
        ("js", "const re = /[\"'`]/g; const url = 'https://x.example/';", ["https://x.example/"]),
        ("js", "const t = `a ${`nested ${'https://x.example/'}`} b`;", ["https://x.example/"]),
    ],
)
def test_the_remote_url_rule(kind: str, text: str, expected: list[str]) -> None:
    check = {"html": html_remote_urls, "css": css_remote_urls, "js": js_remote_urls}[kind]
    assert check(text) == expected


# -- the files ----------------------------------------------------------------------------


def vendor_dirs() -> list[Path]:
    return sorted(path for path in VENDOR.iterdir() if path.is_dir())


def own_files() -> list[Path]:
    return sorted(
        path for path in WEB.rglob("*") if path.is_file() and path.suffix in OWN_SUFFIXES and VENDOR not in path.parents
    )


def test_there_is_something_to_check() -> None:
    assert len(vendor_dirs()) >= 4
    assert {path.name for path in own_files()} >= {"index.html", "graphiql.html", "dashboard.css", "main.js"}
    assert not [path.name for path in VENDOR.iterdir() if path.is_file()], "files directly in web/vendor"


@pytest.mark.parametrize("folder", vendor_dirs(), ids=lambda path: path.name)
def test_each_vendored_library_is_name_version_with_its_licence_and_listed(folder: Path) -> None:
    match = VENDOR_DIR.fullmatch(folder.name)
    assert match, f"web/vendor/{folder.name} is not NAME-X.Y.Z"
    licences = [path for path in folder.iterdir() if path.is_file() and path.name.upper().startswith("LICENSE")]
    assert licences, f"web/vendor/{folder.name} holds no LICENSE* file"
    assert all(path.stat().st_size > 200 for path in licences), licences
    readme = (WEB / "README.md").read_text(encoding="utf-8")
    row = rf"^\|\s*{re.escape(match['name'])}\s*\|\s*{re.escape(match['version'])}\s*\|"
    assert re.search(row, readme, re.MULTILINE), f"web/README.md lists no {match['name']} {match['version']}"


@pytest.mark.parametrize("folder", vendor_dirs(), ids=lambda path: path.name)
def test_each_vendored_font_is_named_in_a_licence_beside_it(folder: Path) -> None:
    licence_text = "\n".join(
        path.read_text(encoding="utf-8", errors="replace")
        for path in folder.rglob("*")
        if path.is_file() and path.name.upper().startswith("LICENSE")
    )
    unlicensed = [
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.suffix in FONT_SUFFIXES and path.name not in licence_text
    ]
    assert not unlicensed, f"fonts in web/vendor/{folder.name} that no LICENSE* file names: {unlicensed}"


def test_every_library_the_readme_lists_is_vendored() -> None:
    readme = (WEB / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Vendored libraries", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*([a-z0-9][\w.@/-]*)\s*\|\s*(\d+\.\d+\.\d+)\s*\|", section, re.MULTILINE)
    assert rows
    assert {f"{name}-{version}" for name, version in rows} == {path.name for path in vendor_dirs()}


@pytest.mark.parametrize("path", own_files(), ids=lambda path: str(path.relative_to(WEB)))
def test_our_pages_scripts_and_styles_load_nothing_from_another_host(path: Path) -> None:
    assert remote_urls(path) == []
