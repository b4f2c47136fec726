#!/usr/bin/env python3
"""Check that the section map at the top of arc.c matches its banners.

arc.c opens with a comment listing its sections ("Sections, in order"), one
tag per line indented by three spaces after ` *`; each section opens with a
banner `/* ==== tag: ... */` (STYLE.md section 1). This script fails, naming
them, when a banner is missing from the map, the map names a section with no
banner, or the two orders differ.

usage: python3 tests/check_map.py [arc.c]     (run by make test)
"""

import os
import re
import sys

MAP_START = " * Sections, in order"
MAP_ENTRY = re.compile(r"^ \*   ([a-z]+) ")      # " *   tag    duty"
BANNER = re.compile(r"^/\* ==== ([a-z]+):")


def map_tags(lines):
    """The tags the opening comment lists, in order; ValueError if none."""
    tags = []
    inside = False
    for line in lines:
        if not inside:
            inside = line.startswith(MAP_START)
            continue
        if line.startswith(" */"):
            break
        m = MAP_ENTRY.match(line)
        if m:
            tags.append(m.group(1))
    if not tags:
        raise ValueError("no section map (a comment line starting %r)"
                         % MAP_START.strip())
    return tags


def banner_tags(lines):
    """[(tag, line number)] of every section banner, in order."""
    return [(m.group(1), n) for n, line in enumerate(lines, 1)
            for m in [BANNER.match(line)] if m]


def problems(text):
    """What is wrong with the map of C source `text`: a list of sentences."""
    lines = text.split("\n")
    try:
        listed = map_tags(lines)
    except ValueError as e:
        return [str(e)]
    banners = banner_tags(lines)
    found = [t for t, _ in banners]
    out = []
    for tag, n in banners:
        if tag not in listed:
            out.append("section `%s` (banner at line %d) is missing from the map"
                       % (tag, n))
    for tag in listed:
        if tag not in found:
            out.append("the map lists `%s`, which has no `/* ==== %s:` banner"
                       % (tag, tag))
    for tag in set(found):
        if found.count(tag) > 1:
            out.append("section `%s` has %d banners" % (tag, found.count(tag)))
    for tag in set(listed):
        if listed.count(tag) > 1:
            out.append("the map lists `%s` %d times" % (tag, listed.count(tag)))
    if not out and listed != found:
        out.append("the map's order (%s) differs from the banners' (%s)"
                   % (" ".join(listed), " ".join(found)))
    return out


def main(argv):
    path = argv[0] if argv else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "arc.c")
    with open(path, encoding="utf-8") as f:
        found = problems(f.read())
    name = os.path.basename(path)
    for p in found:
        print("check_map: %s: %s" % (name, p))
    if found:
        print("check_map: FAILED: update the section map at the top of %s" % name)
        return 1
    print("check_map: %s: the map lists every section, in order" % name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
