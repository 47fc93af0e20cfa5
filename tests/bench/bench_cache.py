"""Benchmark of the image cache against plain docker commands, as ratios measured in one run.

Run: ``python tests/bench/bench_cache.py`` (needs the Docker engine). runnerkeep runs as
runner hosts execute it (``tools/build_zipapp.py`` + runner_base's ``install_zipapp.py``, into the
scratch dir).
Builds a >= 1 GiB image with >= 4 layers of random data (offline: a scratch base imported from a
tarball), then measures (medians of ``--runs`` runs, interleaved so drift hits both sides):

- save / ``docker save -o FILE``                            target <= 1.10
- save with every blob stored / ``docker save > /dev/null``    target <= 1.00 (entry only)
- restore (verify + load) / ``docker load -i FILE``         target <= 1.10 (own ABAB loop of
  ``--load-runs`` pairs, each side started from a removed image and a synced page cache)
- restore when the daemon already has the images             target < 1 s
- verify throughput / single-core hashlib sha256 of the same bytes   target >= 0.90
- two entries sharing a base: bytes on disk / unique blobs   target <= 1.01

Prints a table and a JSON object; exits 1 if a target is missed. Removes what it creates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=True, capture_output=True, **kw)


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def build_zipapp(work: str) -> str:
    """Build runnerkeep.pyz into ``work`` and install it as runner_base does on a host (unpacked,
    compiled by this Python); return the path the host's wrapper runs."""
    out = os.path.join(work, "runnerkeep.pyz")
    sh(sys.executable, os.path.join(REPO, "tools", "build_zipapp.py"), "--output", out)
    install = os.path.join(REPO, "roles", "runner_base", "files", "install_zipapp.py")
    sh(sys.executable, install, out, work)
    return os.path.join(work, "lib")


def rk(pyz: str, config: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["RUNNERKEEP_CONFIG"] = config
    proc = subprocess.run([sys.executable, pyz, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"runnerkeep {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def build_images(work: str, prefix: str, layers: int, layer_mib: int) -> dict[str, str]:
    tags = {"base": f"{prefix}/base:1", "big": f"{prefix}/big:1", "child": f"{prefix}/child:1"}
    base_dir = os.path.join(work, "base")
    os.makedirs(os.path.join(base_dir, "etc"))
    with open(os.path.join(base_dir, "etc", "hostname"), "w") as handle:
        handle.write("bench\n")
    tar = subprocess.Popen(["tar", "-C", base_dir, "-c", "."], stdout=subprocess.PIPE)
    sh("docker", "import", "-", tags["base"], stdin=tar.stdout)
    tar.wait()
    ctx = os.path.join(work, "ctx")
    os.makedirs(ctx)
    lines = [f"FROM {tags['base']}"]
    for i in range(layers):
        with open(os.path.join(ctx, f"l{i}.bin"), "wb") as handle:
            for _ in range(layer_mib):
                handle.write(os.urandom(MiB))
        lines.append(f"COPY l{i}.bin /data/l{i}.bin")
    with open(os.path.join(ctx, "Dockerfile"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    sh("docker", "build", "-q", "-t", tags["big"], ctx)
    shutil.rmtree(ctx)
    return tags


def build_child(work: str, tags: dict[str, str]) -> None:
    """An image on top of the big one (built after the timings: it would keep the big image's
    ID alive through `docker rmi` and turn every restore into the fast path)."""
    child = os.path.join(work, "child")
    os.makedirs(child)
    with open(os.path.join(child, "extra.bin"), "wb") as handle:
        handle.write(os.urandom(8 * MiB))
    with open(os.path.join(child, "Dockerfile"), "w") as handle:
        handle.write(f"FROM {tags['big']}\nCOPY extra.bin /extra.bin\n")
    sh("docker", "build", "-q", "-t", tags["child"], child)


def image_id(ref: str) -> str:
    return sh("docker", "image", "inspect", "--format", "{{.Id}}", ref, text=True).stdout.strip()


def cold_daemon(ref: str) -> None:
    """The same start for docker load and restore: image removed, page cache writeback done."""
    subprocess.run(["docker", "rmi", ref], capture_output=True)
    assert subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode
    os.sync()
    time.sleep(1.0)


def sha256_single_core(paths: list[str]) -> float:
    """Seconds for Python's hashlib sha256 over the files, one thread, 4 MiB readinto."""
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    start = time.monotonic()
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as handle:
            while True:
                n = handle.readinto(view)
                if not n:
                    break
                h.update(view[:n])
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--layer-mib", type=int, default=272, help="MiB per layer (4 x 272 > 1 GiB)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--load-runs", type=int, default=4, help="restore / docker load pairs (rounded up to even)"
    )
    parser.add_argument("--workdir", default=None, help="scratch dir (default: under /var/tmp)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="rk-bench-", dir=args.workdir or "/var/tmp")
    prefix = "rkbench-" + uuid.uuid4().hex[:8]
    config = os.path.join(work, "config.json")
    with open(config, "w") as handle:
        json.dump(
            {"paths": {"state_dir": os.path.join(work, "state")}, "cache": {"reserve": "0"}}, handle
        )
    tags: dict[str, str] = {}
    results: dict[str, float] = {}
    try:
        pyz = build_zipapp(work)
        print(f"building a {args.layers} x {args.layer_mib} MiB image ...", file=sys.stderr)
        tags = build_images(work, prefix, args.layers, args.layer_mib)
        big = tags["big"]
        archive = os.path.join(work, "docker-save.tar")
        t_save_o, t_save, t_null, t_reuse, t_load, t_restore = [], [], [], [], [], []
        load_avgs: list[float] = []
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs} ...", file=sys.stderr)
            store = os.path.join(work, f"store{run}")
            # ABBA: odd runs time runnerkeep first, so drift on this shared machine hits both.
            ours_first = run % 2 == 1

            def pair(theirs, ours, t_theirs, t_ours, first=ours_first):
                for fn, out in (
                    [(ours, t_ours), (theirs, t_theirs)]
                    if first
                    else [(theirs, t_theirs), (ours, t_ours)]
                ):
                    out.append(timed(fn))

            pair(
                lambda: sh("docker", "save", "-o", archive, big),
                lambda store=store: rk(
                    pyz, config, "cache", "save", "--dir", store, "--key", "k", big
                ),
                t_save_o,
                t_save,
            )
            with open(os.devnull, "wb") as null:
                pair(
                    lambda null=null: subprocess.run(
                        ["docker", "save", big], stdout=null, check=True
                    ),
                    lambda store=store, run=run: rk(
                        pyz, config, "cache", "save", "--dir", store, "--key", f"again{run}", big
                    ),
                    t_null,
                    t_reuse,
                )

            if run < args.runs - 1:
                shutil.rmtree(store)
        # restore vs docker load: its own balanced ABAB loop (order swapped every pair, an even
        # number of pairs), both from the same cold daemon state: the image removed, dirty
        # pages written back (the previous load leaves GBs of them) and a short settle, all
        # outside the timed part.
        store = os.path.join(work, f"store{args.runs - 1}")
        load_runs = args.load_runs + args.load_runs % 2
        for run in range(load_runs):
            print(f"load pair {run + 1}/{load_runs} ...", file=sys.stderr)
            for which in ["ours", "theirs"] if run % 2 else ["theirs", "ours"]:
                cold_daemon(big)
                if which == "theirs":
                    t_load.append(timed(lambda: sh("docker", "load", "-i", archive)))
                else:
                    t_restore.append(
                        timed(
                            lambda store=store: rk(
                                pyz, config, "cache", "restore", "--dir", store, "--key", "k"
                            )
                        )
                    )
            load_avgs.append(os.getloadavg()[0])
        fast_runs: list[subprocess.CompletedProcess] = []
        t_fast = statistics.median(
            timed(
                lambda: fast_runs.append(
                    rk(pyz, config, "cache", "restore", "--dir", store, "--key", "k", "--json")
                )
            )
            for _ in range(3)
        )
        fast_core = statistics.median(json.loads(p.stdout)["duration"] for p in fast_runs)
        # verify vs single-core hashlib over the same blob files (both warm)
        blob_dir = os.path.join(store, "blobs", "sha256")
        paths = [os.path.join(blob_dir, n) for n in os.listdir(blob_dir)]
        total = sum(os.path.getsize(p) for p in paths)
        sha256_single_core(paths)  # warm the page cache
        t_hash = statistics.median(sha256_single_core(paths) for _ in range(3))
        verify_runs = []
        for _ in range(3):
            out = rk(pyz, config, "cache", "verify", "--dir", store, "--json")
            verify_runs.append(json.loads(out.stdout)["duration"])
        t_verify = statistics.median(verify_runs)
        # sharing: a child image on top of the big one, saved under a second key
        build_child(work, tags)
        rk(pyz, config, "cache", "save", "--dir", store, "--key", "child", tags["child"])
        listing = json.loads(rk(pyz, config, "cache", "list", "--dir", store, "--json").stdout)
        unique: dict[str, int] = {}
        for name in os.listdir(os.path.join(store, "entries")):
            with open(os.path.join(store, "entries", name)) as handle:
                entry = json.load(handle)
            for image in entry["images"]:
                unique[image["config"]["digest"]] = image["config"]["size"]
                for layer in image["layers"]:
                    unique[layer["digest"]] = layer["size"]
        on_disk = int(sh("du", "-sb", store, text=True).stdout.split()[0])

        image_bytes = sum(unique.values())
        results = {
            "image_bytes": image_bytes,
            "docker_save_o_s": statistics.median(t_save_o),
            "cache_save_s": statistics.median(t_save),
            "docker_save_devnull_s": statistics.median(t_null),
            "cache_save_all_stored_s": statistics.median(t_reuse),
            "docker_load_s": statistics.median(t_load),
            "cache_restore_s": statistics.median(t_restore),
            "cache_restore_present_s": t_fast,
            "cache_restore_present_core_s": fast_core,
            "load_average_1m": os.getloadavg()[0],
            "load_average_during_load_pairs": statistics.median(load_avgs),
            "docker_load_runs_s": [round(t, 3) for t in t_load],
            "cache_restore_runs_s": [round(t, 3) for t in t_restore],
            "restore_over_load_pair_median": statistics.median(
                ours / theirs for ours, theirs in zip(t_restore, t_load)
            ),
            "hashlib_single_core_bytes_per_s": total / t_hash,
            "verify_bytes_per_s": total / t_verify,
            "store_bytes_on_disk": on_disk,
            "unique_blob_bytes": image_bytes,
            "entries_listed": len(listing["entries"]),
        }
    finally:
        for tag in ("child", "big", "base"):
            if tag in tags:
                subprocess.run(["docker", "rmi", "-f", tags[tag]], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    r = results
    checks = [
        ("save / docker save -o", r["cache_save_s"] / r["docker_save_o_s"], "<=", 1.10),
        (
            "save, all stored / docker save >/dev/null",
            r["cache_save_all_stored_s"] / r["docker_save_devnull_s"],
            "<=",
            1.00,
        ),
        ("restore / docker load -i", r["cache_restore_s"] / r["docker_load_s"], "<=", 1.10),
        ("restore, images present (s, CLI wall time)", r["cache_restore_present_s"], "<", 1.0),
        (
            "verify / hashlib 1 core",
            r["verify_bytes_per_s"] / r["hashlib_single_core_bytes_per_s"],
            ">=",
            0.90,
        ),
        (
            "disk / unique blobs (2 keys)",
            r["store_bytes_on_disk"] / r["unique_blob_bytes"],
            "<=",
            1.01,
        ),
    ]
    failed = 0
    print(
        f"image: {r['image_bytes'] / MiB:.0f} MiB, {args.layers} layers, runs: {args.runs}, "
        f"load pairs: {len(r['docker_load_runs_s'])} (load average "
        f"{r['load_average_during_load_pairs']:.1f})"
    )
    print(f"{'measure':45} {'value':>8} {'target':>9}  ok")
    rows = []
    for name, value, op, target in checks:
        ok = {"<=": value <= target, "<": value < target, ">=": value >= target}[op]
        failed += not ok
        print(f"{name:45} {value:8.3f} {op:>3} {target:5.2f}  {'yes' if ok else 'NO'}")
        rows.append(
            {"measure": name, "value": round(value, 4), "op": op, "target": target, "ok": ok}
        )
    print(
        json.dumps(
            {
                "raw": {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                "checks": rows,
            },
            indent=1,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
