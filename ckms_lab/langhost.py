"""A Pulumi language host for Python programs, built on the Pulumi Python SDK's own language server.

Why this exists: Pulumi's Go language host (module
``github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3``) is not served by the Go module
proxy reachable from these machines, while the CLI module is. The Pulumi CLI starts
``pulumi-language-python`` from PATH and speaks the LanguageRuntime gRPC API to it; the Python SDK
already implements that API for Automation-API inline programs (``pulumi.automation._server``).
This host serves the same API and runs the project's ``__main__.py`` as the program, in the
project venv's interpreter (the launcher written by ``scripts/build-pulumi.sh``).

Dependencies are installed by ``make deps`` (the venv), so ``InstallDependencies`` does nothing and
``GetRequiredPlugins`` reports none: the lab stack uses only the dynamic provider, whose launcher is
on PATH.
"""

from __future__ import annotations

import os
import runpy
import sys
from concurrent import futures
from pathlib import Path
from threading import Event

import grpc
from pulumi._version import _VERSION as sdk_version
from pulumi.automation._server import LanguageServer
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

_GRPC_OPTIONS = [("grpc.max_receive_message_length", 400 * 1024 * 1024)]


def _program_path(request: language_pb2.RunRequest) -> Path:
    """The file to run: ProgramInfo (new engines) or pwd/program (old ones), as Pulumi's host does."""
    info = request.info
    if info.program_directory:
        entry = Path(info.program_directory) / (info.entry_point or ".")
    else:
        entry = Path(request.pwd or ".") / (request.program or ".")
    if entry.is_dir():
        entry = entry / "__main__.py"
    if not entry.exists():
        raise FileNotFoundError(f"Pulumi program {entry} not found")
    return entry


class ProjectLanguageServer(LanguageServer):
    """LanguageServer whose program is the project's ``__main__.py``, not an inline function."""

    def __init__(self) -> None:
        super().__init__(program=lambda: None)

    def Handshake(self, request, context):  # noqa: N802 (gRPC method names)
        return language_pb2.LanguageHandshakeResponse()

    def Run(self, request, context):  # noqa: N802
        try:
            path = _program_path(request)
        except FileNotFoundError as exc:
            return language_pb2.RunResponse(error=str(exc))
        os.chdir(request.pwd or path.parent)
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        self.program = lambda: runpy.run_path(str(path), run_name="__main__")
        return super().Run(request, context)

    def GetPluginInfo(self, request, context):  # noqa: N802
        return plugin_pb2.PluginInfo(version=sdk_version)

    def GetProgramDependencies(self, request, context):  # noqa: N802
        return language_pb2.GetProgramDependenciesResponse()

    def InstallDependencies(self, request, context):  # noqa: N802
        return iter(())

    def RuntimeOptionsPrompts(self, request, context):  # noqa: N802
        return language_pb2.RuntimeOptionsResponse()


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_GRPC_OPTIONS)
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(ProjectLanguageServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    try:
        Event().wait()
    except KeyboardInterrupt:
        server.stop(0)


if __name__ == "__main__":
    main()
