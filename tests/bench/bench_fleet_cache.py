"""Benchmark of the fleet cache tier against docker push / docker pull and curl, as ratios
measured in one run, the registry (Debian's docker-registry) on loopback.

Run: ``python tests/bench/bench_fleet_cache.py`` (needs the Docker engine and docker-registry;
``--quick`` for a small image). runnerkeep runs as runner hosts execute it (the zipapp, built
for the run). Builds a >= 1 GiB image of >= 4 layers of random data (offline, as
bench_cache.py does), saves it into a local store, then measures (medians; pairs interleaved,
the order alternating, so drift on a shared machine hits both sides):

- restore from the fleet tier into an empty host: ``cache restore --remote`` with no local
  entry (the key pulled, verified, stored, loaded) into a daemon without the image
  / ``docker pull`` of the same image, pushed to the same registry by ``docker push``
                                                                   target <= 1.00 (moonshot 0.8)
  (each side starts from the image removed, a synced page cache and a 1 s settle)
- push of a new key / ``docker push`` of the same image, each to a registry of its own that
  starts empty                                                     target <= 1.00
- fetch throughput: ``cache pull`` into an empty store (its own ``duration``: the CLI's
  start-up left out; the wall-time ratio beside it) / ``curl`` of the same blobs from the
  same registry into files (the transport limit)                    target >= 0.80
  Beside it, the CPU per GiB of each side (itself + the registry, which shares this
  machine's cores), a one-core sha256 per GiB, and the ceiling those put on the ratio when
  every core is busy: verifying is a sha256 of every byte more than curl does.
- push of a key whose blobs the registry already holds: only the index and the image
  manifests travel (bytes sent)                                    target <= 64 KiB

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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the harness

from bench_cache import MiB, build_images, build_zipapp, rk, rotated, sh, timed  # noqa: E402
from harness.registry import LocalRegistry  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "module_utils"))
from runnerkeep.cache import Store  # noqa: E402
from runnerkeep.cache.remote_restore import restore_from_fleet  # noqa: E402
from runnerkeep.remote.registry import RegistryClient  # noqa: E402
from runnerkeep.remote.remote_config import remote_settings  # noqa: E402

KiB = 1024
GiB = 1024 * MiB
REPUSH_TARGET_BYTES = 64 * KiB


class Run:
    """The scratch dir, the zipapp, the config, the image and the registries made."""

    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args = args
        self.work = work
        self.config = os.path.join(work, "config.json")
        self.pyz = ""
        self.tags: dict[str, str] = {}
        self.image_id = ""
        self.registries: list[LocalRegistry] = []
        self.extra_refs: set[str] = set()
        self.load_avgs: list[float] = []

    def rk_json(self, *args: str) -> dict:
        return json.loads(rk(self.pyz, self.config, *args, "--json").stdout)

    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    def registry(self) -> LocalRegistry:
        """A new, empty registry (its storage in the scratch dir, beside the stores)."""
        storage = self.path(f"registry-{uuid.uuid4().hex[:8]}")
        os.makedirs(storage)
        reg = LocalRegistry(storage=storage)
        self.registries.append(reg)
        reg.start()
        return reg

    def drop_registry(self, reg: LocalRegistry) -> None:
        reg.close()
        self.registries.remove(reg)
        shutil.rmtree(reg.storage_dir, ignore_errors=True)

    def note_load(self) -> None:
        self.load_avgs.append(os.getloadavg()[0])


def docker_ref(reg: LocalRegistry, repository: str, tag: str) -> str:
    return f"127.0.0.1:{reg.port}/{repository}:{tag}"


def remove_image(r: Run) -> None:
    """The image and every ref to it out of the daemon (the base too): an empty host."""
    subprocess.run(["docker", "rmi", "-f", r.image_id], capture_output=True)
    subprocess.run(["docker", "rmi", "-f", r.tags["base"]], capture_output=True)
    gone = subprocess.run(["docker", "image", "inspect", r.image_id], capture_output=True)
    assert gone.returncode != 0, "the image is still in the daemon"


def settle() -> None:
    os.sync()
    time.sleep(1.0)


def measure_push(r: Run) -> dict:
    """runnerkeep push of a new key / docker push, each into a fresh, empty registry."""
    t: dict[str, list[float]] = {"docker": [], "ours": []}
    sent: list[dict] = []
    for run in range(r.args.runs):
        print(f"push pair {run + 1}/{r.args.runs} ...", file=sys.stderr)
        regs = {"docker": r.registry(), "ours": r.registry()}
        target = docker_ref(regs["docker"], "bench/docker", "1")
        sh("docker", "tag", r.tags["big"], target)
        r.extra_refs.add(target)
        sides = {
            "docker": lambda target=target: sh("docker", "push", target),
            "ours": lambda reg=regs["ours"]: sent.append(
                r.rk_json(
                    "cache",
                    "push",
                    "--dir",
                    r.path("store"),
                    "--key",
                    "k",
                    "--remote",
                    reg.remote_url("bench/rk"),
                )
            ),
        }
        for side in rotated(list(sides), run):
            settle()
            t[side].append(timed(sides[side]))
        sh("docker", "rmi", target)
        for reg in regs.values():
            r.drop_registry(reg)
        r.note_load()
    return {
        "docker_push_s": statistics.median(t["docker"]),
        "cache_push_s": statistics.median(t["ours"]),
        "push_runs_s": {side: [round(x, 3) for x in runs] for side, runs in t.items()},
        "push_pair_median": statistics.median(o / d for o, d in zip(t["ours"], t["docker"])),
        "push_bytes_sent": sent[-1].get("bytes_sent"),
    }


def blob_urls(r: Run, reg: LocalRegistry, repository: str) -> list[tuple[str, int]]:
    """(URL, size) of every blob of the key's images, as the registry serves them."""
    with open(os.path.join(r.path("store"), "entries", "k.json")) as handle:
        stored = json.load(handle)
    blobs = {}
    for image in stored["images"]:
        blobs[image["config"]["digest"]] = image["config"]["size"]
        for layer in image["layers"]:
            blobs[layer["digest"]] = layer["size"]
    base = f"{reg.url}/v2/{repository}/blobs/"
    return [(base + digest, size) for digest, size in blobs.items()]


def measure_fetch(r: Run, reg: LocalRegistry) -> dict:
    """cache pull into an empty store / curl of the same blobs into files, same registry."""
    urls = blob_urls(r, reg, "bench/rk")
    total = sum(size for _url, size in urls)
    t: dict[str, list[float]] = {"curl": [], "ours": []}
    cpu: dict[str, list[float]] = {"curl": [], "ours": []}  # the side's CPU + the registry's
    core: list[float] = []  # the pull's own duration: the CLI's start-up left out
    for run in range(r.args.runs):
        print(f"fetch pair {run + 1}/{r.args.runs} ...", file=sys.stderr)
        out_dir, store = r.path("curl-out"), r.path("fetch-store")
        os.makedirs(out_dir)
        curl = ["-s", "-f"]
        for index, (url, _size) in enumerate(urls):
            curl += ["-o", os.path.join(out_dir, f"blob{index}"), url]
        remote = reg.remote_url("bench/rk")
        sides = {
            "curl": lambda curl=curl: sh("curl", *curl),
            "ours": lambda store=store, remote=remote: core.append(
                r.rk_json("cache", "pull", "--dir", store, "--key", "k", "--remote", remote)[
                    "duration"
                ]
            ),
        }
        for side in rotated(list(sides), run):
            settle()
            before = cpu_seconds(reg)
            t[side].append(timed(sides[side]))
            cpu[side].append(cpu_seconds(reg) - before)
        fetched = sum(os.path.getsize(os.path.join(out_dir, n)) for n in os.listdir(out_dir))
        assert fetched == total, (fetched, total)
        shutil.rmtree(out_dir)
        shutil.rmtree(store)
        r.note_load()
    return {
        "fetch_bytes": total,
        "curl_fetch_s": statistics.median(t["curl"]),
        "cache_pull_s": statistics.median(t["ours"]),
        "cache_pull_core_s": statistics.median(core),
        "fetch_runs_s": {side: [round(x, 3) for x in runs] for side, runs in t.items()},
        "fetch_core_runs_s": [round(x, 3) for x in core],
        "curl_bytes_per_s": total / statistics.median(t["curl"]),
        "cache_pull_bytes_per_s": total / statistics.median(core),
        "cache_pull_wall_bytes_per_s": total / statistics.median(t["ours"]),
        "curl_cpu_s_per_gib": statistics.median(cpu["curl"]) * GiB / total,
        "cache_pull_cpu_s_per_gib": statistics.median(cpu["ours"]) * GiB / total,
        "sha256_s_per_gib": sha256_seconds_per_gib(),
        "cpus": os.cpu_count() or 1,
    }


def cpu_seconds(reg: LocalRegistry) -> float:
    """CPU seconds so far of this process's children (curl, the CLI) and of the registry."""
    times = os.times()
    return times.children_user + times.children_system + process_cpu(reg.process.pid)


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256_seconds_per_gib() -> float:
    """One core of hashlib sha256 over 256 MiB in memory, scaled to a GiB."""
    data = bytes(256 * MiB)
    start = time.process_time()
    hashlib.sha256(data).digest()
    return (time.process_time() - start) * 4


def measure_restore(r: Run, reg: LocalRegistry) -> dict:
    """cache restore --remote (no local entry, no image) / docker pull (no image) of the
    same image that docker push put into the same registry; beside it, not a target until
    the CLI's fall-through uses it: restore_from_fleet called in this process (one pass)."""
    pushed = docker_ref(reg, "bench/docker", "1")
    sh("docker", "tag", r.tags["big"], pushed)
    r.extra_refs.add(pushed)
    sh("docker", "push", pushed)
    pairs = r.args.restore_runs + r.args.restore_runs % 2
    t: dict[str, list[float]] = {"docker": [], "ours": [], "one_pass": []}
    results: list[dict] = []
    one_pass: list[dict] = []
    store = r.path("restore-store")
    url = reg.remote_url("bench/rk")

    def ours() -> None:
        results.append(r.rk_json("cache", "restore", "--dir", store, "--key", "k", "--remote", url))

    def in_process() -> None:
        with RegistryClient(remote_settings({"remote": {"url": url}})) as client:
            one_pass.append(restore_from_fleet(Store(store, key_file=None), "k", client))

    sides = {"docker": lambda: sh("docker", "pull", pushed), "ours": ours, "one_pass": in_process}
    for run in range(pairs):
        print(f"restore round {run + 1}/{pairs} ...", file=sys.stderr)
        for side in rotated(list(sides), run):
            remove_image(r)
            shutil.rmtree(store, ignore_errors=True)
            settle()
            t[side].append(timed(sides[side]))
        r.note_load()
    if not all(res.get("source") == "fleet" and res.get("loaded") for res in results):
        raise SystemExit(f"a restore did not come from the fleet tier: {results}")
    if not all(res.get("overlapped") for res in one_pass):
        raise SystemExit(f"restore_from_fleet did not take the one-pass path: {one_pass}")
    return {
        "docker_pull_s": statistics.median(t["docker"]),
        "cache_restore_fleet_s": statistics.median(t["ours"]),
        "one_pass_restore_s": statistics.median(t["one_pass"]),
        "cli_overlapped": all(res.get("overlapped") for res in results),
        "restore_runs_s": {side: [round(x, 3) for x in runs] for side, runs in t.items()},
        "restore_pair_median": statistics.median(o / d for o, d in zip(t["ours"], t["docker"])),
        "one_pass_pair_median": statistics.median(
            o / d for o, d in zip(t["one_pass"], t["docker"])
        ),
    }


def measure_repush(r: Run, reg: LocalRegistry) -> dict:
    """A second key of the same image into the registry that holds its blobs."""
    store = r.path("store")
    r.rk_json("cache", "save", "--dir", store, "--key", "k2", r.tags["big"])
    start = time.monotonic()
    again = r.rk_json(
        "cache", "push", "--dir", store, "--key", "k2", "--remote", reg.remote_url("bench/rk")
    )
    return {
        "repush_s": time.monotonic() - start,
        "repush_bytes_sent": again.get("bytes_sent"),
        "repush_blobs_sent": again.get("blobs_sent"),
        "repush_blobs_present": again.get("blobs_present"),
    }


def checks(res: dict) -> list[tuple[str, float, str, float | None]]:
    """(measure, value, op, target); op "info" rows have no target."""
    return [
        (
            "restore from fleet / docker pull",
            res["cache_restore_fleet_s"] / res["docker_pull_s"],
            "<=",
            1.00,
        ),
        ("  (median of the pairs' ratios)", res["restore_pair_median"], "info", None),
        (
            "  one pass, in-process / docker pull",
            res["one_pass_restore_s"] / res["docker_pull_s"],
            "info",
            None,
        ),
        ("push new key / docker push", res["cache_push_s"] / res["docker_push_s"], "<=", 1.00),
        ("  (median of the pairs' ratios)", res["push_pair_median"], "info", None),
        (
            "fetch throughput / curl",
            res["cache_pull_bytes_per_s"] / res["curl_bytes_per_s"],
            ">=",
            0.80,
        ),
        (
            "  (CLI wall time, start-up included)",
            res["cache_pull_wall_bytes_per_s"] / res["curl_bytes_per_s"],
            "info",
            None,
        ),
        ("  CPU s/GiB: curl + registry", res["curl_cpu_s_per_gib"], "info", None),
        ("  CPU s/GiB: cache pull + registry", res["cache_pull_cpu_s_per_gib"], "info", None),
        ("  CPU s/GiB: sha256, one core", res["sha256_s_per_gib"], "info", None),
        (
            "  CPU-bound ceiling of the ratio",
            fetch_ceiling(res),
            "info",
            None,
        ),
        (
            "re-push: bytes sent (KiB)",
            res["repush_bytes_sent"] / KiB,
            "<=",
            REPUSH_TARGET_BYTES / KiB,
        ),
    ]


def fetch_ceiling(res: dict) -> float:
    """The best fetch ratio this machine allows when CPU is what runs out: every core busy
    with the pull and the registry (their CPU per byte as measured) against curl's measured
    rate. Verifying costs a sha256 of every byte on top of curl's work; with the registry on
    the same cores that is the limit (on a fleet the registry has cores of its own)."""
    ours_bytes_per_s = res["cpus"] * GiB / res["cache_pull_cpu_s_per_gib"]
    return ours_bytes_per_s / res["curl_bytes_per_s"]


def report(args: argparse.Namespace, res: dict) -> int:
    failed = 0
    print(
        f"image: {res['fetch_bytes'] / MiB:.0f} MiB, {args.layers} layers, runs: {args.runs}, "
        f"restore rounds: {len(res['restore_runs_s']['ours'])}, "
        f"load average {res['load_average_median']:.1f}"
    )
    print(f"{'measure':40} {'value':>9} {'target':>9}  ok")
    rows = []
    for name, value, op, target in checks(res):
        ok = op == "info" or {"<=": value <= (target or 0), ">=": value >= (target or 0)}[op]
        failed += not ok
        goal = f"{op:>3} {target:5.2f}" if target is not None else f"{'-':>9}"
        print(f"{name:40} {value:9.3f} {goal}  {'yes' if ok else 'NO'}")
        rows.append(
            {
                "measure": name.strip(),
                "value": round(value, 4),
                "op": op,
                "target": target,
                "ok": ok,
            }
        )
    raw = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    print(json.dumps({"raw": raw, "checks": rows}, indent=1))
    return 1 if failed else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--layer-mib", type=int, default=272, help="MiB per layer (4 x 272 > 1 GiB)"
    )
    parser.add_argument("--runs", type=int, default=3, help="push and fetch pairs")
    parser.add_argument(
        "--restore-runs",
        type=int,
        default=4,
        help="restore / docker pull pairs (rounded up to even)",
    )
    parser.add_argument("--quick", action="store_true", help="a 4 x 16 MiB image, 2 pairs each")
    parser.add_argument("--workdir", default=None, help="scratch dir (default: under /var/tmp)")
    args = parser.parse_args()
    if args.quick:
        args.layer_mib, args.runs, args.restore_runs = 16, 2, 2
    return args


def measure_all(r: Run) -> dict:
    results: dict = {}
    r.pyz = build_zipapp(r.work)
    print(f"building a {r.args.layers} x {r.args.layer_mib} MiB image ...", file=sys.stderr)
    r.tags = build_images(
        r.work, "rkfleet-" + uuid.uuid4().hex[:8], r.args.layers, r.args.layer_mib
    )
    r.image_id = sh(
        "docker", "image", "inspect", "-f", "{{.Id}}", r.tags["big"], text=True
    ).stdout.strip()
    r.rk_json("cache", "save", "--dir", r.path("store"), "--key", "k", r.tags["big"])
    results.update(measure_push(r))
    reg = r.registry()
    r.rk_json(
        "cache",
        "push",
        "--dir",
        r.path("store"),
        "--key",
        "k",
        "--remote",
        reg.remote_url("bench/rk"),
    )
    results.update(measure_fetch(r, reg))
    results.update(measure_repush(r, reg))
    results.update(measure_restore(r, reg))
    results["load_average_median"] = statistics.median(r.load_avgs)
    return results


def main() -> int:
    args = parse_args()
    work = tempfile.mkdtemp(prefix="rk-fleet-bench-", dir=args.workdir or "/var/tmp")
    r = Run(args, work)
    with open(r.config, "w") as handle:
        json.dump({"paths": {"state_dir": r.path("state")}, "cache": {"reserve": "0"}}, handle)
    try:
        results = measure_all(r)
    finally:
        for reg in list(r.registries):
            reg.close()
        refs = [r.image_id] if r.image_id else []
        refs += sorted(r.extra_refs) + [r.tags[t] for t in ("big", "base") if t in r.tags]
        for ref in refs:
            subprocess.run(["docker", "rmi", "-f", ref], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return report(args, results)


if __name__ == "__main__":
    sys.exit(main())
