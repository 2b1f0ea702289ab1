#!/usr/bin/env python3
"""Regenerates k8s-v1_33.fds: the FileDescriptorProtos embedded in the k8s-rs-pb crate.

k8s-rs-pb (rust-protobuf 3 generated code) keeps each file's serialized FileDescriptorProto in a
`static file_descriptor_proto_data: &'static [u8] = b"..."` literal. This script collects those
literals from the crate's sources (as fetched by cargo) and writes them as one
google.protobuf.FileDescriptorSet, so skiff-codec need not compile the 15 MB generated crate.

Usage: extract.py [path/to/k8s-rs-pb-X.Y.Z/src/v1_33] (default: newest in ~/.cargo/registry)
"""
import glob, os, re, sys

def crate_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    found = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-rs-pb-0.5.*/src/v1_33")))
    if not found:
        sys.exit("k8s-rs-pb 0.5 sources not found: run `cargo fetch` with it as a dependency first")
    return found[-1]

LIT = re.compile(rb'static file_descriptor_proto_data: &\'static \[u8\] = b"(.*?)";\n', re.S)
SIMPLE = {ord('n'): b'\n', ord('r'): b'\r', ord('t'): b'\t', ord('\\'): b'\\', ord('"'): b'"',
          ord("'"): b"'", ord('0'): b'\0'}

def unescape(lit):
    out, i = bytearray(), 0
    while i < len(lit):
        c = lit[i]
        if c != ord('\\'):
            out.append(c); i += 1; continue
        n = lit[i + 1]
        if n == ord('x'):
            out.append(int(lit[i + 2:i + 4], 16)); i += 4
        elif n == ord('\n'):  # line continuation: skip the newline and the next line's indent
            i += 2
            while i < len(lit) and lit[i] in b' \t\n\r':
                i += 1
        elif n in SIMPLE:
            out += SIMPLE[n]; i += 2
        else:
            raise ValueError(f"unknown escape \\{chr(n)}")
    return bytes(out)

def varint(n):
    b = bytearray()
    while n >= 0x80:
        b.append((n & 0x7f) | 0x80); n >>= 7
    b.append(n)
    return bytes(b)

def main():
    root = crate_dir()
    files = []
    for path in sorted(glob.glob(os.path.join(root, "**", "mod.rs"), recursive=True)):
        m = LIT.search(open(path, "rb").read())
        if m:
            files.append(unescape(m.group(1)))
    out = b"".join(b"\x0a" + varint(len(f)) + f for f in files)  # FileDescriptorSet.file = 1
    dest = os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s-v1_33.fds")
    open(dest, "wb").write(out)
    print(f"{len(files)} files, {len(out)} bytes -> {dest}")

main()
