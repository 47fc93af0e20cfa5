"""Build docker-archive and OCI-layout tar streams in Python, so unit tests need no Docker."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def random_layer(size: int, name: str = "data.bin") -> bytes:
    return layer_tar({name: os.urandom(size)})


def config_for(layers: list[bytes], label: str = "") -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"t": label}},
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
        }
    ).encode()


def write_tar(members: list[tuple], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """members: (name, bytes) files, (name, None) dirs, (name, ('symlink', target)) links."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def legacy_archive(
    images: list[tuple[list[str], list[bytes]]], symlink_dupes: bool = True
) -> bytes:
    """A docker 20.10-style docker-archive: v1 dirs with layer.tar, configs, manifest.json LAST.

    A layer seen before is emitted as a symlink to the first copy, like the engine does."""
    members: list[tuple] = []
    manifest = []
    seen: dict[str, str] = {}
    for index, (tags, layers) in enumerate(images):
        config = config_for(layers, str(index))
        cfg_name = sha(config)[7:] + ".json"
        paths = []
        for pos, layer in enumerate(layers):
            v1 = hashlib.sha256(f"{index}-{pos}-{sha(layer)}".encode()).hexdigest()
            path = f"{v1}/layer.tar"
            members.append((v1, None))
            members.append((f"{v1}/VERSION", b"1.0"))
            members.append((f"{v1}/json", json.dumps({"id": v1}).encode()))
            if sha(layer) in seen and symlink_dupes:
                members.append((path, ("symlink", f"../{seen[sha(layer)]}")))
            else:
                members.append((path, layer))
                seen.setdefault(sha(layer), path)
            paths.append(path)
        members.append((cfg_name, config))
        manifest.append({"Config": cfg_name, "RepoTags": tags or None, "Layers": paths})
    members.sort(key=lambda m: m[0])  # the engine tars a directory: sorted names
    members.append(("manifest.json", json.dumps(manifest).encode()))
    members.append(("repositories", b"{}"))
    return write_tar(members)


def oci_archive(images: list[tuple[str, list[bytes]]]) -> bytes:
    """An OCI image layout (as skopeo's oci-archive writes it); ref name in annotations."""
    blobs: dict[str, bytes] = {}
    descs = []
    for index, (ref, layers) in enumerate(images):
        config = config_for(layers, f"oci{index}")
        blobs[sha(config)] = config
        for layer in layers:
            blobs[sha(layer)] = layer
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha(layer),
                        "size": len(layer),
                    }
                    for layer in layers
                ],
            }
        ).encode()
        blobs[sha(manifest)] = manifest
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        )
    members: list[tuple] = [("blobs", None), ("blobs/sha256", None)]
    members += [(f"blobs/sha256/{d[7:]}", data) for d, data in sorted(blobs.items())]
    members.append(("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'))
    members.append(("index.json", json.dumps({"schemaVersion": 2, "manifests": descs}).encode()))
    return write_tar(members)


def failing_entry_write(monkeypatch, root: str, code: int = errno.ENOSPC) -> None:
    """The entry write of the store at ``root`` fails with ``code`` (its blobs already in
    place): a real disk cannot be made to fail at that one write on demand."""
    from runnerkeep.cache.store import Store

    real = Store.write_entry

    def write_entry(self, entry):
        if os.path.realpath(self.root) == os.path.realpath(root):
            raise OSError(code, os.strerror(code))
        return real(self, entry)

    monkeypatch.setattr(Store, "write_entry", write_entry)
