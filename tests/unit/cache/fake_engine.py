"""A stand-in Docker Engine on a unix socket, for the API paths of cache save and restore.

Why a fake and not the real engine: the engine on the development and CI machines is Debian's
docker.io 20.10 with the legacy image store, shared by every test running at the time. It always
accepts an archive that leaves out layers it holds, so the refusal an engine with the containerd
image store answers cannot be produced with it, nor can an export that breaks off mid-stream,
and its images cannot be arranged per test without touching other tests' images. This fake
answers the few endpoints runnerkeep uses, the way engine 20.10 does, and records what it was
sent, so a test can check the bytes on the wire (which layers were sent, Content-Length).

- ``GET /info``, ``GET /images/json?all=1``, ``GET /images/REF/json``, ``POST /images/ID/tag``,
  ``DELETE /images/ID`` (the image; its layers' chains stay held while another image lists them)
- ``POST /images/load``: reads the tar; like 20.10 a layer whose chain the fake holds is not
  looked for in the archive (``refuse_partial=True``: every layer must be there, as with the
  containerd image store); registers the images and their chains.
- ``GET /images/get?names=...``: the archive set with ``set_export`` (optionally cut short
  with an error written into the stream, as an engine failing mid-export does).
- ``set_stall(part, stage)``: the request whose request line holds ``part`` stalls at
  ``stage``: "head" (no answer at all), "mid" (half the answer, or for a load half the body
  read), "after" (the whole answer and then the connection held open; for a load the body read
  and no answer). A stalled handler waits until ``close()`` (at most STALL_LIMIT seconds).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socketserver
import tarfile
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

STALL_LIMIT = 60.0  # seconds a stalled handler waits for close(): no thread outlives a test


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chains_of(diff_ids: list[str]) -> list[str]:
    """Chain IDs written out independently of runnerkeep.cache.partial (the spec's formula)."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha(f"{out[-1]} {diff_id}".encode()))
    return out


class FakeEngine:
    def __init__(self, path: str, refuse_partial: bool = False) -> None:
        self.path = path
        self.refuse_partial = refuse_partial
        self.images: dict[str, dict] = {}
        self.chains: set[str] = set()
        self.loads: list[dict] = []
        self.requests: list[str] = []
        self.inspects = 0
        self.export: bytes | None = None
        self.export_cut: int | None = None
        self.export_error: str | None = None
        self.deleted: list[str] = []
        self.lock = threading.Lock()
        self.recorded = threading.Condition()
        self.stall: tuple[str, str] | None = None
        self.released = threading.Event()
        engine = self

        class Handler(_Handler):
            fake = engine

        self.server = _Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def add_image(self, config: bytes, tags: list[str]) -> str:
        """An image the daemon holds (its layers' chains are held too)."""
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        image_id = sha(config)
        self.images[image_id] = {
            "Id": image_id,
            "RepoTags": list(tags),
            "RootFS": {"Type": "layers", "Layers": diff_ids},
            "Size": 0,
        }
        self.chains.update(chains_of(diff_ids))
        return image_id

    def wait_for_loads(self, count: int, limit: float = 10.0) -> list[dict]:
        """The loads recorded, once there are ``count`` (a client that hung up mid-body returns
        before the handler has read to the end and recorded it). Bounded: ``limit`` seconds."""
        with self.recorded:
            self.recorded.wait_for(lambda: len(self.loads) >= count, timeout=limit)
            return list(self.loads)

    def set_stall(self, part: str, stage: str) -> None:
        assert stage in ("head", "mid", "after")
        self.stall = (part, stage)

    def stalls(self, requestline: str, stage: str) -> bool:
        """True (after holding the connection until close) when this request stalls here."""
        if self.stall is None or self.stall[0] not in requestline or self.stall[1] != stage:
            return False
        self.released.wait(STALL_LIMIT)
        return True

    def set_export(self, archive: bytes, cut: int | None = None, error: str | None = None):
        self.export, self.export_cut, self.export_error = archive, cut, error

    def find(self, ref: str) -> dict | None:
        for image in self.images.values():
            if ref in (image["Id"], image["Id"][7:]) or ref in image["RepoTags"]:
                return image
        return None

    # -- POST /images/load -------------------------------------------------------------
    def load(self, body: bytes, announced: int) -> tuple[bool, str]:
        record = {"announced": announced, "received": len(body), "members": []}
        self.loads.append(record)
        if len(body) != announced:
            return False, "unexpected EOF"
        try:
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                names = [m.name for m in tar if m.isfile()]
                members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        except (tarfile.TarError, OSError) as exc:
            return False, f"archive/tar: {exc}"
        record["members"] = [m for m in names if m in members]  # in archive order
        if "manifest.json" not in members:
            return False, "open manifest.json: no such file or directory"
        said = []
        for item in json.loads(members["manifest.json"]):
            config = members[item["Config"]]
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
            for path, diff_id, chain in zip(item["Layers"], diff_ids, chains_of(diff_ids)):
                if chain in self.chains and not self.refuse_partial:
                    continue  # engine 20.10: a held chain's file is never opened
                if path not in members:
                    return False, f"content digest {diff_id}: not found"
                if sha(members[path]) != diff_id:
                    return False, f"invalid diffID for layer: expected {diff_id}"
            tags = item.get("RepoTags") or []
            image_id = self.add_image(config, tags)
            said += [f"Loaded image: {tag}" for tag in tags] or [f"Loaded image ID: {image_id}"]
        record["loaded"] = True
        return True, "\n".join(said) + "\n"

    def remove(self, image_id: str) -> bool:
        """DELETE /images/ID: the image gone; chains no other image lists are no longer held."""
        if self.images.pop(image_id, None) is None:
            return False
        self.deleted.append(image_id)
        self.chains = set()
        for image in self.images.values():
            self.chains.update(chains_of(image["RootFS"]["Layers"]))
        return True


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up mid-answer (a cut load) is what some tests do


class _Handler(BaseHTTPRequestHandler):
    fake: FakeEngine

    def log_message(self, *args) -> None:  # no client address on a unix socket
        pass

    def _json(self, status: int, data) -> None:
        body = json.dumps(data).encode()
        fake, line = self.fake, self.requestline
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if not (fake.stall and fake.stall[1] == "after" and fake.stall[0] in line):
            self.send_header("Content-Length", str(len(body)))  # else: read until the close
        self.end_headers()
        if fake.stall and fake.stall[1] == "mid" and fake.stall[0] in line:
            self.wfile.write(body[: len(body) // 2])
        else:
            self.wfile.write(body)
        fake.stalls(line, "mid") or fake.stalls(line, "after")

    def do_GET(self) -> None:
        fake = self.fake
        fake.requests.append(self.requestline)
        if fake.stalls(self.requestline, "head"):
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if url.path == "/info":
            self._json(200, {"ServerVersion": "20.10.24", "DockerRootDir": "/nonexistent"})
        elif url.path == "/images/json":
            self._json(200, [{"Id": image_id} for image_id in fake.images])
        elif url.path == "/images/get":
            self._export(parse_qs(url.query).get("names", []))
        elif parts[:1] == ["images"] and parts[-1:] == ["json"]:
            fake.inspects += 1
            image = fake.find("/".join(parts[1:-1]))
            if image is None:
                self._json(404, {"message": f"No such image: {'/'.join(parts[1:-1])}"})
            else:
                self._json(200, image)
        else:
            self._json(404, {"message": "page not found"})

    def _export(self, names: list[str]) -> None:
        fake = self.fake
        missing = [name for name in names if fake.find(name) is None]
        if missing or fake.export is None:
            self._json(404, {"message": "reference does not exist"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        data = fake.export if fake.export_cut is None else fake.export[: fake.export_cut]
        line = self.requestline
        if fake.stall and fake.stall[1] == "mid" and fake.stall[0] in line:
            data = data[: len(data) // 2]
        for start in range(0, len(data), 32 << 10):  # the engine writes 32 KiB pieces
            self.wfile.write(data[start : start + (32 << 10)])
        if fake.stalls(line, "mid") or fake.stalls(line, "after"):
            return
        if fake.export_error:
            error = {"errorDetail": {"message": fake.export_error}, "error": fake.export_error}
            self.wfile.write(json.dumps(error).encode() + b"\r\n")

    def do_DELETE(self) -> None:
        fake = self.fake
        fake.requests.append(self.requestline)
        parts = [unquote(p) for p in urlsplit(self.path).path.split("/") if p]
        with fake.lock:
            removed = parts[:1] == ["images"] and fake.remove("/".join(parts[1:]))
        if removed:
            self._json(200, [{"Deleted": "/".join(parts[1:])}])
        else:
            self._json(404, {"message": "No such image"})

    def do_POST(self) -> None:
        fake = self.fake
        fake.requests.append(self.requestline)
        if fake.stalls(self.requestline, "head"):
            return
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        announced = int(self.headers.get("Content-Length") or 0)
        if url.path == "/images/load":
            if fake.stall and fake.stall[1] == "mid" and fake.stall[0] in self.requestline:
                self.rfile.read(min(announced // 2, 64 << 10))
                fake.stalls(self.requestline, "mid")
                return
            body = self.rfile.read(announced)
            if fake.stalls(self.requestline, "after"):
                return
            with fake.lock:
                ok, message = fake.load(body, announced)
            with fake.recorded:
                fake.recorded.notify_all()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            item = {"stream": message} if ok else {"errorDetail": {"message": message}}
            if not ok:
                item["error"] = message
            self.wfile.write(json.dumps(item).encode() + b"\n")
        elif parts[:1] == ["images"] and parts[-1:] == ["tag"]:
            image = fake.find("/".join(parts[1:-1]))
            query = parse_qs(url.query)
            if image is None:
                self._json(404, {"message": "No such image"})
                return
            image["RepoTags"].append(f"{query['repo'][0]}:{query['tag'][0]}")
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._json(404, {"message": "page not found"})
