"""The real ComfyUI as a subprocess on a loopback port, driven through its HTTP API.

    with ComfyServer(output_dir) as server:
        paths = server.run(api_graph)   # PNG files written by SaveImage
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.comfy import BASE, ROOT, comfyui_path

HOST = "127.0.0.1"  # loopback only: the server is never reachable from outside
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

# Always talk to the loopback server directly, whatever http_proxy says.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """ComfyUI died, did not start, or a prompt failed; the message carries the server's log tail."""


class PromptError(ServerError):
    """ComfyUI rejected a prompt (HTTP 400) or its execution failed; `details` is the server's JSON."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ComfyServer:
    """Context manager around one ComfyUI process with Steer loaded from the test bed's base directory."""

    def __init__(self, output_dir: Path, log_path: Path | None = None, startup_timeout: float = 180.0,
                 extra_args: tuple[str, ...] = (), base: Path = BASE) -> None:
        """`base`: the --base-directory (custom_nodes/, models/ ...), the test bed's unless given."""
        self.base = base
        self.output_dir = Path(output_dir).resolve()
        self.log_path = Path(log_path) if log_path else self.output_dir / "comfyui.log"
        self.startup_timeout = startup_timeout
        self.extra_args = extra_args  # more ComfyUI flags, e.g. ("--cache-none",)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen[bytes] | None = None
        self._temp_parent: Path | None = None
        self.temp_dir: Path | None = None  # ComfyUI's temp/ (previews), while the server runs

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn ComfyUI and wait until GET /system_stats answers 200."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # A temp folder of its own: ComfyUI empties its temp folder when it starts and stops, so servers sharing the
        # base directory's (side by side, as pytest-xdist workers run them) would delete each other's previews.
        self._temp_parent = Path(tempfile.mkdtemp(prefix="steer-comfyui-"))
        self.temp_dir = self._temp_parent / "temp"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
        command = [python, "main.py", "--cpu", "--listen", HOST, "--port", str(self.port),
                   "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
                   "--base-directory", str(self.base), "--output-directory", str(self.output_dir),
                   "--temp-directory", str(self._temp_parent), *self.extra_args]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        try:
            self._wait_until_ready()
        except BaseException:  # a timeout, the server's death, or Ctrl-C: never leave it running
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self.get("/system_stats")[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.25)
        raise ServerError(f"ComfyUI did not answer /system_stats within {self.startup_timeout:.0f} s\n"
                          + self.log_tail())

    def stop(self, timeout: float = 20.0) -> None:
        """SIGINT (ComfyUI's clean shutdown), then SIGKILL if it has not exited within `timeout`; its temp folder
        goes."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._temp_parent is not None:
            shutil.rmtree(self._temp_parent, ignore_errors=True)
            self._temp_parent = None

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines of the server's log."""
        if not self.log_path.exists():
            return "(no server log)"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    def _check_alive(self) -> None:
        if self._process is None:
            raise ServerError("ComfyUI is not running")
        if self._process.poll() is not None:
            code = self._process.returncode
            self._process = None
            raise ServerError(f"ComfyUI exited with code {code}\n" + self.log_tail())

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _opener.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> tuple[int, Any]:
        """GET `path`; the status and the decoded JSON (or text)."""
        return self._request("GET", path)

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node type with its inputs, outputs and metadata."""
        status, info = self.get("/object_info")
        if status != 200:
            raise ServerError(f"/object_info answered {status}\n" + self.log_tail())
        return info

    def post_prompt(self, graph: dict[str, Any]) -> tuple[int, Any]:
        """POST an API-format graph to /prompt; the status and the JSON (prompt_id, or error and node_errors)."""
        return self._request("POST", "/prompt", {"prompt": graph, "client_id": self.client_id})

    def run(self, graph: dict[str, Any], timeout: float = 120.0) -> list[Path]:
        """Queue `graph`, wait for it, and return the image files it saved (output and temp images)."""
        return self.wait(self.submit(graph), timeout)

    def submit(self, graph: dict[str, Any]) -> str:
        """Queue `graph` without waiting; its prompt id (PromptError if ComfyUI refuses it)."""
        status, answer = self.post_prompt(graph)
        if status != 200:
            raise PromptError(f"/prompt answered {status}: {json.dumps(answer, indent=1)}",
                              answer if isinstance(answer, dict) else {})
        return answer["prompt_id"]

    def finished(self, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until prompt `prompt_id` has finished (successfully or not); its /history entry."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            entry = self.get(f"/history/{prompt_id}")[1].get(prompt_id)
            if entry:  # written once, when the prompt has finished
                return entry
            if time.monotonic() > deadline:
                raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n" + self.log_tail())
            time.sleep(0.05)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> list[Path]:
        """Wait for a queued prompt and return the image files it saved; PromptError if it failed."""
        entry = self.finished(prompt_id, timeout)
        outcome = entry["status"] or {}
        if outcome.get("status_str") != "success":
            errors = [f"node {data['node_id']} ({data['node_type']}): {data['exception_type']}: "
                      f"{data['exception_message'].strip()}"
                      for kind, data in outcome.get("messages", []) if kind == "execution_error"]
            raise PromptError(f"prompt {prompt_id} failed: {'; '.join(errors) or outcome}\n" + self.log_tail(), outcome)
        folders = {"output": self.output_dir, "temp": self.temp_dir}
        return [folders[image["type"]] / image["subfolder"] / image["filename"]
                for output in entry["outputs"].values() for image in output.get("images", [])]
