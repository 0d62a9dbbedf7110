"""Build etcd and kube-apiserver from the Go module proxy, once, into a cache directory.

Each binary is built in a small wrapper module of its own. etcd's server module is a plain
``go get``; k8s.io/kubernetes cannot be ``go install``-ed because its go.mod replaces every
``k8s.io/<staging>`` module with a local path, so the wrapper requires k8s.io/kubernetes and
replaces each staging module with its published ``v0.<minor>.<patch>`` release instead. The
modules are build inputs only; nothing else from them is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

ETCD_VERSION = "v3.5.35"
KUBERNETES_VERSION = "v1.37.2"


class ToolchainMissing(RuntimeError):
    """No ``go`` command: the control plane cannot be built here."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamrec" / "devcluster"


# Without an installed ``go``, this toolchain is fetched from the Go module proxy (the golang.org/toolchain
# module that ``GOTOOLCHAIN`` switching uses), checked against this digest, and kept in the cache.
GO_TOOLCHAIN = "go1.26.8"
GO_TOOLCHAIN_SHA256 = {"linux-amd64": "30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7"}
GO_PROXY = "https://proxy.golang.org"


def go_command() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    return go or fetch_go_toolchain()


def fetch_go_toolchain(cache_dir: Path | None = None) -> str:
    """The pinned Go toolchain from the Go module proxy, unpacked once under the cache; returns ``bin/go``."""
    import hashlib
    import platform
    import urllib.request
    import zipfile

    arch = {"x86_64": "amd64", "amd64": "amd64"}.get(platform.machine().lower(), platform.machine().lower())
    target = f"{platform.system().lower()}-{arch}"
    digest = GO_TOOLCHAIN_SHA256.get(target)
    if digest is None:
        raise ToolchainMissing(f"the Go toolchain (`go`) is not installed and none is pinned for {target}; "
                               "install Go to build etcd and kube-apiserver")
    root = (cache_dir or default_cache_dir()).parent / "go" / f"{GO_TOOLCHAIN}.{target}"
    go = root / "bin" / "go"
    if go.exists():
        return str(go)
    version = f"v0.0.1-{GO_TOOLCHAIN}.{target}"
    url = f"{GO_PROXY}/golang.org/toolchain/@v/{version}.zip"
    log.info("no go command: fetching %s from the Go module proxy", GO_TOOLCHAIN)
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f"{version}.zip"
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(archive, "wb") as fh:
            shutil.copyfileobj(resp, fh)
    except OSError as exc:
        raise ToolchainMissing(f"the Go toolchain (`go`) is not installed and {url} cannot be fetched ({exc})") from None
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    if sha != digest:
        archive.unlink()
        raise ToolchainMissing(f"{url}: sha256 {sha} is not the pinned {digest}")
    prefix = f"golang.org/toolchain@{version}/"
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            name = member.filename
            if not name.startswith(prefix) or ".." in Path(name).parts or name.endswith("/"):
                continue
            dest = staging / name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    # Module zips carry no file modes: the commands under bin/ and pkg/tool/ are the executables.
    for path in [*(staging / "bin").iterdir(), *(staging / "pkg" / "tool").glob("*/*")]:
        path.chmod(0o755)
    staging.rename(root)
    archive.unlink()
    return str(go)


def _go(args: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    # Two cores: keep the build from starving everything else on the machine.
    env.setdefault("GOFLAGS", "-p=2 -buildvcs=false")
    env.setdefault("CGO_ENABLED", "0")
    proc = subprocess.run([go_command(), *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _build(workdir: Path, name: str, module: str, package: str, version: str,
           replaces: dict[str, str] | None = None, stamps: dict[str, str] | None = None) -> Path:
    binary = workdir / name
    if binary.exists():
        return binary
    workdir.mkdir(parents=True, exist_ok=True)
    log.info("building %s %s with Go (once; cached in %s)", name, version, workdir)
    if not (workdir / "go.mod").exists():
        _go(["mod", "init", f"streamrec.local/{name}"], workdir)
    for mod, ver in (replaces or {}).items():
        _go(["mod", "edit", f"-replace={mod}={mod}@{ver}"], workdir)
    _go(["get", f"{package}@{version}"], workdir)
    tmp = workdir / f"{name}.tmp"
    ldflags = " ".join(["-s", "-w", *(f"-X {var}={value}" for var, value in (stamps or {}).items())])
    _go(["build", "-trimpath", f"-ldflags={ldflags}", "-o", str(tmp), package], workdir)
    tmp.replace(binary)
    return binary


def staging_modules(kubernetes_version: str, workdir: Path) -> list[str]:
    """The ``k8s.io/*`` modules that k8s.io/kubernetes replaces with its own staging tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{kubernetes_version}"], workdir))
    text = Path(info["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", text, re.M)))


def build_etcd(cache_dir: Path | None = None, version: str = ETCD_VERSION) -> Path:
    workdir = (cache_dir or default_cache_dir()) / f"etcd-{version}"
    return _build(workdir, "etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3", version)


def build_kube_apiserver(cache_dir: Path | None = None, version: str = KUBERNETES_VERSION) -> Path:
    workdir = (cache_dir or default_cache_dir()) / f"kubernetes-{version}"
    if (workdir / "kube-apiserver").exists():
        return workdir / "kube-apiserver"
    staging_version = "v0." + version.split(".", 1)[1]
    replaces = {mod: staging_version for mod in staging_modules(version, workdir)}
    # What `make` in the Kubernetes tree stamps in; clients (kubectl version) parse gitVersion.
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {}
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps |= {f"{pkg}.gitVersion": version, f"{pkg}.gitMajor": major, f"{pkg}.gitMinor": minor,
                   f"{pkg}.gitTreeState": "clean"}
    return _build(workdir, "kube-apiserver", "k8s.io/kubernetes",
                  "k8s.io/kubernetes/cmd/kube-apiserver", version, replaces, stamps)


def build_all(cache_dir: Path | None = None) -> tuple[Path, Path]:
    return build_etcd(cache_dir), build_kube_apiserver(cache_dir)
