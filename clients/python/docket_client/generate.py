"""Generates the gRPC/protobuf modules from the repository's proto/ directory.

    python -m docket_client.generate OUT_DIR

writes docket/v1/event_pb2.py, ledger_pb2.py, governance_pb2.py and their *_grpc.py modules
under OUT_DIR; put OUT_DIR on sys.path (or PYTHONPATH) before importing docket_client. The
generated code is not committed, so it can never drift from proto/.
"""

import pathlib
import sys

from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[3] / "proto"


def generate(out_dir: pathlib.Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "docket" / "v1").glob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for pkg in (out_dir / "docket", out_dir / "docket" / "v1"):
        (pkg / "__init__.py").touch()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m docket_client.generate OUT_DIR")
    generate(pathlib.Path(sys.argv[1]))
