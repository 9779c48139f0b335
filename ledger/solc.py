"""Compile the ledger's Solidity contracts with solc-js (the `solc` npm package pinned in package.json).

The artifact (ABI, creation and runtime bytecode) is written to `ledger/build/<Name>.json`, which
is not committed. `load_artifact()` recompiles when the artifact is missing or stale: stale means
the hash of what determines the bytecode (the contract source, the compiler settings and
package.json, which pins solc and @openzeppelin/contracts) differs from the one recorded in it, so
a checkout that changes the source never runs with an old build. `make deps` compiles too
(`python -m ledger.solc`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = ROOT / "ledger" / "contracts"
BUILD_DIR = ROOT / "ledger" / "build"
SOLC_SCRIPT = CONTRACTS_DIR / "solc.mjs"
HINT = "run `make deps` (it installs Node.js and runs `npm ci` in the repository)"

# cancun: supported by the EVM chains we may deploy to; anvil runs later forks too.
COMPILER_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
}


class CompileError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes  # creation code
    deployed_bytecode: bytes  # runtime code, what eth_getCode returns once deployed (no immutables)
    compiler: str
    source_hash: str

    @cached_property
    def code_hash(self) -> bytes:
        """keccak256 of the runtime code: what a deployed instance's code must hash to."""
        return keccak(self.deployed_bytecode)

    def to_json(self) -> dict[str, Any]:
        return {
            "contractName": self.name,
            "abi": self.abi,
            "bytecode": "0x" + self.bytecode.hex(),
            "deployedBytecode": "0x" + self.deployed_bytecode.hex(),
            "compiler": self.compiler,
            "settings": COMPILER_SETTINGS,
            "sourceHash": self.source_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Artifact:
        return cls(
            name=data["contractName"],
            abi=data["abi"],
            bytecode=bytes.fromhex(data["bytecode"].removeprefix("0x")),
            deployed_bytecode=bytes.fromhex(data["deployedBytecode"].removeprefix("0x")),
            compiler=data["compiler"],
            source_hash=data["sourceHash"],
        )


def source_path(name: str) -> Path:
    return CONTRACTS_DIR / f"{name}.sol"


def source_hash(name: str = "TraceAnchor") -> str:
    h = hashlib.sha256()
    h.update(source_path(name).read_bytes())
    h.update(json.dumps(COMPILER_SETTINGS, sort_keys=True).encode())
    h.update((ROOT / "package.json").read_bytes())
    return h.hexdigest()


def _node() -> str:
    node = shutil.which("node")
    if not node:
        raise CompileError(f"Node.js is not installed: {HINT}")
    if not (ROOT / "node_modules" / "solc").is_dir() or not (ROOT / "node_modules" / "@openzeppelin").is_dir():
        raise CompileError(f"the npm packages (solc, @openzeppelin/contracts) are not installed: {HINT}")
    return node


def compile_contract(name: str = "TraceAnchor", build_dir: Path = BUILD_DIR) -> Artifact:
    """Compile `ledger/contracts/<name>.sol` and write its artifact (atomically)."""
    node = _node()
    rel = source_path(name).relative_to(ROOT).as_posix()
    request = {
        "language": "Solidity",
        "sources": {rel: {"content": source_path(name).read_text()}},
        "settings": {
            **COMPILER_SETTINGS,
            "outputSelection": {rel: {name: ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
        },
    }
    done = subprocess.run(
        [node, str(SOLC_SCRIPT)], input=json.dumps(request), capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise CompileError(f"solc-js failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    output = json.loads(done.stdout)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e.get("message", "")) for e in errors))
    contract = output["contracts"][rel][name]
    artifact = Artifact(
        name=name,
        abi=contract["abi"],
        bytecode=bytes.fromhex(contract["evm"]["bytecode"]["object"]),
        deployed_bytecode=bytes.fromhex(contract["evm"]["deployedBytecode"]["object"]),
        compiler="solc-js " + output["compilerVersion"],
        source_hash=source_hash(name),
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=build_dir, suffix=".tmp", delete=False) as tmp:
        json.dump(artifact.to_json(), tmp, indent=1)
    os.replace(tmp.name, build_dir / f"{name}.json")
    return artifact


def load_artifact(name: str = "TraceAnchor", build_dir: Path = BUILD_DIR) -> Artifact:
    """The compiled contract, compiling it first if the artifact is missing or stale."""
    path = build_dir / f"{name}.json"
    if path.exists():
        try:
            artifact = Artifact.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError):
            artifact = None
        if artifact is not None and not (source_path(name).exists() and (ROOT / "package.json").exists()):
            return artifact  # an installed package (the Docker image): the artifact built with it is the truth
        if artifact is not None and artifact.source_hash == source_hash(name):
            return artifact
    return compile_contract(name, build_dir)


def main() -> None:
    """`python -m ledger.solc [Name...]`: compile what is missing or stale (used by `make deps`)."""
    for name in sys.argv[1:] or ["TraceAnchor"]:
        artifact = load_artifact(name)
        print(f"{name}: {len(artifact.deployed_bytecode)} bytes of runtime code, {artifact.compiler}", file=sys.stderr)


if __name__ == "__main__":
    main()
