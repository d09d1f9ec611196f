"""JSON schemas for kubeconform from a live apiserver's OpenAPI v2 document (what openapi2jsonschema does).

kubeconform fetches schemas from the internet by default; these come from the development control plane
instead, so they are exactly its Kubernetes version's, and its CRDs (SharpJob, the Prometheus Operator's)
are in the same document. One file per kind, at GROUP/VERSION/KIND.json (core: v1/v1/KIND.json, matching
kubeconform's ``{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json``), holding the kind's
definition and every definition it reaches. Strict: objects with properties get
``additionalProperties: false`` unless they preserve unknown fields, so a misspelt field is an error.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

LOCATION = "{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json"


def _fix(schema: Any) -> Any:
    """One schema node, walked by position (a field may be named "format" or "properties" itself)."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string") is True:
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}  # a port or a percentage
    if schema.get("format") == "quantity":
        return {"oneOf": [{"type": "string"}, {"type": "number"}]}
    out = dict(schema)
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: _fix(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _fix(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_fix(v) for v in out[key]]
    return out


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.removeprefix("#/definitions/"))
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def write(openapi_v2: dict[str, Any], out: Path, kinds: set[str]) -> list[Path]:
    """Write the schemas of ``kinds`` (e.g. {"Deployment", "SharpJob"}); returns the files written."""
    definitions = openapi_v2["definitions"]
    written = []
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            if gvk["kind"] not in kinds or len(definition.get("x-kubernetes-group-version-kind", [])) != 1:
                continue
            needed: set[str] = set()
            todo = [name]
            while todo:
                current = todo.pop()
                if current in needed:
                    continue
                needed.add(current)
                found: set[str] = set()
                _refs(definitions[current], found)
                todo += sorted(found - needed)
            schema = _fix(copy.deepcopy(definition))
            # apiVersion and kind are free strings in the document; pin them.
            group = gvk["group"] or "v1"
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
            schema.setdefault("properties", {})["apiVersion"] = {"enum": [api_version]}
            schema["properties"]["kind"] = {"enum": [gvk["kind"]]}
            schema["definitions"] = {n: _fix(copy.deepcopy(definitions[n])) for n in sorted(needed)}
            path = out / group / gvk["version"] / f"{gvk['kind'].lower()}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema))
            written.append(path)
    return written
