#!/usr/bin/env python3
"""Generate the protobuf field table of `korvet_apiserver::protobuf`.

Run by hand (never at build time) after changing the sources below:

    cargo fetch                        # brings the k8s-pb crate into ~/.cargo/registry
    python3 crates/apiserver/protobuf/generate.py            # writes the table
    python3 crates/apiserver/protobuf/generate.py --check    # compares, writes nothing
    python3 crates/apiserver/protobuf/generate.py -v         # also lists fallback names

See README.md beside this script.

Sources
  * The crate `k8s-pb` (Apache-2.0, kube-rs), whose prost-generated Rust source gives, per
    protobuf message of the Kubernetes API, each field's tag number, protobuf type and label
    (`#[prost(string, optional, tag = "3")]`) and a snake_case field name.
  * `crates/apiserver/openapi/k8s-v1.33-definitions.json` (JSON Schema of the v1.33 API) for the
    real JSON property names, the `required` lists and the group-version-kinds.

Each protobuf field is matched to the JSON property of the definition of the same name whose
name, lower-cased and stripped of everything but letters and digits, equals the Rust field
name stripped the same way (`podCIDRs` ~ `pod_cid_rs`, `$ref` ~ `r#ref`). Fields of messages
that have no definition (versions not served by v1.33, newer fields) borrow the name of an
equally-stripped property found anywhere in the schema, else fall back to camelCase of the Rust
name; every such field is reported on stderr.

Output: `k8s-v1.33-protobuf.json` beside this script:

    {"packages": {"apps/v1": "k8s.io.api.apps.v1", "v1": "k8s.io.api.core.v1", ...},
     "kinds":    {},   # kinds whose message is not <package>.<Kind> nor meta/v1's <Kind>
     "specials": {"k8s.io.apimachinery.pkg.apis.meta.v1.Time": "time", ...},
     "messages": {"k8s.io.api.core.v1.ConfigMap":
                     {"1": ["metadata", "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta"],
                      "2": ["data", "map:string:string"], ...}}}

A field is `[jsonName, type]` or `[jsonName, type, flags]`. `type` is a scalar (`string`,
`bytes`, `bool`, `int32`, `int64`, `double`), a message's full protobuf name, or
`map:<key>:<value>` with scalar or message key and value. Flags: `r` repeated; `z` keep a zero
value (empty string, 0, false) that the wire carries; `i` inline (the message's properties are
merged into the parent, as Go's `json:",inline"`).

Why `z`: Go's protobuf marshaller writes every non-pointer scalar field, zero or not, while its
JSON marshaller omits `omitempty` zeros; a pointer field is written by both only when set. The
wire can't tell the two apart, so zeros are dropped except for fields that the schema marks
required (no `omitempty`), that the schema describes as "a pointer to distinguish between
explicit zero and not specified", or that are listed in POINTER_FIELDS below (pointer fields
whose explicit zero means something else than unset).
"""

import json
import os
import re
import sys
from glob import glob

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = os.path.join(HERE, "..", "openapi", "k8s-v1.33-definitions.json")
OUT = os.path.join(HERE, "k8s-v1.33-protobuf.json")
K8S_PB_VERSION = "0.9.0"
META = "k8s.io.apimachinery.pkg.apis.meta.v1"

# Messages whose JSON form is not an object of their fields.
SPECIALS = {
    "k8s.io.apimachinery.pkg.apis.meta.v1.Time": "time",
    "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime": "microtime",
    "k8s.io.apimachinery.pkg.apis.meta.v1.Duration": "duration",
    "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1": "rawjson",
    "k8s.io.apimachinery.pkg.apis.meta.v1.Verbs": "items",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "quantity",
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": "quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "rawextension",
}
# Per apiextensions version.
for _v in ("v1", "v1beta1"):
    _p = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions." + _v + "."
    SPECIALS[_p + "JSON"] = "rawjson"
    SPECIALS[_p + "JSONSchemaPropsOrArray"] = "schemaorarray"
    SPECIALS[_p + "JSONSchemaPropsOrBool"] = "schemaorbool"
    SPECIALS[_p + "JSONSchemaPropsOrStringArray"] = "schemaorstringarray"

# Pointer scalar fields (Go `*int32`, `*bool`, `*string`, ...) whose explicit zero differs from
# unset, by message (any version of the package) and JSON name.
POINTER_FIELDS = {
    "api.apps.DeploymentSpec": ["replicas", "revisionHistoryLimit", "progressDeadlineSeconds"],
    "api.apps.ReplicaSetSpec": ["replicas"],
    "api.apps.StatefulSetSpec": ["replicas", "revisionHistoryLimit"],
    "api.apps.DaemonSetSpec": ["revisionHistoryLimit"],
    "api.apps.RollingUpdateStatefulSetStrategy": ["partition"],
    # Not pointers, but a Scale's replicas are its point, 0 included (a JSON client sends
    # them explicitly too).
    "api.autoscaling.ScaleSpec": ["replicas"],
    "api.apps.ScaleSpec": ["replicas"],
    "api.extensions.ScaleSpec": ["replicas"],
    "api.autoscaling.HorizontalPodAutoscalerSpec": ["minReplicas", "targetCPUUtilizationPercentage"],
    "api.autoscaling.HPAScalingRules": ["stabilizationWindowSeconds", "selectPolicy"],
    "api.autoscaling.MetricTarget": ["averageUtilization"],
    "api.batch.JobSpec": [
        "parallelism", "completions", "activeDeadlineSeconds", "podFailurePolicy",
        "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes", "ttlSecondsAfterFinished",
        "manualSelector", "suspend", "completionMode", "podReplacementPolicy", "managedBy",
    ],
    "api.batch.CronJobSpec": [
        "startingDeadlineSeconds", "successfulJobsHistoryLimit", "failedJobsHistoryLimit",
        "suspend", "timeZone",
    ],
    "api.batch.PodFailurePolicyOnExitCodesRequirement": ["containerName"],
    "api.core.PodSpec": [
        "terminationGracePeriodSeconds", "activeDeadlineSeconds", "automountServiceAccountToken",
        "shareProcessNamespace", "priority", "enableServiceLinks", "setHostnameAsFQDN",
        "hostUsers", "runtimeClassName", "preemptionPolicy",
    ],
    "api.core.PodSecurityContext": [
        "runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "fsGroupChangePolicy",
        "supplementalGroupsPolicy", "seLinuxChangePolicy",
    ],
    "api.core.SecurityContext": [
        "privileged", "runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
        "allowPrivilegeEscalation", "procMount",
    ],
    "api.core.Container": ["restartPolicy"],
    "api.core.EphemeralContainer": ["restartPolicy"],
    "api.core.ServiceAccount": ["automountServiceAccountToken"],
    "api.core.ServiceSpec": [
        "allocateLoadBalancerNodePorts", "ipFamilyPolicy", "loadBalancerClass",
        "internalTrafficPolicy", "trafficDistribution",
    ],
    "api.core.ServicePort": ["appProtocol"],
    "api.core.ClientIPConfig": ["timeoutSeconds"],
    "api.core.SecretVolumeSource": ["defaultMode", "optional"],
    "api.core.ConfigMapVolumeSource": ["defaultMode", "optional"],
    "api.core.ProjectedVolumeSource": ["defaultMode"],
    "api.core.DownwardAPIVolumeSource": ["defaultMode"],
    "api.core.DownwardAPIVolumeFile": ["mode"],
    "api.core.KeyToPath": ["mode"],
    "api.core.ServiceAccountTokenProjection": ["expirationSeconds"],
    "api.core.ConfigMapKeySelector": ["optional"],
    "api.core.SecretKeySelector": ["optional"],
    "api.core.ConfigMapEnvSource": ["optional"],
    "api.core.SecretEnvSource": ["optional"],
    "api.core.ConfigMapProjection": ["optional"],
    "api.core.SecretProjection": ["optional"],
    "api.core.CSIVolumeSource": ["readOnly", "fsType"],
    "api.core.PersistentVolumeClaimSpec": [
        "storageClassName", "volumeMode", "volumeAttributesClassName",
    ],
    "api.core.PersistentVolumeSpec": ["volumeMode", "volumeAttributesClassName"],
    "api.core.ReplicationControllerSpec": ["replicas"],
    "api.core.Toleration": ["tolerationSeconds"],
    "api.core.Secret": ["immutable"],
    "api.core.ConfigMap": ["immutable"],
    "api.core.ContainerPort": [],
    "api.core.EndpointPort": ["appProtocol"],
    "api.core.HTTPGetAction": [],
    "api.core.Probe": ["terminationGracePeriodSeconds"],
    "api.core.Event": ["eventTime"],
    "api.core.PodLogOptions": [
        "sinceSeconds", "tailLines", "limitBytes", "stream",
    ],
    "apimachinery.pkg.apis.meta.DeleteOptions": [
        "gracePeriodSeconds", "orphanDependents", "propagationPolicy",
        "ignoreStoreReadErrorWithClusterBreakingPotential",
    ],
    "apimachinery.pkg.apis.meta.Preconditions": ["uid", "resourceVersion"],
    "apimachinery.pkg.apis.meta.ListMeta": ["remainingItemCount"],
    "apimachinery.pkg.apis.meta.OwnerReference": ["controller", "blockOwnerDeletion"],
    "apimachinery.pkg.apis.meta.ObjectMeta": ["deletionGracePeriodSeconds"],
    "apimachinery.pkg.apis.meta.CreateOptions": [],
    "apimachinery.pkg.apis.meta.PatchOptions": ["force"],
    "api.policy.PodDisruptionBudgetSpec": ["unhealthyPodEvictionPolicy"],
    "api.networking.IngressSpec": ["ingressClassName"],
    "api.networking.HTTPIngressPath": ["pathType"],
    "api.networking.NetworkPolicyPort": ["endPort", "protocol"],
    "api.networking.IngressClassParametersReference": ["namespace", "scope", "apiGroup"],
    "api.discovery.EndpointConditions": ["ready", "serving", "terminating"],
    "api.discovery.EndpointPort": ["name", "protocol", "port", "appProtocol"],
    "api.discovery.Endpoint": ["hostname", "nodeName", "zone"],
    "api.authentication.TokenRequestSpec": ["expirationSeconds"],
    "api.scheduling.PriorityClass": ["preemptionPolicy"],
    "api.storage.StorageClass": ["allowVolumeExpansion", "reclaimPolicy", "volumeBindingMode"],
    "api.storage.CSIDriverSpec": [
        "attachRequired", "podInfoOnMount", "storageCapacity", "requiresRepublish",
        "seLinuxMount", "fsGroupPolicy", "nodeAllocatableUpdatePeriodSeconds",
    ],
    "api.storage.VolumeNodeResources": ["count"],
    "api.admissionregistration.ValidatingWebhook": [
        "timeoutSeconds", "failurePolicy", "sideEffects", "matchPolicy",
    ],
    "api.admissionregistration.MutatingWebhook": [
        "timeoutSeconds", "failurePolicy", "sideEffects", "matchPolicy", "reinvocationPolicy",
    ],
    "api.admissionregistration.ServiceReference": ["path", "port"],
    "api.admissionregistration.WebhookClientConfig": ["url"],
    "api.admissionregistration.Rule": ["scope"],
    "api.admissionregistration.ValidatingAdmissionPolicySpec": ["failurePolicy"],
    "api.admissionregistration.MutatingAdmissionPolicySpec": ["failurePolicy"],
    "api.coordination.LeaseSpec": [
        "holderIdentity", "leaseDurationSeconds", "leaseTransitions", "strategy",
        "preferredHolder",
    ],
    "apiextensions_apiserver.pkg.apis.apiextensions.ServiceReference": ["path", "port"],
    "apiextensions_apiserver.pkg.apis.apiextensions.WebhookClientConfig": ["url"],
    "apiextensions_apiserver.pkg.apis.apiextensions.JSONSchemaProps": [
        "maximum", "minimum", "multipleOf", "maxLength", "minLength", "maxItems", "minItems",
        "maxProperties", "minProperties", "nullable", "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
        "x-kubernetes-list-type", "x-kubernetes-map-type",
    ],
    "apiextensions_apiserver.pkg.apis.apiextensions.ValidationRule": [
        "messageExpression", "reason", "fieldPath", "optionalOldSelf",
    ],
    "kube_aggregator.pkg.apis.apiregistration.ServiceReference": ["port"],
}

PROST_SCALARS = {"string", "bytes", "bool", "int32", "int64", "double"}


def norm(name):
    return re.sub(r"[^a-z0-9]", "", name.replace("r#", "").lower())


def camel(rust_name):
    parts = rust_name.replace("r#", "").split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def find_k8s_pb():
    roots = glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-pb-" + K8S_PB_VERSION + "/src"))
    if not roots:
        sys.exit("k8s-pb %s not found under ~/.cargo/registry/src; run `cargo fetch`" % K8S_PB_VERSION)
    return roots[0]


def proto_package(module):
    """Rust module path of k8s-pb (['api', 'core', 'v1']) -> protobuf package."""
    return "k8s.io." + ".".join(module)


def definition_prefix(package):
    """Protobuf package -> prefix of the schema's definition names."""
    rest = package[len("k8s.io."):]
    rest = rest.replace("apiextensions_apiserver", "apiextensions-apiserver")
    rest = rest.replace("kube_aggregator", "kube-aggregator")
    return "io.k8s." + rest


STRUCT_RE = re.compile(r"^pub struct (\w+) \{(\})?\s*$")
ATTR_RE = re.compile(r"^\s*#\[prost\((.*)\)\]\s*$")
FIELD_RE = re.compile(r"^\s*pub ((?:r#)?\w+):\s*(.*)$")


def parse_rust(path):
    """Yields (struct name, [(tag, rust name, attr, rust type)])."""
    with open(path) as f:
        lines = f.read().split("\n")
    i = 0
    while i < len(lines):
        m = STRUCT_RE.match(lines[i])
        if not m:
            i += 1
            continue
        name, fields = m.group(1), []
        i += 1
        if m.group(2):
            yield name, fields
            continue
        while lines[i] != "}":
            a = ATTR_RE.match(lines[i])
            if a:
                attr = a.group(1)
                i += 1
                f = FIELD_RE.match(lines[i])
                if not f:
                    raise SystemExit("%s:%d: field expected" % (path, i + 1))
                rust_name, ty = f.group(1), f.group(2)
                while not ty.rstrip().endswith(",") or ty.count("<") != ty.count(">"):
                    i += 1
                    ty += lines[i].strip()
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                fields.append((tag, rust_name, attr, ty.rstrip().rstrip(",")))
            i += 1
        yield name, fields


def resolve(module, path):
    """Rust type path relative to `module` -> (module, name)."""
    segs = [s for s in path.split("::") if s]
    mod = list(module)
    while segs and segs[0] == "super":
        mod.pop()
        segs.pop(0)
    if segs and segs[0] == "crate":
        mod = []
        segs.pop(0)
    return tuple(mod + segs[:-1]), segs[-1]


def rust_type_inner(ty):
    """Strips Option<>, Vec<>, Box<> wrappers."""
    ty = re.sub(r"\s+", "", ty).replace(",>", ">")
    changed = True
    while changed:
        changed = False
        for w in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
            if ty.startswith(w) and ty.endswith(">"):
                ty = ty[len(w):-1]
                changed = True
    return ty


def main():
    check = "--check" in sys.argv
    src = find_k8s_pb()
    with open(SCHEMA) as f:
        defs = json.load(f)["$defs"]
    defs_ci = {}
    for dname in defs:
        defs_ci.setdefault(dname.lower(), dname)

    # Pass 1: read every struct.
    structs = {}  # (module tuple, rust name) -> fields
    for path in sorted(glob(os.path.join(src, "**", "mod.rs"), recursive=True)):
        module = tuple(os.path.relpath(os.path.dirname(path), src).split(os.sep))
        if "testapigroup" in module:
            continue
        for name, fields in parse_rust(path):
            structs[(module, name)] = fields

    # Protobuf names: the definition's spelling when there is one (prost renames
    # `AWSElasticBlockStoreVolumeSource` to `AwsElasticBlockStoreVolumeSource`).
    # Messages without a definition take the spelling of a definition of the same name in
    # another package or version, if any.
    short_names = {}
    for dname in defs:
        short_names.setdefault(dname.rsplit(".", 1)[1].lower(), dname.rsplit(".", 1)[1])
    proto_name, def_of = {}, {}
    for (module, name) in structs:
        package = proto_package(module)
        dname = defs_ci.get((definition_prefix(package) + "." + name).lower())
        short = dname.rsplit(".", 1)[1] if dname else short_names.get(name.lower(), name)
        proto_name[(module, name)] = package + "." + short
        if dname:
            def_of[(module, name)] = dname
    for (module, name) in structs:
        if name == "ExtraValue":
            SPECIALS[proto_name[(module, name)]] = "items"
    for special in SPECIALS:
        if special not in proto_name.values():
            raise SystemExit("special message %s not found in k8s-pb" % special)

    # JSON names seen anywhere in the schema, by stripped name (fallback for unmatched fields).
    global_names = {}
    for d in defs.values():
        for prop in d.get("properties", {}):
            global_names.setdefault(norm(prop), set()).add(prop)

    pointer = {}
    for key, names in POINTER_FIELDS.items():
        pkg, msg = key.rsplit(".", 1)
        pointer[(pkg, msg)] = set(names)

    def scalar_or_message(module, kind, rust_ty):
        if kind in PROST_SCALARS:
            return kind
        if kind == "message":
            target = resolve(module, rust_type_inner(rust_ty))
            if target not in structs:
                raise SystemExit("unresolved message type %s" % rust_ty)
            return proto_name[target]
        raise SystemExit("unexpected prost type " + kind)

    # Go `json:",inline"` fields: a message field without a property of its name, most of
    # whose message's fields are properties of the parent. The inlined message (VolumeSource,
    # ProbeHandler, ...) has no definition of its own: it takes the parent's.
    inline, inherit, inline_by_short = set(), {}, set()
    for (module, name), fields in sorted(structs.items()):
        dname = def_of.get((module, name))
        if not dname:
            continue
        prop_norms = {norm(p) for p in defs[dname].get("properties", {})}
        for tag, rust_name, attr, rust_ty in fields:
            if not attr.startswith("message") or ", repeated" in attr:
                continue
            if norm(rust_name) in prop_norms:
                continue
            target = resolve(module, rust_type_inner(rust_ty))
            tnorms = [norm(f[1]) for f in structs.get(target, [])]
            hits = sum(1 for n in tnorms if n in prop_norms)
            if hits and 2 * hits >= len(tnorms):
                inline.add((module, name, rust_name))
                inline_by_short.add((name, rust_name))
                if target not in def_of:
                    inherit[target] = dname
    for (module, name), fields in structs.items():
        if (module, name) not in def_of:
            for f in fields:
                if (name, f[1]) in inline_by_short:
                    inline.add((module, name, f[1]))

    def inlined_norms(target):
        names = set()
        for f in structs[target]:
            if (target[0], target[1], f[1]) in inline:
                names |= inlined_norms(resolve(target[0], rust_type_inner(f[3])))
            else:
                names.add(norm(f[1]))
        return names

    messages, unmatched, fallback, unused_props = {}, [], [], []
    for (module, name), fields in sorted(structs.items()):
        pname = proto_name[(module, name)]
        dname = def_of.get((module, name)) or inherit.get((module, name))
        borrowed = dname is None
        if borrowed:
            # Another version of the same message (apps/v1beta1 Deployment -> apps/v1).
            prefix = definition_prefix(proto_package(module[:-1])) + "."
            short = pname.rsplit(".", 1)[1]
            for other in sorted(defs, reverse=True):
                if other.startswith(prefix) and other.rsplit(".", 1)[1] == short:
                    dname = other
                    break
        d = defs.get(dname, {}) if dname else {}
        props = d.get("properties", {})
        is_special = pname in SPECIALS
        by_norm = {}
        for prop in props:
            by_norm.setdefault(norm(prop), prop)
        required = set(d.get("required", []))
        pkg_key = ".".join(module[:-1])  # without the version
        ptr = pointer.get((pkg_key, pname.rsplit(".", 1)[1]), set())
        table, used = {}, set()
        for tag, rust_name, attr, rust_ty in fields:
            kind = attr.split(",")[0].strip()
            flags = ""
            if kind.startswith("btree_map"):
                kv = re.search(r'btree_map = "(\w+), (\w+)"', attr)
                key_kind, val_kind = kv.group(1), kv.group(2)
                inner = re.sub(r"\s+", "", rust_ty).replace(",>", ">")
                inner = inner[inner.index("<") + 1:-1]
                key_ty, val_ty = inner.split(",", 1)
                ty = "map:%s:%s" % (
                    scalar_or_message(module, key_kind, key_ty),
                    scalar_or_message(module, val_kind, val_ty),
                )
            else:
                if kind.startswith("bytes"):
                    kind = "bytes"
                ty = scalar_or_message(module, kind, rust_ty)
                if ", repeated" in attr:
                    flags += "r"
            n = norm(rust_name)
            json_name = by_norm.get(n)
            if (module, name, rust_name) in inline:
                json_name = ""
                flags += "i"
                target = resolve(module, rust_type_inner(rust_ty))
                used |= {p for p in props if norm(p) in inlined_norms(target)}
            elif is_special:
                json_name = rust_name.replace("r#", "")
            elif json_name is None:
                # camelCase of the Rust name is right unless the Go name has acronyms
                # (`hostIP` became `host_ip`); a property of the same letters elsewhere in
                # the schema with more capitals than that camelCase restores them.
                json_name = camel(rust_name)
                caps = lambda s: sum(1 for c in s if c.isupper())  # noqa: E731
                candidates = [
                    c for c in sorted(global_names.get(n, ())) if caps(c) > caps(json_name) and not c[:1].isupper()
                ]
                if len(candidates) == 1:
                    json_name = candidates[0]
                elif candidates:
                    raise SystemExit("%s.%s: which of %s?" % (pname, rust_name, candidates))
                (fallback if borrowed else unmatched).append(
                    "%s.%s (tag %d) -> %s" % (pname, rust_name, tag, json_name)
                )
            else:
                used.add(json_name)
            if json_name and ty in PROST_SCALARS and "r" not in flags:
                prop = props.get(json_name, {})
                if (
                    json_name in required
                    or json_name in ptr
                    or "pointer to distinguish" in prop.get("description", "")
                ):
                    flags += "z"
            entry = [json_name, ty] + ([flags] if flags else [])
            table[str(tag)] = entry
        for prop in props:
            if (module, name) in inherit or borrowed:
                break
            if prop not in used and prop not in ("apiVersion", "kind"):
                unused_props.append("%s.%s" % (dname, prop))
        messages[pname] = dict(sorted(table.items(), key=lambda kv: int(kv[0])))

    # Kinds: group/version/Kind -> message, from the schema's x-kubernetes-group-version-kind
    # and, for kinds of packages the schema doesn't cover, from k8s-pb's Resource impls.
    # Group-versions map to packages ("apps/v1" -> "k8s.io.api.apps.v1"), and a kind to the
    # message of its name in that package or else in meta/v1 (DeleteOptions, Status, ...,
    # listed under every group-version); "kinds" lists the kinds that map otherwise.
    all_kinds, packages = {}, {}
    def_to_proto = {d: proto_name[k] for k, d in def_of.items()}
    for dname, d in sorted(defs.items()):
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            if dname not in def_to_proto:
                continue
            g, v, k = gvk["group"], gvk["version"], gvk["kind"]
            gv = "%s/%s" % (g, v) if g else v
            all_kinds.setdefault(gv + "/" + k, def_to_proto[dname])
            if not dname.startswith("io.k8s.apimachinery."):
                packages.setdefault(gv, def_to_proto[dname].rsplit(".", 1)[0])
    for path in sorted(glob(os.path.join(src, "**", "mod.rs"), recursive=True)):
        module = tuple(os.path.relpath(os.path.dirname(path), src).split(os.sep))
        text = open(path).read()
        for m in re.finditer(
            r'impl crate::Resource for (\w+) \{\s*const API_VERSION: &\'static str = "([^"]*)";\s*'
            r'const GROUP: &\'static str = "([^"]*)";\s*const VERSION: &\'static str = "([^"]*)";\s*'
            r'const KIND: &\'static str = "([^"]*)";',
            text,
        ):
            name, _, g, v, k = m.groups()
            if (module, name) in proto_name:
                gv = "%s/%s" % (g, v) if g else v
                all_kinds.setdefault(gv + "/" + k, proto_name[(module, name)])
                packages.setdefault(gv, proto_package(module))
    # Packages of group-versions that the schema doesn't serve (apps/v1beta1, ...): same
    # group, other version.
    group_of = {}
    for gv, package in packages.items():
        group_of[package.rsplit(".", 1)[0]] = gv.rsplit("/", 1)[0] if "/" in gv else ""
    for (module, name) in structs:
        package = proto_package(module)
        group = group_of.get(package.rsplit(".", 1)[0])
        if group is not None:
            packages.setdefault("%s/%s" % (group, module[-1]) if group else module[-1], package)
    kinds = {}
    for key, message in all_kinds.items():
        gv, k = key.rsplit("/", 1)
        if packages.get(gv, "") + "." + k != message and META + "." + k != message:
            kinds[key] = message

    out = {
        "about": "Protobuf field numbers of the Kubernetes API mapped to JSON names; generated by "
        "generate.py from k8s-pb %s (Apache-2.0) and k8s-v1.33-definitions.json. Do not edit."
        % K8S_PB_VERSION,
        "packages": dict(sorted(packages.items())),
        "kinds": dict(sorted(kinds.items())),
        "specials": dict(sorted(SPECIALS.items())),
        "messages": messages,
    }
    # One message per line keeps diffs readable.
    compact = lambda v: json.dumps(v, separators=(",", ":"))  # noqa: E731
    parts = []
    for key, value in out.items():
        if key == "messages":
            body = ",\n".join(
                compact(name) + ":" + compact(fields) for name, fields in sorted(value.items())
            )
            parts.append(compact(key) + ":{\n" + body + "\n}")
        else:
            parts.append(compact(key) + ":" + compact(value))
    text = "{" + ",\n".join(parts) + "}\n"
    json.loads(text)

    nfields = sum(len(t) for t in messages.values())
    print(
        "%d messages, %d fields, %d group-versions, %d kinds; %d fields of defined messages unmatched, "
        "%d fields of undefined messages named by fallback, %d schema properties without a field"
        % (len(messages), nfields, len(packages), len(kinds), len(unmatched), len(fallback), len(unused_props)),
        file=sys.stderr,
    )
    for line in unmatched:
        print("unmatched: " + line, file=sys.stderr)
    if "-v" in sys.argv:
        for line in fallback:
            print("fallback: " + line, file=sys.stderr)
    for line in unused_props:
        print("no field for property: " + line, file=sys.stderr)
    if check:
        with open(OUT) as f:
            if f.read() != text:
                sys.exit("%s is out of date" % OUT)
        return
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
