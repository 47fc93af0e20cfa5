"""Benchmark of the image cache against plain docker commands, as ratios measured in one run.

Run: ``python tests/bench/bench_cache.py`` (needs the Docker engine). runnerkeep runs as
runner hosts execute it (``tools/build_zipapp.py`` + runner_base's ``install_zipapp.py``, into the
scratch dir).
Builds a >= 1 GiB image with >= 4 layers of random data (offline: a scratch base imported from a
tarball), then measures (medians of ``--runs`` runs, interleaved so drift hits every side):

- save / ``docker save -o FILE``                            target <= 1.00
  (beside it, not a target: the same save forced through the docker CLI by a context)
- save with every blob stored / ``docker save > /dev/null``    target <= 1.00 (entry only)
- restore (verify + load) / ``docker load -i FILE``         target <= 1.00 (own ABAB loop of
  ``--load-runs`` pairs, each side started from a removed image and a synced page cache)
- restore when the daemon already has the images             target < 1 s
- verify throughput / single-core hashlib sha256 of the same bytes   target >= 0.90
- incremental restore: an app image on top of the big one (``--app-mib``, so the base is >= 80%
  of its bytes), restored while the base is present / ``docker load -i`` of the app's full
  archive into a daemon without it                            target <= 0.30
  (beside it, not a target: / ``docker load -i`` of that archive with the base present)
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


def rk(
    pyz: str, config: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    env.pop("PYTHONPATH", None)
    if "DOCKER_CONTEXT" in (env or {}):
        env.pop("DOCKER_HOST", None)  # the CLI refuses both
    env["RUNNERKEEP_CONFIG"] = config
    proc = subprocess.run([sys.executable, pyz, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"runnerkeep {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def build_images(work: str, prefix: str, layers: int, layer_mib: int) -> dict[str, str]:
    tags = {
        "base": f"{prefix}/base:1",
        "big": f"{prefix}/big:1",
        "child": f"{prefix}/child:1",
        "app": f"{prefix}/app:1",
    }
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


def build_on_top(work: str, tag: str, base: str, mib: int) -> None:
    """An image of one more layer (``mib`` MiB of random data) on top of ``base``."""
    ctx = os.path.join(work, "ctx-" + tag.replace("/", "-").replace(":", "-"))
    os.makedirs(ctx)
    with open(os.path.join(ctx, "extra.bin"), "wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(MiB))
    with open(os.path.join(ctx, "Dockerfile"), "w") as handle:
        handle.write(f"FROM {base}\nCOPY extra.bin /extra.bin\n")
    sh("docker", "build", "-q", "-t", tag, ctx)
    shutil.rmtree(ctx)


def cli_context_env(work: str) -> dict[str, str]:
    """An environment in which runnerkeep must use the docker CLI (a context is selected) while
    the CLI reaches the same engine: the same-run baseline of the Engine API save."""
    config_dir = os.path.join(work, "docker-config")
    os.makedirs(config_dir, exist_ok=True)
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    env = {"DOCKER_CONFIG": config_dir}
    sh(
        "docker",
        "context",
        "create",
        "rkbench-cli",
        "--docker",
        f"host={host}",
        env={**os.environ, **env},
    )
    env["DOCKER_CONTEXT"] = "rkbench-cli"
    env.pop("DOCKER_HOST", None)
    return env


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


class Run:
    """What every measure needs: the scratch dir, the zipapp, the config, the images."""

    def __init__(self, args: argparse.Namespace, work: str, pyz: str, config: str) -> None:
        self.args = args
        self.work = work
        self.pyz = pyz
        self.config = config
        self.tags: dict[str, str] = {}
        self.load_avgs: list[float] = []

    def rk(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return rk(self.pyz, self.config, *args, env=env)

    def rk_json(self, *args: str) -> dict:
        return json.loads(self.rk(*args, "--json").stdout)

    def store(self, name: str) -> str:
        return os.path.join(self.work, name)

    def note_load(self) -> None:
        self.load_avgs.append(os.getloadavg()[0])


def rotated(sides: list, run: int) -> list:
    """Run ``run``'s order: rotated by one each run and reversed every other run, so over the
    runs each side takes each place (drift on a shared machine hits every side)."""
    shift = run % len(sides)
    order = sides[shift:] + sides[:shift]
    return order[::-1] if run % 2 else order


def measure_saves(r: Run) -> dict:
    big = r.tags["big"]
    archive = os.path.join(r.work, "docker-save.tar")
    through_cli = cli_context_env(r.work)
    t: dict[str, list[float]] = {"docker": [], "api": [], "cli": [], "null": [], "stored": []}
    via: list[str] = []
    for run in range(r.args.runs):
        print(f"save run {run + 1}/{r.args.runs} ...", file=sys.stderr)
        store, cli_store = r.store(f"store{run}"), r.store(f"cli-store{run}")

        def ours(store=store) -> None:
            via.append(r.rk_json("cache", "save", "--dir", store, "--key", "k", big)["saved_via"])

        sides = {
            "docker": lambda: sh("docker", "save", "-o", archive, big),
            "api": ours,
            "cli": lambda cli_store=cli_store: r.rk(
                "cache", "save", "--dir", cli_store, "--key", "k", big, env=through_cli
            ),
        }
        for side in rotated(list(sides), run):
            os.sync()
            t[side].append(timed(sides[side]))
        with open(os.devnull, "wb") as null:
            stored = {
                "null": lambda null=null: subprocess.run(
                    ["docker", "save", big], stdout=null, check=True
                ),
                "stored": lambda store=store, run=run: r.rk(
                    "cache", "save", "--dir", store, "--key", f"again{run}", big
                ),
            }
            for side in rotated(list(stored), run):
                t[side].append(timed(stored[side]))
        shutil.rmtree(cli_store)
        if run < r.args.runs - 1:
            shutil.rmtree(store)
        r.note_load()
    if set(via) != {"engine-api"}:
        raise SystemExit(f"cache save did not read the Engine API: saved_via {via}")
    return {
        "docker_save_o_s": statistics.median(t["docker"]),
        "cache_save_s": statistics.median(t["api"]),
        "cache_save_via_cli_s": statistics.median(t["cli"]),
        "docker_save_devnull_s": statistics.median(t["null"]),
        "cache_save_all_stored_s": statistics.median(t["stored"]),
        "save_runs_s": {side: [round(x, 3) for x in runs] for side, runs in t.items()},
        "save_over_docker_pair_median": statistics.median(
            ours / theirs for ours, theirs in zip(t["api"], t["docker"])
        ),
    }


def load_pairs(r: Run, prepare, theirs, ours, label: str) -> tuple[list[float], list[float]]:
    """``--load-runs`` pairs (rounded up to even) of docker load and restore, alternating which
    goes first, each started by ``prepare()`` and a settled page cache, outside the timing."""
    t_theirs, t_ours = [], []
    pairs = r.args.load_runs + r.args.load_runs % 2
    for run in range(pairs):
        print(f"{label} pair {run + 1}/{pairs} ...", file=sys.stderr)
        for which in ["ours", "theirs"] if run % 2 else ["theirs", "ours"]:
            prepare()
            os.sync()
            time.sleep(1.0)
            if which == "theirs":
                t_theirs.append(timed(theirs))
            else:
                t_ours.append(timed(ours))
        r.note_load()
    return t_theirs, t_ours


def measure_restores(r: Run) -> dict:
    big = r.tags["big"]
    store = r.store(f"store{r.args.runs - 1}")
    archive = os.path.join(r.work, "docker-save.tar")
    via: list[str] = []
    loads, restores = load_pairs(
        r,
        lambda: cold_daemon(big),
        lambda: sh("docker", "load", "-i", archive),
        lambda: via.append(
            r.rk_json("cache", "restore", "--dir", store, "--key", "k")["loaded_via"]
        ),
        "load",
    )
    if set(via) != {"engine-api"}:
        raise SystemExit(f"cache restore did not load through the Engine API: loaded_via {via}")
    fast_runs: list[dict] = []
    t_fast = statistics.median(
        timed(lambda: fast_runs.append(r.rk_json("cache", "restore", "--dir", store, "--key", "k")))
        for _ in range(3)
    )
    return {
        "docker_load_s": statistics.median(loads),
        "cache_restore_s": statistics.median(restores),
        "docker_load_runs_s": [round(x, 3) for x in loads],
        "cache_restore_runs_s": [round(x, 3) for x in restores],
        "restore_over_load_pair_median": statistics.median(
            ours / theirs for ours, theirs in zip(restores, loads)
        ),
        "cache_restore_present_s": t_fast,
        "cache_restore_present_core_s": statistics.median(run["duration"] for run in fast_runs),
    }


def measure_verify(r: Run) -> dict:
    """verify vs single-core hashlib over the same blob files (both warm)."""
    store = r.store(f"store{r.args.runs - 1}")
    blob_dir = os.path.join(store, "blobs", "sha256")
    paths = [os.path.join(blob_dir, name) for name in os.listdir(blob_dir)]
    total = sum(os.path.getsize(path) for path in paths)
    sha256_single_core(paths)  # warm the page cache
    t_hash = statistics.median(sha256_single_core(paths) for _ in range(3))
    t_verify = statistics.median(
        r.rk_json("cache", "verify", "--dir", store)["duration"] for _ in range(3)
    )
    return {
        "hashlib_single_core_bytes_per_s": total / t_hash,
        "verify_bytes_per_s": total / t_verify,
    }


def measure_incremental(r: Run) -> dict:
    """An app image on top of the big one, restored while the big one is present, against
    `docker load -i` of the app's whole archive: into a daemon without the big image (what a
    restore without the incremental path competes with), and with it (same state)."""
    app, big = r.tags["app"], r.tags["big"]
    store = r.store(f"store{r.args.runs - 1}")
    print(f"building the app image (+{r.args.app_mib} MiB) ...", file=sys.stderr)
    build_on_top(r.work, app, big, r.args.app_mib)
    r.rk("cache", "save", "--dir", store, "--key", "app", app)
    archive = os.path.join(r.work, "app.tar")
    sh("docker", "save", "-o", archive, app)
    sent: list[dict] = []

    def restore_app() -> None:
        sent.append(r.rk_json("cache", "restore", "--dir", store, "--key", "app"))

    loads, restores = load_pairs(
        r,
        lambda: cold_daemon(app),
        lambda: sh("docker", "load", "-i", archive),
        restore_app,
        "incremental",
    )
    if not all(run.get("layers_left_out") for run in sent):
        raise SystemExit(f"an incremental restore sent the whole archive: {sent}")
    cold_loads = []
    for run in range(max(1, r.args.load_runs // 2)):
        print(f"full load, base absent {run + 1} ...", file=sys.stderr)
        cold_daemon(app)
        cold_daemon(big)
        cold_loads.append(timed(lambda: sh("docker", "load", "-i", archive)))
        r.rk("cache", "restore", "--dir", store, "--key", "k")  # the big image back, untimed
    app_size = os.path.getsize(archive)
    return {
        "incremental_restore_s": statistics.median(restores),
        "incremental_restore_runs_s": [round(x, 3) for x in restores],
        "docker_load_full_base_present_s": statistics.median(loads),
        "docker_load_full_base_present_runs_s": [round(x, 3) for x in loads],
        "docker_load_full_cold_s": statistics.median(cold_loads),
        "docker_load_full_cold_runs_s": [round(x, 3) for x in cold_loads],
        "incremental_bytes_sent": sent[-1]["bytes_loaded"],
        "incremental_bytes_left_out": sent[-1]["bytes_left_out"],
        "app_archive_bytes": app_size,
        "base_share_of_app": sent[-1]["bytes_left_out"] / app_size,
    }


def measure_sharing(r: Run) -> dict:
    """A child image on top of the big one, saved under another key: blobs stored once."""
    store = r.store(f"store{r.args.runs - 1}")
    build_on_top(r.work, r.tags["child"], r.tags["big"], 8)
    r.rk("cache", "save", "--dir", store, "--key", "child", r.tags["child"])
    unique: dict[str, int] = {}
    for name in os.listdir(os.path.join(store, "entries")):
        with open(os.path.join(store, "entries", name)) as handle:
            entry = json.load(handle)
        for image in entry["images"]:
            unique[image["config"]["digest"]] = image["config"]["size"]
            for layer in image["layers"]:
                unique[layer["digest"]] = layer["size"]
    on_disk = int(sh("du", "-sb", store, text=True).stdout.split()[0])
    listed = r.rk_json("cache", "list", "--dir", store)["entries"]
    return {
        "store_bytes_on_disk": on_disk,
        "unique_blob_bytes": sum(unique.values()),
        "entries_listed": len(listed),
    }


def checks(r: dict) -> list[tuple[str, float, str, float | None]]:
    """(measure, value, op, target); op "info" rows have no target."""
    return [
        ("save / docker save -o", r["cache_save_s"] / r["docker_save_o_s"], "<=", 1.00),
        (
            "save through the CLI / docker save -o",
            r["cache_save_via_cli_s"] / r["docker_save_o_s"],
            "info",
            None,
        ),
        (
            "save, all stored / docker save >/dev/null",
            r["cache_save_all_stored_s"] / r["docker_save_devnull_s"],
            "<=",
            1.00,
        ),
        ("restore / docker load -i", r["cache_restore_s"] / r["docker_load_s"], "<=", 1.00),
        ("restore, images present (s, CLI wall time)", r["cache_restore_present_s"], "<", 1.0),
        (
            "verify / hashlib 1 core",
            r["verify_bytes_per_s"] / r["hashlib_single_core_bytes_per_s"],
            ">=",
            0.90,
        ),
        (
            "restore, base present / load -i full, cold",
            r["incremental_restore_s"] / r["docker_load_full_cold_s"],
            "<=",
            0.30,
        ),
        (
            "restore, base present / load -i, base present",
            r["incremental_restore_s"] / r["docker_load_full_base_present_s"],
            "info",
            None,
        ),
        (
            "disk / unique blobs (2 keys)",
            r["store_bytes_on_disk"] / r["unique_blob_bytes"],
            "<=",
            1.01,
        ),
    ]


def report(args: argparse.Namespace, r: dict) -> int:
    failed = 0
    print(
        f"image: {r['unique_blob_bytes'] / MiB:.0f} MiB, {args.layers} layers, runs: {args.runs}, "
        f"load pairs: {len(r['docker_load_runs_s'])}, app +{args.app_mib} MiB (base "
        f"{100 * r['base_share_of_app']:.0f}% of it), load average {r['load_average_median']:.1f}"
    )
    print(f"{'measure':47} {'value':>8} {'target':>9}  ok")
    rows = []
    for name, value, op, target in checks(r):
        ok = op == "info" or {"<=": value <= target, "<": value < target, ">=": value >= target}[op]
        failed += not ok
        goal = f"{op:>3} {target:5.2f}" if target is not None else f"{'-':>9}"
        print(f"{name:47} {value:8.3f} {goal}  {'yes' if ok else 'NO'}")
        rows.append(
            {"measure": name, "value": round(value, 4), "op": op, "target": target, "ok": ok}
        )
    raw = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
    print(json.dumps({"raw": raw, "checks": rows}, indent=1))
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--layer-mib", type=int, default=272, help="MiB per layer (4 x 272 > 1 GiB)"
    )
    parser.add_argument(
        "--app-mib",
        type=int,
        default=192,
        help="MiB of the app layer on top for the incremental restore (192: base ~85%%)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--load-runs", type=int, default=4, help="restore / docker load pairs (rounded up to even)"
    )
    parser.add_argument("--workdir", default=None, help="scratch dir (default: under /var/tmp)")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="rk-bench-", dir=args.workdir or "/var/tmp")
    config = os.path.join(work, "config.json")
    with open(config, "w") as handle:
        json.dump(
            {"paths": {"state_dir": os.path.join(work, "state")}, "cache": {"reserve": "0"}}, handle
        )
    run = Run(args, work, "", config)
    results: dict = {}
    try:
        run.pyz = build_zipapp(work)
        print(f"building a {args.layers} x {args.layer_mib} MiB image ...", file=sys.stderr)
        run.tags = build_images(
            work, "rkbench-" + uuid.uuid4().hex[:8], args.layers, args.layer_mib
        )
        results.update(measure_saves(run))
        results.update(measure_restores(run))
        results.update(measure_verify(run))
        results.update(measure_incremental(run))
        results.update(measure_sharing(run))
        results["load_average_1m"] = os.getloadavg()[0]
        results["load_average_median"] = statistics.median(run.load_avgs)
    finally:
        for tag in ("child", "app", "big", "base"):
            if tag in run.tags:
                subprocess.run(["docker", "rmi", "-f", run.tags[tag]], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return report(args, results)


if __name__ == "__main__":
    sys.exit(main())
