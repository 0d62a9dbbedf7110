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


def go_command() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolchainMissing("the Go toolchain (`go`) is not installed; it builds etcd and kube-apiserver")
    return go


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
