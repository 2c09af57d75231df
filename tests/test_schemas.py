"""Tool schemas every client can take: the MCP Inspector's schema-portability lint, checked in
Python on tools/list, and by the real Inspector CLI (pinned in tests/inspector/) over stdio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from tests.conftest import ROOT, server_args

INSPECTOR = ROOT / "tests" / "inspector"

# The rules of the Inspector's `core/json/schemaLint.ts` (2.12.0): a `type` array (a client
# mapping schemas onto a single-type dialect, such as Gemini's, may reject the tool), a
# `$ref` outside the document, a schema that constrains nothing, a bare boolean schema.
_MAPS = ("properties", "patternProperties", "dependentSchemas", "dependencies", "$defs")
_ARRAYS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SINGLE = ("items", "contains", "not", "propertyNames", "if", "then", "else")
_BOOLEAN_OK = ("additionalProperties", "unevaluatedProperties", "additionalItems")
_CONSTRAINTS = {
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "format", "maxItems", "minItems",
    "uniqueItems", "maxProperties", "minProperties", "required", "allOf", "anyOf", "oneOf",
    "not", "items", "prefixItems", "contains", "properties", "patternProperties",
    "additionalProperties", "propertyNames", "$ref",
}  # fmt: skip


def portability_findings(node: Any, path: str = "", keyword: str | None = None) -> list[str]:
    """What the Inspector would warn about in one schema, one line each."""
    if isinstance(node, bool):
        return [] if keyword in _BOOLEAN_OK else [f"{path}: bare {node} as a schema"]
    if not isinstance(node, dict):
        return []
    found = []
    if isinstance(node.get("type"), list):
        found.append(f"{path}: type is an array {node['type']}")
    ref = node.get("$ref")
    if isinstance(ref, str) and ref and not ref.startswith("#"):
        found.append(f"{path}: remote $ref {ref}")
    if keyword != "not" and not _CONSTRAINTS & node.keys():
        found.append(f"{path}: constrains nothing")
    children: list[tuple[Any, str, str]] = []
    for key in _MAPS:
        children += [(v, f"{path}.{key}.{k}", key) for k, v in (node.get(key) or {}).items()]
    for key in _ARRAYS:
        children += [(v, f"{path}.{key}[{i}]", key) for i, v in enumerate(node.get(key) or [])]
    for key in (*_SINGLE, *_BOOLEAN_OK):
        if key in node:
            children.append((node[key], f"{path}.{key}", key))
    for child, where, key in children:
        found += portability_findings(child, where, key)
    return found


def test_the_lint_sees_what_the_inspector_warns_about() -> None:
    nullable = {"type": "object", "properties": {"n": {"type": ["integer", "null"]}}}
    assert portability_findings(nullable) == [".properties.n: type is an array ['integer', 'null']"]
    assert portability_findings({"type": "object", "properties": {"x": {}}}) == [
        ".properties.x: constrains nothing"
    ]
    assert portability_findings({"anyOf": [{"$ref": "https://x/s.json"}, True]}) == [
        ".anyOf[0]: remote $ref https://x/s.json",
        ".anyOf[1]: bare True as a schema",
    ]
    portable = {"anyOf": [{"type": "null"}, {"type": "integer"}], "description": "n"}
    assert portability_findings(portable) == []


async def test_every_tool_schema_is_portable(client: Client) -> None:
    tools = await client.list_tools()
    assert len(tools) > 20 and all(t.output_schema for t in tools)
    found = [
        f"{t.name} {kind}{line}"
        for t in tools
        for kind, schema in (("input", t.input_schema), ("output", t.output_schema))
        for line in portability_findings(schema)
    ]
    assert found == []


@pytest.fixture(scope="session")
def inspector_cli() -> Path:
    """The Inspector CLI, installed from tests/inspector's lock file (npm ci) when needed."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node/npm are not installed: the real MCP Inspector check needs them")
    cli = INSPECTOR / "node_modules" / ".bin" / "mcp-inspector"
    stamp = INSPECTOR / "node_modules" / ".package-lock.json"
    lock = INSPECTOR / "package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INSPECTOR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci in {INSPECTOR} failed:\n{done.stderr[-3000:]}"
    assert cli.exists(), f"npm ci did not install {cli}"
    return cli


def test_the_real_inspector_reports_no_portability_findings(
    inspector_cli: Path, tmp_path: Path
) -> None:
    cmd = [str(inspector_cli), "--cli", "--strict", "--format", "json", sys.executable]
    cmd += [*server_args(tmp_path, "--stdio"), "--method", "tools/list"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    envelope = json.loads(done.stdout)
    assert len(envelope["result"]["tools"]) > 20
    # --strict puts every finding (warnings too) in the envelope; none means the key is absent.
    assert envelope.get("schemaFindings", []) == [], done.stderr[-3000:]
    assert "Schema portability" not in done.stderr
