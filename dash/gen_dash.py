#!/usr/bin/env python3
"""Turn the dashboard page (plain HTML) into arc.c's `dash_html` array.

STYLE.md section 7: one HTML line per C string literal, so the page can be
edited as HTML and regenerated. Backslashes, double quotes, control
characters, trigraph-forming "??" and non-ASCII bytes are escaped for C
(non-ASCII as three-digit octal escapes, which cannot swallow a following
character). A C line longer than 100 columns is an error.

usage (from the repository root; `make dash` runs the --splice line):
  python3 dash/gen_dash.py dash/dash.html                  print the C definition
  python3 dash/gen_dash.py dash/dash.html -o dash_html.c   write it to a file
  python3 dash/gen_dash.py dash/dash.html --splice arc.c   replace the array in arc.c
  python3 dash/gen_dash.py dash/dash.html --check arc.c    exit 1 unless arc.c has it
"""

import argparse
import sys

MAX_COLUMNS = 100
HEAD = "static const char dash_html[] ="
INDENT = "    "


def c_literal(line):
    """The C string literal (with quotes) for one line of bytes plus LF."""
    out = []
    for b in line:
        c = chr(b)
        if c == "\\":
            out.append("\\\\")
        elif c == '"':
            out.append('\\"')
        elif c == "?" and out and out[-1] == "?":
            out.append("\\?")       # "??x" would be a trigraph under -std=c11
        elif c == "\t":
            out.append("\\t")
        elif b < 0x20 or b >= 0x7F:
            out.append("\\%03o" % b)
        else:
            out.append(c)
    return '"' + "".join(out) + '\\n"'


def generate(html):
    """The complete definition, `static const char dash_html[] = ...;`."""
    if b"\r" in html:
        raise ValueError("the page has CR characters; save it with LF line ends")
    if not html.endswith(b"\n"):
        html += b"\n"
    lines = [HEAD]
    errors = []
    for n, line in enumerate(html[:-1].split(b"\n"), 1):
        text = INDENT + c_literal(line)
        if len(text) > MAX_COLUMNS:
            errors.append("line %d: %d columns in C (max %d): %s"
                          % (n, len(text), MAX_COLUMNS, line.decode("utf-8", "replace")))
        lines.append(text)
    if errors:
        raise ValueError("\n".join(errors))
    lines[-1] += ";"
    return "\n".join(lines) + "\n"


def find_array(src):
    """(start, end) of the dash_html definition in C source text."""
    start = src.find(HEAD)
    if start < 0:
        raise ValueError("no `%s` in the C file" % HEAD)
    end = src.find('";\n', start)
    if end < 0:
        raise ValueError("the dash_html definition does not end with `\";`")
    return start, end + 3


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", help="the page, e.g. dash.html")
    ap.add_argument("-o", "--output", help="write the definition to this file")
    ap.add_argument("--splice", metavar="C_FILE", help="replace the array in this C file")
    ap.add_argument("--check", metavar="C_FILE",
                    help="exit 1 unless this C file holds exactly this array")
    args = ap.parse_args(argv)
    with open(args.html, "rb") as f:
        try:
            code = generate(f.read())
        except ValueError as e:
            print("gen_dash: %s" % e, file=sys.stderr)
            return 1
    if args.splice or args.check:
        path = args.splice or args.check
        with open(path, encoding="utf-8") as f:
            src = f.read()
        try:
            start, end = find_array(src)
        except ValueError as e:
            print("gen_dash: %s: %s" % (path, e), file=sys.stderr)
            return 1
        if args.check:
            if src[start:end] != code:
                print("gen_dash: %s: dash_html differs from %s" % (path, args.html),
                      file=sys.stderr)
                return 1
            return 0
        with open(path, "w", encoding="utf-8") as f:
            f.write(src[:start] + code + src[end:])
        return 0
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(code)
    else:
        sys.stdout.write(code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
