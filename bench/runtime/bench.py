#!/usr/bin/env python3
"""Lifecycle benchmark of OCI runtimes: skiff-runtime vs crun vs runc, interleaved.

Run through run.sh (it builds the release binary and enters a private mount namespace with
/sys/fs/cgroup/unified unmounted, which crun 1.8 needs on this hybrid host). Per round and
runtime, in a shuffled order:
  lifecycle: create + start + wait for the init + delete of a `/bin/true` bundle
  detached:  run --detach + kill KILL + wait + delete of a `sleep` bundle
  run:       one foreground `run` of the `/bin/true` bundle (create, start, wait and delete in
             one runtime process; for all three the init is the runtime's child)
The driver is a child subreaper, so it can waitpid() the container init (read from
--pid-file) instead of polling `state`. Figures are medians; CPU is user+sys of the runtime
processes only; peak RSS is the median max RSS of 10 `create`s under GNU time (for skiff-runtime it
includes the sealed re-exec of itself, which keeps the same pid).
skiff_robind is the binary on a read-only bind of itself, skiff_memfd a sealed memfd copy
bind-mounted in place (runc's memfd-bind; how `skiff server` and `skiff cri` run it): neither
re-executes itself to seal. SKIFF_RUNTIME_BASE=<binary> adds another skiff-runtime build (e.g. the previous commit's) as
`skiff_base`, measured in the same rounds, for before/after figures.
SK_BENCH_ONLY=run measures only the foreground `run` (and its CPU) of skiff_memfd, crun and
skiff_base if given, interleaved as above: a quick A/B of the figure issue 16 targets.
"""

import ctypes
import fcntl
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PR_SET_CHILD_SUBREAPER = 36


def die(msg):
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(1)


def make_bundle(path, args):
    rootfs = os.path.join(path, "rootfs")
    for d in ("bin", "proc", "dev", "sys", "tmp"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for a in ("sh", "true", "sleep"):
        os.symlink("busybox", os.path.join(rootfs, "bin", a))
    subprocess.run(["runc", "spec", "--bundle", path], check=True)
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = args
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


class Runtime:
    def __init__(self, name, binary, root):
        self.name = name
        self.binary = binary
        self.root = root
        self.lifecycle = []
        self.detached = []
        self.run = []
        self.run_cpu = []
        self.cpu = []
        self.create_rss = []
        self.not_child = 0

    def call(self, *args):
        """Run one verb; return (rusage, exit status). Output goes to /dev/null."""
        pid = os.posix_spawn(
            self.binary,
            [self.binary, "--root", self.root, *args],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
            ],
        )
        while True:
            wpid, status, ru = os.wait4(pid, 0)
            if wpid == pid:
                break
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            die(f"{self.name} {' '.join(args)} exited {code}")
        return ru

    def wait_init(self, pidfile):
        with open(pidfile) as f:
            pid = int(f.read().strip())
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            # Its parent (e.g. crun's helper) has not exited yet, so it is not ours yet.
            self.not_child += 1
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not os.path.exists(f"/proc/{pid}"):
                    return
            reap_orphans()
            time.sleep(0.0002)

    def lifecycle_once(self, bundle, cid, pidfile):
        t0 = time.perf_counter()
        ru1 = self.call("create", "--bundle", bundle, "--pid-file", pidfile, cid)
        ru2 = self.call("start", cid)
        self.wait_init(pidfile)
        ru3 = self.call("delete", cid)
        t1 = time.perf_counter()
        self.lifecycle.append((t1 - t0) * 1000)
        self.cpu.append(
            sum(r.ru_utime + r.ru_stime for r in (ru1, ru2, ru3)) * 1000
        )

    def rss_once(self, bundle, cid, pidfile, out):
        """Peak RSS of `create` through GNU time: its forked child starts from time's small
        image, where a child of this Python process would inherit our RSS as its high-water
        mark."""
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", out, self.binary, "--root", self.root,
             "create", "--bundle", bundle, "--pid-file", pidfile, cid],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True,
        )
        with open(out) as f:
            self.create_rss.append(int(f.read().split()[-1]))
        self.call("delete", "--force", cid)
        reap_orphans()

    def run_once(self, bundle, cid):
        """Foreground `run`: returns when the container has exited and is deleted. Its rusage
        covers the runtime and every process it waited for (the init included)."""
        t0 = time.perf_counter()
        ru = self.call("run", "--bundle", bundle, cid)
        t1 = time.perf_counter()
        self.run.append((t1 - t0) * 1000)
        self.run_cpu.append((ru.ru_utime + ru.ru_stime) * 1000)

    def detached_once(self, bundle, cid, pidfile):
        t0 = time.perf_counter()
        self.call("run", "--detach", "--bundle", bundle, "--pid-file", pidfile, cid)
        self.call("kill", cid, "KILL")
        self.wait_init(pidfile)
        self.call("delete", cid)
        t1 = time.perf_counter()
        self.detached.append((t1 - t0) * 1000)


def reap_orphans():
    """Collect any other reparented children (e.g. intermediate processes)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main():
    runs = int(os.environ.get("RUNS", "50"))
    skiff = os.environ.get("SKIFF_RUNTIME") or die("SKIFF_RUNTIME not set")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        die("cannot become a child subreaper")
    work = tempfile.mkdtemp(prefix="sk-rtbench-")
    try:
        true_b = os.path.join(work, "true")
        sleep_b = os.path.join(work, "sleep")
        # State roots on a tmpfs, as /run is on a real node (here / and /run share one ext4,
        # whose flush-on-truncate heuristic would otherwise dominate small state writes).
        states = os.path.join(work, "state")
        os.makedirs(states)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "sk-rtbench", states], check=True)
        make_bundle(true_b, ["/bin/true"])
        make_bundle(sleep_b, ["/bin/sleep", "1000"])
        # The same binary on a read-only bind mount: the deployment that lets skiff-runtime skip
        # its per-invocation sealed memfd copy (CVE-2019-5736 defence; see sys/sealed_exe.rs).
        ro_bin = os.path.join(work, "skiff-runtime-ro")
        open(ro_bin, "w").close()
        subprocess.run(["mount", "--bind", "-o", "ro", skiff, ro_bin], check=True)
        # A sealed memfd copy bind-mounted in place (runc's memfd-bind): what `skiff server` and
        # `skiff cri` run skiff-runtime from by default (shims/cri/src/seal.rs).
        def memfd_copy(src, name):
            """`src` copied into a sealed memfd, bind-mounted at work/name (the mount holds it)."""
            dst = os.path.join(work, name)
            open(dst, "w").close()
            mfd = os.memfd_create("skiff-runtime", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            with open(src, "rb") as f:
                data = memoryview(f.read())
            while data:
                data = data[os.write(mfd, data):]
            fcntl.fcntl(mfd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            # As memfd-bind: bind the /proc/self/fd magic link (the memfd itself lives on the
            # kernel's internal mount).
            link = os.open(f"/proc/self/fd/{mfd}", os.O_PATH | os.O_NOFOLLOW)
            if libc.mount(f"/proc/self/fd/{link}".encode(), dst.encode(), None, 4096, None) != 0:
                die(f"bind-mounting the memfd copy: {os.strerror(ctypes.get_errno())}")
            os.close(link)
            keep.append(mfd)
            return dst

        keep = []

        memfd_bin = memfd_copy(skiff, "skiff-runtime-memfd")
        only_run = os.environ.get("SK_BENCH_ONLY") == "run"
        runtimes = [
            Runtime("skiff", skiff, os.path.join(states, "root-skiff")),
            Runtime("skiff_robind", ro_bin, os.path.join(states, "root-skiff-ro")),
            Runtime("skiff_memfd", memfd_bin, os.path.join(states, "root-skiff-memfd")),
            Runtime("crun", shutil.which("crun"), os.path.join(states, "root-crun")),
            Runtime("runc", shutil.which("runc"), os.path.join(states, "root-runc")),
        ]
        base = os.environ.get("SKIFF_RUNTIME_BASE")
        if base:
            runtimes.append(Runtime("skiff_base", base, os.path.join(states, "root-skiff-base")))
        if only_run:
            # As `skiff server` installs it: the sealed memfd copy, the base build's too.
            runtimes = [r for r in runtimes if r.name in ("skiff_memfd", "crun")]
            if base:
                runtimes.append(Runtime("skiff_base_memfd", memfd_copy(base, "skiff-runtime-base-memfd"),
                                        os.path.join(states, "root-skiff-base-memfd")))
        pidfile = os.path.join(states, "pid")
        # Warm-up: page cache, first-use directories.
        for r in runtimes:
            if not only_run:
                r.lifecycle_once(true_b, f"skw-{r.name}", pidfile)
                r.detached_once(sleep_b, f"skwd-{r.name}", pidfile)
            r.run_once(true_b, f"skwr-{r.name}")
            r.lifecycle, r.detached, r.cpu, r.create_rss = [], [], [], []
            r.run, r.run_cpu = [], []
        for i in range(runs):
            order = runtimes[:]
            random.shuffle(order)
            for r in order:
                if not only_run:
                    r.lifecycle_once(true_b, f"skb-{r.name}-{i}", pidfile)
                    r.detached_once(sleep_b, f"skd-{r.name}-{i}", pidfile)
                r.run_once(true_b, f"skf-{r.name}-{i}")
                reap_orphans()
        by = {r.name: r for r in runtimes}
        med = statistics.median
        if only_run:
            with open("/proc/loadavg") as f:
                load = f.read().split()[0]
            for metric, attr in (("runtime_run_p50_ms", "run"), ("runtime_run_cpu_p50_ms", "run_cpu")):
                vals = {n: med(getattr(r, attr)) for n, r in by.items()}
                parts = " ".join(f"{n}={v:.2f}" for n, v in vals.items())
                ratios = " ".join(
                    f"{n}_ratio_crun={vals[n] / vals['crun']:.2f}" for n in vals if n != "crun"
                )
                print(f"{metric} {parts} {ratios} (runs={runs}, load={load})")
            return
        for i in range(10):
            for r in runtimes:
                r.rss_once(true_b, f"skr-{r.name}-{i}", pidfile, os.path.join(states, "rss"))

        def line(metric, values, fmt="{:.1f}"):
            names = ("skiff", "crun", "runc", "skiff_robind", "skiff_memfd") + (
                ("skiff_base",) if base else ()
            )
            parts = [f"{n}={fmt.format(values[n])}" for n in names]
            ratios = [
                f"ratio_{n}={values['skiff'] / values[n]:.2f}" for n in ("crun", "runc")
            ] + [
                f"robind_ratio_crun={values['skiff_robind'] / values['crun']:.2f}",
                f"memfd_ratio_crun={values['skiff_memfd'] / values['crun']:.2f}",
            ]
            if base:
                ratios.append(f"base_ratio_crun={values['skiff_base'] / values['crun']:.2f}")
            print(f"{metric} {' '.join(parts)} {' '.join(ratios)}")

        line("runtime_lifecycle_p50_ms", {n: med(r.lifecycle) for n, r in by.items()})
        line("runtime_run_detach_kill_p50_ms", {n: med(r.detached) for n, r in by.items()})
        line("runtime_run_p50_ms", {n: med(r.run) for n, r in by.items()})
        line("runtime_lifecycle_cpu_p50_ms", {n: med(r.cpu) for n, r in by.items()})
        line("runtime_run_cpu_p50_ms", {n: med(r.run_cpu) for n, r in by.items()})
        line(
            "runtime_create_peak_rss_kib",
            {n: med(r.create_rss) for n, r in by.items()},
            "{:.0f}",
        )
        line(
            "runtime_binary_bytes",
            {n: os.path.getsize(r.binary) for n, r in by.items()},
            "{:.0f}",
        )
        print(
            "# lifecycle p10/p90 ms: "
            + " ".join(
                f"{n}={statistics.quantiles(r.lifecycle, n=10)[0]:.1f}/"
                f"{statistics.quantiles(r.lifecycle, n=10)[-1]:.1f}"
                for n, r in by.items()
            )
            + f" (runs={runs})"
        )
        print(
            "# run p10/p90 ms: "
            + " ".join(
                f"{n}={statistics.quantiles(r.run, n=10)[0]:.1f}/"
                f"{statistics.quantiles(r.run, n=10)[-1]:.1f}"
                for n, r in by.items()
            )
        )
        print("# init not our child (waited by polling): "
              + " ".join(f"{n}={r.not_child}" for n, r in by.items()))
    finally:
        for m in ("skiff-runtime-ro", "skiff-runtime-memfd", "skiff-runtime-base-memfd", "state"):
            # UMOUNT_NOFOLLOW (8) | MNT_DETACH (2): the memfd bind is a magic link.
            libc.umount2(os.path.join(work, m).encode(), 8 | 2)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
