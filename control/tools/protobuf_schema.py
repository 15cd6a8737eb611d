#!/usr/bin/env python3
"""Generates control/src/apiserver/protobuf_schema.rs: the protobuf field tables of the kinds
the API server serves, for decoding `application/vnd.kubernetes.protobuf` request bodies.

Field numbers and wire types come from the k8s-pb crate's generated prost structs; JSON field
names come from k8s-openapi's serde impls (matched by Rust field name), so `clusterIP` stays
`clusterIP`. Run from the workspace root after bumping either crate:

    python3 control/tools/protobuf_schema.py > control/src/apiserver/protobuf_schema.rs
"""
import glob
import os
import re
import sys

REGISTRY = os.path.expanduser("~/.cargo/registry/src")


def crate_dir(name):
    dirs = sorted(glob.glob(os.path.join(REGISTRY, "*", name)))
    if not dirs:
        sys.exit(f"{name} not found under {REGISTRY}: run `cargo fetch` first")
    return dirs[-1]


PB = crate_dir("k8s-pb-0.9.0") + "/src"
OPENAPI = crate_dir("k8s-openapi-0.29.0") + "/src/v1_33"

# Kinds whose closure is tabled: every served kind plus the request-only ones.
ROOTS = [
    "api.core.v1.Namespace", "api.core.v1.Pod", "api.core.v1.Service", "api.core.v1.Node",
    "api.core.v1.Event", "api.core.v1.ConfigMap", "api.core.v1.Secret", "api.core.v1.Binding",
    "api.apps.v1.Deployment", "api.apps.v1.ReplicaSet", "api.discovery.v1.EndpointSlice",
    "api.coordination.v1.Lease", "api.autoscaling.v1.Scale",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions",
]
# Decoded by hand (well-known encodings), not walked.
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "Time",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.runtime.RawExtension": "Raw",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "Raw",
}
SCALARS = {"string": "Str", "bool": "Bool", "int32": "I32", "int64": "I64", "uint32": "U32",
           "uint64": "U64", "double": "F64", "float": "F32"}

STRUCT_RE = re.compile(r"^pub struct (\w+) \{$")
PROST_RE = re.compile(r'#\[prost\((.*)\)\]')
FIELD_RE = re.compile(r"^pub (r#)?(\w+): (.+),$")


def module_of(path):
    rel = os.path.relpath(path, PB)
    parts = rel.split(os.sep)[:-1]
    return parts


def resolve(type_path, module):
    """`super::super::x::Y` or `Y` relative to `module` -> dotted full name."""
    parts = type_path.split("::")
    mod = list(module)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    return ".".join(mod + parts)


def inner_type(rust_type):
    t = rust_type
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<"):
        if t.startswith(wrapper):
            t = t[len(wrapper):-1]
    return t


def parse_pb():
    messages = {}
    for path in glob.glob(PB + "/**/mod.rs", recursive=True):
        module = module_of(path)
        lines = [l.strip() for l in open(path)]
        current = None
        attr = None
        pending = ""
        for line in lines:
            if pending:
                line = pending + " " + line
                pending = ""
            if attr and line.startswith("pub ") and (not line.endswith(",") or line.count("<") != line.count(">")):
                pending = line
                continue
            m = STRUCT_RE.match(line)
            if m:
                current = ".".join(module + [m.group(1)])
                messages[current] = []
                continue
            if current is None:
                continue
            if line == "}":
                current = None
                continue
            m = PROST_RE.match(line)
            if m:
                attr = m.group(1)
                continue
            m = FIELD_RE.match(line)
            if m and attr:
                messages[current].append((attr, m.group(2), m.group(3), module))
                attr = None
    return messages


def parse_openapi():
    """(module dotted, struct) -> {rust_field: json_name}"""
    names = {}
    for path in glob.glob(OPENAPI + "/**/*.rs", recursive=True):
        rel = os.path.relpath(path, OPENAPI).split(os.sep)[:-1]
        text = open(path).read()
        # One type per file; its serde impl maps JSON names to `Key_<rust name>`.
        structs = [s for s in re.findall(r"impl<'de> crate::serde::Deserialize<'de> for (\w+) \{", text) if s != "Field"]
        if not structs:
            continue
        fields = {}
        for fm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
            fields[fm.group(2).rstrip("_")] = fm.group(1)
        names[(".".join(rel), structs[0])] = fields
    return names


def camel(snake):
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def main():
    pb = parse_pb()
    json_names = parse_openapi()
    out = {}
    queue = list(ROOTS)
    while queue:
        name = queue.pop()
        if name in out or name in SPECIAL:
            continue
        if name not in pb:
            sys.exit(f"message {name} not found in k8s-pb")
        module, struct = name.rsplit(".", 1)
        known = json_names.get((module.replace(".", "."), struct), {})
        fields = []
        for attr, rust, rust_type, mod in pb[name]:
            tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
            json_name = known.get(rust.rstrip("_"), camel(rust))
            repeated = "repeated" in attr
            kind_word = attr.split(",")[0].strip()
            if kind_word.startswith("btree_map") or kind_word.startswith("hash_map"):
                value = re.search(r'map = "string, (\w+)"', attr).group(1)
                if value == "message":
                    value_type = rust_type.split("BTreeMap<", 1)[1].rsplit(">", 1)[0].split(",", 1)[1].strip().rstrip(",").strip()
                    target = resolve(value_type, mod)
                    queue.append(target)
                    kind = f'Map(&Msg("{target}"))' if target not in SPECIAL else f"Map(&{SPECIAL[target]})"
                elif value == "bytes":
                    kind = "Map(&Bytes)"
                else:
                    kind = f"Map(&{SCALARS[value]})"
            elif kind_word == "message":
                target = resolve(inner_type(rust_type), mod)
                if target in SPECIAL:
                    kind = SPECIAL[target]
                else:
                    queue.append(target)
                    kind = f'Msg("{target}")'
            elif kind_word.startswith("bytes"):
                kind = "Bytes"
            elif kind_word in SCALARS:
                kind = SCALARS[kind_word]
            else:
                sys.exit(f"unhandled prost type {attr} in {name}")
            fields.append((tag, json_name, kind, repeated))
        out[name] = fields
    print("//! Generated by `control/tools/protobuf_schema.py` from k8s-pb 0.9 (field numbers) and")
    print("//! k8s-openapi 0.29 (JSON names); do not edit by hand.")
    print("use super::protobuf::Field;")
    print("use super::protobuf::Kind::*;")
    print()
    print("/// Every tabled message: its full name (`api.core.v1.Pod`) and fields.")
    print("pub static MESSAGES: &[(&str, &[Field])] = &[")
    for name in sorted(out):
        print(f'    ("{name}", &[')
        for tag, json_name, kind, repeated in sorted(out[name]):
            print(f'        Field {{ tag: {tag}, json: "{json_name}", kind: {kind}, repeated: {str(repeated).lower()} }},')
        print("    ]),")
    print("];")


if __name__ == "__main__":
    main()
