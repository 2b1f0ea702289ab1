#!/usr/bin/env python3
"""bench/cri/monitor-mem.py - the pod monitor's RSS alone, without the CRI server.

Starts `skiff-monitor pause --socket-dir` (the pod monitor), asks it over monitor.sock to create
N busybox containers with runc (each printing a line every 100 ms, or sleeping with --silent),
starts them, waits, then prints the monitor's smaps_rollup figures and, with --maps, its
per-mapping RSS. Everything it made is removed at the end. Needs root, runc and /bin/busybox.

With --callgrind FILE the monitor runs under callgrind with instrumentation off; once the
containers run it is switched on for --wait seconds (the steady loop: reads, log records, writes,
trims) and the names of every function that ran are written to FILE (see
bench/cri/monitor-hot-symbols.sh). The monitor must then be a build with symbols.

Usage: sudo bench/cri/monitor-mem.py MONITOR [N] [--silent] [--wait S] [--samples K] [--maps]
                                     [--callgrind FILE]
"""
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def bundle(d, script):
    b = os.path.join(d, "bundle")
    rootfs = os.path.join(b, "rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    for x in ["proc", "dev", "sys", "tmp"]:
        os.makedirs(os.path.join(rootfs, x))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in ["sh", "echo", "sleep"]:
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run(["runc", "spec", "--bundle", b], check=True)
    path = os.path.join(b, "config.json")
    with open(path) as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = ["sh", "-c", script]
    with open(path, "w") as f:
        json.dump(c, f)
    return b


def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def maps(pid):
    rows, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                cur = [parts[0], parts[1], parts[5] if len(parts) > 5 else "", 0]
                rows.append(cur)
            elif parts[0] == "Rss:":
                cur[3] = int(parts[1])
    agg = {}
    for r, perms, name, rss in rows:
        key = (os.path.basename(name) or "[anon]", perms)
        agg[key] = agg.get(key, 0) + rss
    return sorted(agg.items(), key=lambda kv: -kv[1])


def main():
    args = sys.argv[1:]
    monitor = os.path.abspath(args[0])
    n = int(args[1]) if len(args) > 1 and args[1].isdigit() else 10
    silent = "--silent" in args
    wait = float(args[args.index("--wait") + 1]) if "--wait" in args else 6.0
    samples = int(args[args.index("--samples") + 1]) if "--samples" in args else 5
    script = "sleep 3600" if silent else "while :; do echo tick; sleep 0.1; done"
    tmp = tempfile.mkdtemp(prefix="skmonmem.")
    os.chmod(tmp, 0o711)
    root = os.path.join(tmp, "root")
    sb = os.path.join(tmp, "sandbox")
    os.makedirs(sb)
    cg = args[args.index("--callgrind") + 1] if "--callgrind" in args else None
    wrap = []
    if cg:
        wrap = ["valgrind", "-q", "--tool=callgrind", "--demangle=no", "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/cg.out"]
    pod = subprocess.Popen(
        wrap + [monitor, "pause", "--hostname", "skmem", "--sandbox", "skmemsb", "--socket-dir", sb],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    ids = []
    try:
        assert pod.stdout.readline() == b"ready\n"
        for i in range(n):
            d = os.path.join(tmp, f"c{i}")
            os.makedirs(d)
            b = bundle(d, script)
            cid = f"skmem{os.getpid()}c{i}"
            req = ["--runtime", shutil.which("runc"), "--runtime-root", root, "--bundle", b,
                   "--id", cid, "--log-path", os.path.join(d, "0.log"),
                   "--state-dir", os.path.join(d, "state")]
            s = socket.socket(socket.AF_UNIX)
            s.connect(os.path.join(sb, "monitor.sock"))
            s.sendall("\0".join(req).encode())
            s.shutdown(socket.SHUT_WR)
            reply = s.makefile().read()
            assert reply == "ok\n", reply
            state = os.path.join(d, "state")
            deadline = time.time() + 60
            while not os.path.exists(os.path.join(state, "created")):
                assert not os.path.exists(os.path.join(state, "create-error")), open(
                    os.path.join(state, "create-error")).read()
                assert time.time() < deadline, "create timed out"
                time.sleep(0.02)
            ids.append(cid)
            subprocess.run(["runc", "--root", root, "start", cid], check=True)
        if cg:
            time.sleep(3)
            subprocess.run(["callgrind_control", "-i", "on", str(pod.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            time.sleep(wait)
            subprocess.run(["callgrind_control", "-d", str(pod.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["callgrind_control", "-i", "off", str(pod.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            names = set()
            for f in os.listdir(tmp):
                if not f.startswith("cg.out"):
                    continue
                for line in open(os.path.join(tmp, f), errors="replace"):
                    m = re.match(r"^c?fn=\(\d+\) (.*)$", line.rstrip("\n"))
                    if m:
                        name = re.sub(r"'\d+$", "", m.group(1))
                        if not name.startswith("0x") and not name.startswith("(below"):
                            names.add(name)
            with open(cg, "w") as out:
                out.write("".join(n + "\n" for n in sorted(names)))
            print(f"{len(names)} functions ran in the steady loop: {cg}")
            return
        time.sleep(wait)
        rss = []
        for _ in range(samples):
            r = rollup(pod.pid)
            rss.append((r["Rss"], r["Pss"], r.get("Anonymous", 0)))
            time.sleep(0.37)
        kind = "silent" if silent else "logging"
        print(f"monitor_{n}c_{kind} rss_kib=" + ",".join(str(x[0]) for x in rss)
              + " pss_kib=" + ",".join(str(x[1]) for x in rss)
              + " anon_kib=" + ",".join(str(x[2]) for x in rss))
        if "--maps" in args:
            for (name, perms), kib in maps(pod.pid):
                if kib:
                    print(f"  {kib:5d} KiB {perms} {name}")
        if not silent:
            log = open(os.path.join(tmp, "c0", "0.log")).read().splitlines()
            assert log and all(" stdout F tick" in l for l in log), log[:3]
            print(f"  c0 log lines: {len(log)}")
    finally:
        for cid in ids:
            subprocess.run(["runc", "--root", root, "kill", cid, "KILL"], stderr=subprocess.DEVNULL)
        time.sleep(1)
        for cid in ids:
            subprocess.run(["runc", "--root", root, "delete", "-f", cid], stderr=subprocess.DEVNULL)
        pod.send_signal(signal.SIGTERM)
        try:
            pod.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pod.kill()
            pod.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
