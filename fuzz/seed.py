#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target under fuzz/corpus/<target>/seed-*, from the
repository's own test manifests (crates/serin/tests/corpus and tests/e2e) and from the answers
webhook receivers, the load tester and Prometheus give in the tests. Run again after changing
those manifests; the inputs fuzzers found (other file names) are left alone."""
import json, pathlib, re, struct

import yaml  # python3-yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
MANIFESTS = sorted(
    list((ROOT / "crates/serin/tests/corpus").rglob("*.yaml"))
    + list((ROOT / "crates/serin/tests/e2e").rglob("*.yaml"))
)


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    (d / f"seed-{name}").write_bytes(data)


def rel(p):
    return str(p.relative_to(ROOT / "crates/serin/tests")).replace("/", "_")


docs = []
for path in MANIFESTS:
    text = path.read_text()
    put("api_manifest", rel(path), text)
    try:
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if isinstance(doc, dict) and doc.get("apiVersion", "").startswith("flagger.app"):
                docs.append((f"{rel(path)}-{i}", doc))
    except yaml.YAMLError:
        pass  # some invalid manifests are invalid YAML on purpose

for name, doc in docs:
    put("api_json", name.replace(".yaml", "") + ".json", json.dumps(doc, indent=1, default=str))

# Durations: every interval and timeout the manifests use, and Go's edge cases.
durations = set()
def walk(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("interval", "timeout") and isinstance(x, str):
                durations.add(x)
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)
for _, doc in docs:
    walk(doc)
durations |= {"0", "-0", "+0", "1ns", "1us", "1\u00b5s", "1\u03bcs", "1.5h", ".5s", "5.s", "1h2m3.004005006s",
              "2562047h47m16.854775807s", "2562047h47m16.854775808s", "9223372036854775807ns",
              "1.00000000000000000000000000000000001s", "-1s", "1", "1d", "", "1e3s", "5m5"}
for i, d in enumerate(sorted(durations)):
    put("go_duration", f"{i:03}", d)

# Templates: every MetricTemplate query, with a model. Fields: template, name, namespace,
# target, service, ingress, route, interval, value, min, max, key=value...
model = ["podinfo", "test", "podinfo", "podinfo", "", "", "1m", "99.5", "99", "500", "env=prod"]
templates = []
for name, doc in docs:
    if doc.get("kind") == "MetricTemplate":
        q = (doc.get("spec") or {}).get("query")
        if isinstance(q, str):
            templates.append((name, q))
templates += [
    ("builtin-success", 'sum(rate(x{ns="{{ namespace }}",w=~"{{ target }}"}[{{ interval }}]))'),
    ("trim", "a {{- name -}} b {{- .namespace}}"),
    ("variables", "{{ variables.env }} {{ variables.missing }}"),
    ("unclosed", "x {{ name"),
    ("empty", "{{ }}"),
    ("unknown", "{{ printf \"%s\" name }}"),
]
for name, q in templates:
    put("template_render", name, "\0".join([q] + model))

# The load tester: a path selector byte (index into the harness's PATHS; +0x80 sets
# --namespace-regexp), then the body, as in src/loadtester/tests.rs.
def payload(meta, ns="test"):
    return json.dumps({"name": "podinfo", "namespace": ns, "phase": "Progressing",
                       "checksum": "abc", "metadata": meta})
lt = [
    (0, payload({"type": "cmd", "cmd": "hey -z 1m -q 10 -c 2 http://podinfo-canary.test:9898/"})),
    (0, payload({"cmd": "echo hi", "logCmdOutput": "true"})),
    (0, payload({"type": "bash", "cmd": "curl -sd 'test' http://podinfo-canary:9898/token | grep token",
                 "returnCmdOutput": "true"})),
    (0, payload({"type": "helmv3", "cmd": "test run podinfo -n test"})),
    (0, payload({"type": "kubectl", "cmd": "get  pods\t-n test"})),
    (0, payload({"type": "concord"})),
    (0, payload({"type": "nope", "cmd": "x"})),
    (0, payload({})),
    (0x80, payload({"cmd": "x"}, ns="other")),
    (0, "not json"),
    (1, payload(None)), (2, payload(None)), (3, payload(None)),
    (4, payload(None)), (5, payload(None)), (6, payload(None)),
    (7, ""), (8, ""), (9, ""), (2, "{"), (5, '{"name":"a.b","namespace":"c"}'),
]
for i, (sel, body) in enumerate(lt):
    put("loadtester_request", f"{i:02}", bytes([sel]) + body.encode())

# Webhook answers: mode 0 = status(2 bytes) retries(1 byte) Retry-After \n body; mode 1 = raw.
def hook(status, retries, retry_after, body):
    return b"\0" + struct.pack(">H", status - 100) + bytes([retries]) + retry_after.encode() + b"\n" + body.encode()
hooks = [
    hook(200, 0, "", ""), hook(202, 0, "", "accepted"), hook(204, 0, "", ""),
    hook(403, 0, "", "Forbidden"), hook(500, 2, "", "boom"), hook(429, 2, "0", "slow down"),
    hook(503, 1, "120", ""), hook(501, 2, "", "not implemented"), hook(400, 0, "", "x" * 2000),
    b"\1HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"\1HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\nshort",
    b"\1HTTP/1.0 403 Forbidden\r\n\r\nno length, close-delimited",
    b"\1garbage",
    b"\1",
]
for i, h in enumerate(hooks):
    put("webhook_response", f"{i:02}", h)

# Prometheus answers: mode 0 = JSON body with 200; 1 = status(2 bytes) content-type \n body;
# 2 = raw. Shapes as Prometheus 2.x answers /api/v1/query.
def ok(data):
    return json.dumps({"status": "success", "data": data})
prom = [
    b"\0" + ok({"resultType": "vector", "result": [{"metric": {}, "value": [1700000000.123, "99.5"]}]}).encode(),
    b"\0" + ok({"resultType": "vector", "result": [
        {"metric": {"a": "1"}, "value": [1, "1"]}, {"metric": {"a": "2"}, "value": [1, "2.5e3"]}]}).encode(),
    b"\0" + ok({"resultType": "vector", "result": []}).encode(),
    b"\0" + ok({"resultType": "scalar", "result": [1, "NaN"]}).encode(),
    b"\0" + ok({"resultType": "scalar", "result": [1, "+Inf"]}).encode(),
    b"\0" + ok({"resultType": "string", "result": [1, "x"]}).encode(),
    b"\0" + ok({"resultType": "matrix", "result": [{"metric": {}, "values": [[1, "1"], [2, "2"]]}]}).encode(),
    b"\0" + json.dumps({"status": "error", "errorType": "bad_data",
                        "error": "1:5: parse error: unexpected end of input"}).encode(),
    b"\0" + json.dumps({"status": "success", "data": {"resultType": "vector", "result": []},
                        "warnings": ["w"], "stats": {}}).encode(),
    b"\1" + struct.pack(">H", 303) + b"text/plain\n" + b"Service Unavailable",
    b"\1" + struct.pack(">H", 222) + b"application/json; charset=utf-8\n" +
        json.dumps({"status": "error", "errorType": "execution", "error": "query timed out"}).encode(),
    b"\2HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"\2HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
    b"\2",
]
for i, p in enumerate(prom):
    put("prometheus_response", f"{i:02}", p)

# Dictionaries (libFuzzer -dict, passed by scripts/fuzz when fuzz/dict/<target>.dict exists):
# the words a mutation is unlikely to invent. For the API targets, every property name and enum
# value of serin's CRDs.
def dict_file(target, words):
    d = ROOT / "fuzz" / "dict"
    d.mkdir(exist_ok=True)
    def quote(w):  # libFuzzer's escapes: \\, \" and \xHH only
        return '"' + "".join(
            chr(b) if 32 <= b < 127 and chr(b) not in '\\"' else f"\\x{b:02x}" for b in w.encode()
        ) + '"'
    lines = sorted({quote(w) for w in words if w})
    (d / f"{target}.dict").write_text(f"# written by fuzz/seed.py\n" + "\n".join(lines) + "\n")

crd_words = set()
def schema_words(node):
    if isinstance(node, dict):
        for k, v in (node.get("properties") or {}).items():
            crd_words.add(k)
            schema_words(v)
        for v in node.get("enum") or []:
            if isinstance(v, str):
                crd_words.add(v)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                schema_words(node[key])
        for key in ("anyOf", "oneOf", "allOf"):
            for v in node.get(key) or []:
                schema_words(v)
for crd in yaml.safe_load_all((ROOT / "crds/flagger.app.yaml").read_text()):
    for v in crd["spec"]["versions"]:
        schema_words(v["schema"]["openAPIV3Schema"])
crd_words |= {"Canary", "MetricTemplate", "AlertProvider", "List", "flagger.app/v1beta1", "v1"}
dict_file("api_json", [f'"{w}"' for w in crd_words] + ["{", "}", "[", "]", "null", "true", "-1", "2147483648", "1e308", "\"\""])
dict_file("api_manifest", [f"{w}: " for w in crd_words] + ["\n---\n", "\n  - ", "{}", "[]", "~", "&a ", "*a", "!!str ", "2147483648", "1e308"])
dict_file("go_duration", ["ns", "us", "\u00b5s", "\u03bcs", "ms", "s", "m", "h", ".", "+", "-", "9223372036854775807", "2562047"])
dict_file("template_render", ["{{", "}}", "{{-", "-}}", "{{ ", " }}", ".", "variables.", "name", "namespace", "target", "service", "ingress", "route", "interval", "\u0000", "NaN", "inf", "-0", "1e308"])
dict_file("loadtester_request", ['"name"', '"namespace"', '"metadata"', '"type"', '"cmd"', '"bash"', '"helm"', '"helmv3"', '"kubectl"', '"concord"', '"ngrinder"', '"logCmdOutput"', '"returnCmdOutput"', '"true"', "null", "{}"])
dict_file("webhook_response", ["HTTP/1.1 ", "HTTP/1.0 ", "\r\n", "\r\n\r\n", "Content-Length: ", "Transfer-Encoding: chunked", "Retry-After: ", "Connection: close", "Content-Type: ", "0\r\n\r\n", "200", "202", "429", "500", "501"])
dict_file("prometheus_response", ['"status"', '"success"', '"error"', '"errorType"', '"data"', '"resultType"', '"vector"', '"scalar"', '"matrix"', '"string"', '"result"', '"metric"', '"value"', '"values"', '"stats"', '"warnings"', '"NaN"', '"+Inf"', '"-Inf"', "HTTP/1.1 200 OK\r\n", "Content-Type: application/json\r\n", "\r\n\r\n"])
