"""Static checks of the CRD file that need no apiserver: it is the single, complete source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "sharpjobs.sharpml.com.yaml"


def _crd() -> dict:
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert len(docs) == 1, "the CRD file holds exactly one CustomResourceDefinition"
    return docs[0]


def _walk(schema: dict, path: str) -> Iterator[tuple[str, dict]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_identity():
    crd = _crd()
    assert crd["metadata"]["name"] == "sharpjobs.sharpml.com"
    spec = crd["spec"]
    assert spec["group"] == "sharpml.com" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["sj"] and spec["names"]["categories"] == ["sharpml"]
    assert [v["name"] for v in spec["versions"]] == ["v1alpha1"]
    assert spec["versions"][0]["subresources"] == {"status": {}}


def test_every_field_has_a_description():
    """`kubectl explain` shows these; a field without one reads as noise."""
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # metadata is the apiserver's own (ObjectMeta); a CRD may not describe it.
    missing = [
        p
        for p, s in _walk(schema, "sharpjob")
        if p != "sharpjob.metadata" and not s.get("description", "").strip()
    ]
    assert missing == []


def test_every_cel_rule_has_a_message():
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, s in _walk(schema, "sharpjob"):
        for rule in s.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"CEL rule at {path} has no user-facing message"


def test_printer_columns():
    cols = _crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [c["name"] for c in cols if c.get("priority", 0) == 0]
    assert default == ["Phase", "Images", "Progress", "Age", "Message"]
