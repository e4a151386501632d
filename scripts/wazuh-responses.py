#!/usr/bin/env python3
"""Wazuh's responses, by operation, for this API's own OpenAPI document.

Reads Wazuh's OpenAPI document (docs/wazuh-api-spec-v4.14.7.yaml) and writes, as compact JSON, the
`responses` of each of Wazuh's operations (keyed `<method> <path>` with every `{param}` written
`{}`) and the components those responses refer to, examples left out. The API embeds the result
(src/api/spec/wazuh-responses.json): its document gives every operation it shares with Wazuh
Wazuh's own response schemas. scripts/wazuh-api-check.sh fails when the embedded file is stale.

Usage: wazuh-responses.py WAZUH_YAML OUT_JSON
"""
import json
import re
import sys

import yaml

METHODS = ("get", "put", "post", "delete")


def strip(node, names=False):
    """`node` without its examples (validation does not read them); `names`: `node` maps property
    names to schemas, so a property named `example` stays."""
    if isinstance(node, dict):
        return {
            k: strip(v, k == "properties" and not names)
            for k, v in node.items()
            if names or k not in ("example", "examples")
        }
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/"):
            found.add(tuple(ref[len("#/components/"):].split("/", 1)))
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def main():
    wazuh = yaml.safe_load(open(sys.argv[1]))
    shape = lambda p: re.sub(r"\{[^}]+\}", "{}", p)
    operations = {}
    for path, ops in wazuh["paths"].items():
        for method, op in ops.items():
            if method in METHODS:
                operations[f"{method} {shape(path)}"] = strip(op["responses"])
    wanted, done = set(), set()
    refs(operations, wanted)
    components = {}
    while wanted - done:
        kind, name = sorted(wanted - done)[0]
        done.add((kind, name))
        item = strip(wazuh["components"][kind][name])
        components.setdefault(kind, {})[name] = item
        refs(item, wanted)
    out = {"source": "Wazuh's OpenAPI document, v4.14.7", "operations": operations, "components": components}
    text = json.dumps(out, sort_keys=True, separators=(",", ":"), default=str)
    with open(sys.argv[2], "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
