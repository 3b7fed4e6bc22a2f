"""One page being run: its directory, ports, environment and background processes.

A page runs in a fresh temporary directory (the "directory of your own" a
reader works in). Shell commands run there as subprocesses; Python blocks run
in this process, in one namespace per page, with that directory as the
current directory and on ``sys.path`` and the page's environment in
``os.environ`` -- all restored when the page ends. At the end every client
the page opened is closed, every module imported from its directory is
forgotten, and every background command is stopped (process groups killed).
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .ports import PortMap
from .shell import CURL_SHIM, Background, BlockFailed, run_script, split_commands


def _open_clients() -> set[Any]:
    from miyaq.client import client as client_module
    return set(getattr(client_module, "_clients", ()))


class DocSession:
    def __init__(self, doc_path: str) -> None:
        self.doc_path = doc_path
        self.name = Path(doc_path).name
        self.dir = Path(tempfile.mkdtemp(prefix=f"miyaq-doc-{Path(doc_path).stem}-"))
        self.ports = PortMap()
        venv_bin = os.path.dirname(sys.executable)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIYAQ_")}
        # The runner's curl first: it fails on an HTTP error status (shell.CURL_SHIM).
        # (Not found in the shim's own directory: a session opened inside a
        # page's environment would have the shim call itself.)
        path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != CURL_SHIM]
        env["DOCRUN_REAL_CURL"] = shutil.which("curl", path=os.pathsep.join(path)) or ""
        env["PATH"] = os.pathsep.join([str(CURL_SHIM), venv_bin, *path])
        # miyaq's directory on the path, where an installed package would be:
        # the test environment's editable install reaches it through an import
        # hook that tools reading site-packages (a reader's `python -m mypy`)
        # do not follow. The same files either way.
        import miyaq
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(miyaq.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.update(self.ports.environment())
        # What the page's commands make in the temporary directory (a dev
        # cluster's kept logs) goes with the page's directory.
        (self.dir / "tmp").mkdir()
        env["TMPDIR"] = str(self.dir / "tmp")
        self.env = env
        self.background: list[Background] = []
        self._clients_before = _open_clients()
        self._saved_environ = dict(os.environ)
        self._saved_cwd = os.getcwd()
        os.environ.clear()
        os.environ.update(env)
        os.chdir(self.dir)
        sys.path.insert(0, str(self.dir))

    # -- blocks ----------------------------------------------------------------------
    def run_shell(self, source: str) -> None:
        """Run a shell block (ports mapped): ordinary commands in order, long-running ones in the background."""
        group: list[str] = []
        try:
            for command in split_commands(self.ports.map_text(source)):
                if command.background is None:
                    group.append(command.script())
                    continue
                self._run_group(group)
                group = []
                log = self.dir / f".{len(self.background) + 1}-{command.text.split()[0]}.log"
                proc = Background(command, self.dir, self.env, log)
                self.background.append(proc)
                proc.wait_ready()
                self._after_ready(command.text)
            self._run_group(group)
        except BlockFailed as exc:
            raise BlockFailed(f"{exc}{self.logs()}") from None

    def _after_ready(self, text: str) -> None:
        """What the page's later commands see once ``text`` is running: after
        ``miyaq dev-cluster`` the mapped ``MIYAQ_CONNECT`` goes, so that they
        find the cluster through ``.miyaq-dev.json`` as the page says. A dev
        cluster that moves a node whose port another process took (to the
        next free block) writes the node's real endpoint there; the mapped
        default still named the port it had left (CI, 2026-12-08: a worker
        and a producer of cluster.md dialled nothing)."""
        if text.split()[:2] == ["miyaq", "dev-cluster"]:
            self.env.pop("MIYAQ_CONNECT", None)
            os.environ.pop("MIYAQ_CONNECT", None)

    def _run_group(self, commands: list[str]) -> None:
        if commands:
            # Printed, so pytest shows it with -s and in a failure's captured output.
            print(run_script("\n".join(commands), self.dir, self.env), end="")

    def write_file(self, name: str, text: str) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        sys.modules.pop(Path(name).stem, None)   # a rewritten module is imported afresh

    def logs(self) -> str:
        """The tails of the background commands' output, for a failure report."""
        parts = [f"\n--- {b.command.text} (pid {b.proc.pid}, exit {b.proc.poll()}) ---\n{b.log_tail()}"
                 for b in self.background]
        return "".join(parts)

    # -- the end ---------------------------------------------------------------------
    def close(self) -> None:
        """Close the page's clients, forget its modules, restore the process, stop its commands."""
        for client in _open_clients() - self._clients_before:
            try:
                client.close(flush=False)
            except Exception:   # noqa: BLE001 - a page's broken client must not stop the cleanup
                pass
        prefix = str(self.dir)
        for name, module in list(sys.modules.items()):
            if (getattr(module, "__file__", None) or "").startswith(prefix):
                del sys.modules[name]
        if str(self.dir) in sys.path:
            sys.path.remove(str(self.dir))
        os.chdir(self._saved_cwd)
        os.environ.clear()
        os.environ.update(self._saved_environ)
        for proc in reversed(self.background):   # workers before the nodes they serve
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
