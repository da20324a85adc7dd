//! What happens to an object on its way into the store: generic metadata handling (names,
//! uid, timestamps, generation, the spec/status split) and the per-kind defaults and
//! validation that the registry table points to.

use korvet_apimachinery::names::{
    is_dns_label, is_dns_subdomain, is_label_value, is_qualified_name,
};
use serde_json::{json, Map, Value};

use crate::error::Cause;
use crate::registry::{NameRule, ResourceType};

pub(crate) fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    // Kubernetes timestamps have second precision.
    let secs = now.as_second();
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now.to_string())
}

/// The time `secs` seconds from now, as an RFC 3339 timestamp.
pub(crate) fn rfc3339_in(secs: i64) -> String {
    let now = jiff::Timestamp::now().as_second();
    jiff::Timestamp::from_second(now + secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| now_rfc3339())
}

pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Checks a name against its rule; the causes carry upstream's messages.
pub(crate) fn validate_name(rule: NameRule, field: &str, name: &str) -> Vec<Cause> {
    let value = json!(name);
    match rule {
        NameRule::Label if !is_dns_label(name) => {
            let detail = if name.len() > 63 {
                "must be no more than 63 characters"
            } else {
                DNS1123_LABEL_MSG
            };
            vec![Cause::invalid(field, &value, detail)]
        }
        NameRule::Subdomain if !is_dns_subdomain(name) => {
            let detail = if name.len() > 253 {
                "must be no more than 253 characters"
            } else {
                DNS1123_SUBDOMAIN_MSG
            };
            vec![Cause::invalid(field, &value, detail)]
        }
        NameRule::PathSegment if name == "." || name == ".." => {
            vec![Cause::invalid(
                field,
                &value,
                &format!("may not be '{name}'"),
            )]
        }
        NameRule::PathSegment if name.contains('/') || name.contains('%') => {
            vec![Cause::invalid(field, &value, "may not contain '/' or '%'")]
        }
        _ => Vec::new(),
    }
}

pub(crate) fn validate_label_key(field: &str, key: &str) -> Option<Cause> {
    (!is_qualified_name(key)).then(|| {
        Cause::invalid(
            field,
            &json!(key),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'), with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
        )
    })
}

pub(crate) fn validate_label_value(field: &str, value: &str) -> Option<Cause> {
    (!is_label_value(value)).then(|| {
        Cause::invalid(
            field,
            &json!(value),
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        )
    })
}

/// Metadata checks every object gets: labels, annotation keys, sizes.
pub(crate) fn validate_metadata(resource: &ResourceType, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &object["metadata"];
    if let Some(name) = meta["name"].as_str() {
        causes.extend(validate_name(resource.name_rule, "metadata.name", name));
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            let field = "metadata.labels";
            causes.extend(validate_label_key(field, k));
            match v.as_str() {
                Some(v) => causes.extend(validate_label_value(field, v)),
                None => causes.push(Cause::invalid(field, v, "label values must be strings")),
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            causes.extend(validate_label_key("metadata.annotations", k));
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            causes.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: may not be more than 262144 bytes",
            ));
        }
    }
    causes
}

/// Sets what the server owns on a new object.
pub(crate) fn prepare_create(resource: &ResourceType, object: &mut Value) {
    let meta = object_map(object, "metadata");
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("selfLink");
    if resource.has_status() {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    if resource.kind == "Job" && resource.group == "batch" {
        job_selector(object);
    }
    if is_namespace(resource) {
        namespace_finalizer(object);
    }
    if resource.has_status() && resource.kind != "Namespace" {
        // Status is written through the status subresource only (upstream drops it on
        // create for resources with a status subresource).
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
    }
}

/// Carries server-owned metadata over from the stored object and bumps the generation
/// when anything but metadata and status changed.
pub(crate) fn prepare_update(resource: &ResourceType, old: &Value, object: &mut Value) {
    {
        let meta = object_map(object, "metadata");
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old["metadata"].get(field) {
                Some(v) => {
                    meta.insert(field.into(), v.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
    }
    if is_namespace(resource) {
        // Only `namespaces/NAME/finalize` changes a namespace's finalizers (upstream).
        let spec = object_map(object, "spec");
        match old["spec"].get("finalizers") {
            Some(finalizers) => {
                spec.insert("finalizers".into(), finalizers.clone());
            }
            None => {
                spec.remove("finalizers");
            }
        }
    }
    if resource.has_status() {
        // The main resource cannot change status, only its own spec.
        match old.get("status") {
            Some(status) => object["status"] = status.clone(),
            None => {
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        if spec_changed(old, object) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
    }
}

/// For the status subresource: only `status` of the new object counts.
pub(crate) fn prepare_status_update(old: &Value, object: &Value) -> Value {
    let mut merged = old.clone();
    match object.get("status") {
        Some(status) => merged["status"] = status.clone(),
        None => {
            if let Some(map) = merged.as_object_mut() {
                map.remove("status");
            }
        }
    }
    merged
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut m = v.as_object().cloned().unwrap_or_default();
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
        m
    };
    strip(old) != strip(new)
}

fn object_map<'a>(object: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    if !object[field].is_object() {
        object[field] = json!({});
    }
    match object[field].as_object_mut() {
        Some(map) => map,
        None => unreachable!("just made an object"),
    }
}

fn set_default(object: &mut Value, path: &[&str], value: Value) {
    let mut at = object;
    for (i, key) in path.iter().enumerate() {
        if !at.is_object() {
            return;
        }
        if i == path.len() - 1 {
            if at.get(*key).is_none_or(Value::is_null) {
                at[*key] = value;
            }
            return;
        }
        if at.get(*key).is_none_or(Value::is_null) {
            at[*key] = json!({});
        }
        at = &mut at[*key];
    }
}

/// The finalizer of upstream's namespace controller: a namespace is removed only once
/// it has emptied the namespace and taken this out of `spec.finalizers`.
pub(crate) const NAMESPACE_FINALIZER: &str = "kubernetes";

pub(crate) fn is_namespace(resource: &ResourceType) -> bool {
    resource.kind == "Namespace" && resource.group.is_empty()
}

/// A new namespace always carries the namespace controller's finalizer. Only at create,
/// not as a default: a default would put it back on every write after `finalize` took it
/// out (upstream's PrepareForCreate).
fn namespace_finalizer(ns: &mut Value) {
    if !ns["spec"].is_object() {
        ns["spec"] = json!({});
    }
    let finalizers = &mut ns["spec"]["finalizers"];
    if !finalizers.is_array() {
        *finalizers = json!([]);
    }
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f == NAMESPACE_FINALIZER) {
            list.push(json!(NAMESPACE_FINALIZER));
        }
    }
}

pub(crate) fn namespace_defaults(ns: &mut Value) {
    set_default(ns, &["status", "phase"], json!("Active"));
    let name = ns["metadata"]["name"].clone();
    if name.is_string() {
        set_default(ns, &["metadata", "labels"], json!({}));
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
    }
}

fn container_defaults(container: &mut Value) {
    set_default(
        container,
        &["terminationMessagePath"],
        json!("/dev/termination-log"),
    );
    set_default(container, &["terminationMessagePolicy"], json!("File"));
    let image = container["image"].as_str().unwrap_or_default();
    let tag_latest = !image.contains('@')
        && image
            .rsplit('/')
            .next()
            .is_none_or(|last| !last.contains(':') || last.ends_with(":latest"));
    let policy = if tag_latest { "Always" } else { "IfNotPresent" };
    set_default(container, &["imagePullPolicy"], json!(policy));
    if let Some(ports) = container["ports"].as_array_mut() {
        for port in ports {
            set_default(port, &["protocol"], json!("TCP"));
        }
    }
    set_default(container, &["resources"], json!({}));
}

pub(crate) fn pod_spec_defaults(spec: &mut Value) {
    set_default(spec, &["restartPolicy"], json!("Always"));
    set_default(spec, &["terminationGracePeriodSeconds"], json!(30));
    set_default(spec, &["dnsPolicy"], json!("ClusterFirst"));
    set_default(spec, &["securityContext"], json!({}));
    set_default(spec, &["schedulerName"], json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            containers.iter_mut().for_each(container_defaults);
        }
    }
}

pub(crate) fn pod_defaults(pod: &mut Value) {
    if pod["spec"].is_object() {
        pod_spec_defaults(&mut pod["spec"]);
        set_default(pod, &["spec", "serviceAccountName"], json!("default"));
        set_default(pod, &["spec", "enableServiceLinks"], json!(true));
        // spec.priority and spec.preemptionPolicy come from the Priority admission
        // plugin (crate::priority), which refuses values that disagree with the class.
        default_toleration_seconds(&mut pod["spec"]);
    }
    set_default(pod, &["status", "phase"], json!("Pending"));
    set_default(pod, &["status", "qosClass"], json!("BestEffort"));
}

/// Upstream's DefaultTolerationSeconds admission: a pod that does not tolerate the
/// `not-ready` (or `unreachable`) NoExecute taint gets a toleration of it for 300 s.
fn default_toleration_seconds(spec: &mut Value) {
    const DEFAULT_SECONDS: i64 = 300;
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerated = spec["tolerations"].as_array().is_some_and(|list| {
            list.iter().any(|t| {
                let effect = t["effect"].as_str().unwrap_or_default();
                let t_key = t["key"].as_str().unwrap_or_default();
                let operator = t["operator"].as_str().unwrap_or("Equal");
                (effect.is_empty() || effect == "NoExecute")
                    && (t_key == key || (t_key.is_empty() && operator == "Exists"))
            })
        });
        if tolerated {
            continue;
        }
        if !spec["tolerations"].is_array() {
            spec["tolerations"] = json!([]);
        }
        if let Some(list) = spec["tolerations"].as_array_mut() {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_SECONDS,
            }));
        }
    }
}

pub(crate) fn validate_pod(pod: &Value, _old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let containers = pod["spec"]["containers"].as_array();
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required("spec.containers"));
    }
    let mut seen = std::collections::HashSet::new();
    for (list, items) in [
        ("containers", pod["spec"]["containers"].as_array()),
        ("initContainers", pod["spec"]["initContainers"].as_array()),
    ] {
        for (i, c) in items.into_iter().flatten().enumerate() {
            let field = format!("spec.{list}[{i}]");
            match c["name"].as_str() {
                None => causes.push(Cause::required(format!("{field}.name"))),
                Some(name) => {
                    causes.extend(validate_name(
                        NameRule::Label,
                        &format!("{field}.name"),
                        name,
                    ));
                    if !seen.insert(name.to_string()) {
                        causes.push(Cause::new(
                            "FieldValueDuplicate",
                            format!("{field}.name"),
                            format!("Duplicate value: {name:?}"),
                        ));
                    }
                }
            }
            if c["image"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{field}.image")));
            }
        }
    }
    let restart = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
    if !["Always", "OnFailure", "Never"].contains(&restart) {
        causes.push(Cause::new(
            "FieldValueNotSupported",
            "spec.restartPolicy",
            format!("Unsupported value: {restart:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
        ));
    }
    causes
}

pub(crate) fn service_defaults(svc: &mut Value) {
    set_default(svc, &["spec", "type"], json!("ClusterIP"));
    set_default(svc, &["spec", "sessionAffinity"], json!("None"));
    set_default(svc, &["spec", "internalTrafficPolicy"], json!("Cluster"));
    set_default(svc, &["spec", "ipFamilies"], json!(["IPv4"]));
    set_default(svc, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
    // As upstream's SetDefaults_Service.
    let kind = svc["spec"]["type"].as_str().unwrap_or_default().to_string();
    if kind == "NodePort" || kind == "LoadBalancer" {
        set_default(svc, &["spec", "externalTrafficPolicy"], json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set_default(svc, &["spec", "allocateLoadBalancerNodePorts"], json!(true));
    }
    if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
        for port in ports {
            set_default(port, &["protocol"], json!("TCP"));
            let p = port["port"].clone();
            set_default(port, &["targetPort"], p);
        }
    }
    set_default(svc, &["status", "loadBalancer"], json!({}));
}

pub(crate) fn secret_defaults(secret: &mut Value) {
    set_default(secret, &["type"], json!("Opaque"));
    // As upstream: `stringData` is a write-only convenience merged into `data`.
    if let Some(Value::Object(plain)) = secret.as_object_mut().and_then(|m| m.remove("stringData"))
    {
        use base64::Engine as _;
        if !secret["data"].is_object() {
            secret["data"] = json!({});
        }
        for (key, value) in plain {
            if let Some(text) = value.as_str() {
                secret["data"][key] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
    }
}

fn template_defaults(workload: &mut Value) {
    if workload["spec"]["template"]["spec"].is_object() {
        pod_spec_defaults(&mut workload["spec"]["template"]["spec"]);
    }
}

pub(crate) fn deployment_defaults(d: &mut Value) {
    set_default(d, &["spec", "replicas"], json!(1));
    set_default(d, &["spec", "revisionHistoryLimit"], json!(10));
    set_default(d, &["spec", "progressDeadlineSeconds"], json!(600));
    set_default(d, &["spec", "strategy", "type"], json!("RollingUpdate"));
    if d["spec"]["strategy"]["type"] == json!("RollingUpdate") {
        set_default(
            d,
            &["spec", "strategy", "rollingUpdate", "maxSurge"],
            json!("25%"),
        );
        set_default(
            d,
            &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
            json!("25%"),
        );
    }
    template_defaults(d);
}

pub(crate) fn replica_set_defaults(rs: &mut Value) {
    set_default(rs, &["spec", "replicas"], json!(1));
    template_defaults(rs);
}

pub(crate) fn stateful_set_defaults(s: &mut Value) {
    set_default(s, &["spec", "replicas"], json!(1));
    set_default(s, &["spec", "podManagementPolicy"], json!("OrderedReady"));
    set_default(s, &["spec", "revisionHistoryLimit"], json!(10));
    set_default(
        s,
        &["spec", "updateStrategy", "type"],
        json!("RollingUpdate"),
    );
    template_defaults(s);
}

pub(crate) fn daemon_set_defaults(ds: &mut Value) {
    set_default(ds, &["spec", "revisionHistoryLimit"], json!(10));
    set_default(
        ds,
        &["spec", "updateStrategy", "type"],
        json!("RollingUpdate"),
    );
    template_defaults(ds);
}

pub(crate) fn job_defaults(job: &mut Value) {
    job_spec_defaults(&mut job["spec"]);
}

fn job_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let indexed = spec["completionMode"] == json!("Indexed");
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec["completions"] = json!(1);
        spec["parallelism"] = json!(1);
    }
    set_default(spec, &["parallelism"], json!(1));
    if indexed || spec.get("backoffLimitPerIndex").is_none_or(Value::is_null) {
        set_default(spec, &["backoffLimit"], json!(6));
    }
    set_default(spec, &["completionMode"], json!("NonIndexed"));
    set_default(spec, &["suspend"], json!(false));
    set_default(spec, &["manualSelector"], json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(Value::is_object) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    set_default(spec, &["podReplacementPolicy"], json!(replacement));
    if spec["template"]["spec"].is_object() {
        pod_spec_defaults(&mut spec["template"]["spec"]);
    }
}

/// As upstream's Job strategy: unless `manualSelector`, the selector is the Job's uid
/// and the pod template carries it (plus the job-name labels), so pods of two Jobs never
/// overlap.
fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == json!(true) || !job["spec"].is_object() {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    let labels = object_map(&mut job["spec"]["template"], "metadata");
    if !labels.get("labels").is_some_and(Value::is_object) {
        labels.insert("labels".into(), json!({}));
    }
    if let Some(labels) = labels.get_mut("labels").and_then(Value::as_object_mut) {
        labels.insert("batch.kubernetes.io/controller-uid".into(), uid.clone());
        labels.insert("batch.kubernetes.io/job-name".into(), name.clone());
        labels.insert("controller-uid".into(), uid.clone());
        labels.insert("job-name".into(), name);
    }
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
}

pub(crate) fn cron_job_defaults(cj: &mut Value) {
    set_default(cj, &["spec", "concurrencyPolicy"], json!("Allow"));
    set_default(cj, &["spec", "suspend"], json!(false));
    set_default(cj, &["spec", "successfulJobsHistoryLimit"], json!(3));
    set_default(cj, &["spec", "failedJobsHistoryLimit"], json!(1));
    // Upstream defaults only the pod spec inside the template; the Job made from it is
    // defaulted when it is created.
    if cj["spec"]["jobTemplate"]["spec"]["template"]["spec"].is_object() {
        pod_spec_defaults(&mut cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]);
    }
}

/// Field selector lookups per kind.
pub(crate) mod fields {
    use serde_json::Value;

    fn path(object: &Value, path: &str) -> Option<String> {
        let mut at = object;
        for part in path.split('.') {
            at = at.get(part)?;
        }
        Some(match at {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        })
    }

    /// A supported field that the object lacks reads as empty (or `false`), as upstream.
    fn lookup(object: &Value, field: &str, bool_fields: &[&str]) -> Option<String> {
        Some(path(object, field).unwrap_or_else(|| {
            if bool_fields.contains(&field) {
                "false".into()
            } else {
                String::new()
            }
        }))
    }

    pub(crate) fn pod(object: &Value, field: &str) -> Option<String> {
        lookup(object, field, &["spec.hostNetwork"])
    }

    pub(crate) fn node(object: &Value, field: &str) -> Option<String> {
        lookup(object, field, &["spec.unschedulable"])
    }

    pub(crate) fn namespace(object: &Value, field: &str) -> Option<String> {
        lookup(object, field, &[])
    }

    pub(crate) fn secret(object: &Value, field: &str) -> Option<String> {
        lookup(object, field, &[])
    }

    pub(crate) fn event(object: &Value, field: &str) -> Option<String> {
        if field == "source" {
            return Some(path(object, "source.component").unwrap_or_default());
        }
        lookup(object, field, &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toleration_seconds_fills_only_what_is_missing() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        pod_defaults(&mut pod);
        let keys: Vec<&str> = pod["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable"
            ]
        );
        assert_eq!(pod["spec"]["tolerations"][1]["tolerationSeconds"], 300);
        // A pod's own toleration of `unreachable` stays; `not-ready` is still added.
        let own = json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists",
            "effect": "NoExecute", "tolerationSeconds": 5});
        let mut pod = json!({"spec": {"containers": [], "tolerations": [own.clone()]}});
        pod_defaults(&mut pod);
        assert_eq!(pod["spec"]["tolerations"][0], own);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        // Tolerating everything needs nothing more; defaulting twice adds nothing.
        let mut pod = json!({"spec": {"containers": [], "tolerations": [{"operator": "Exists"}]}});
        pod_defaults(&mut pod);
        pod_defaults(&mut pod);
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn names() {
        assert!(validate_name(NameRule::Subdomain, "metadata.name", "web.example-1").is_empty());
        assert_eq!(
            validate_name(NameRule::Subdomain, "metadata.name", "Web").len(),
            1
        );
        assert_eq!(
            validate_name(NameRule::Label, "metadata.name", "a.b").len(),
            1
        );
        assert!(validate_name(NameRule::PathSegment, "metadata.name", "system:admin").is_empty());
        assert_eq!(
            validate_name(NameRule::PathSegment, "metadata.name", "a/b").len(),
            1
        );
        let long = "a".repeat(64);
        assert!(validate_name(NameRule::Label, "metadata.name", &long)[0]
            .message
            .contains("63"));
    }

    #[test]
    fn pod_defaults_and_validation() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        pod_defaults(&mut pod);
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
        assert!(validate_pod(&pod, None).is_empty());
        let bad = json!({"spec": {"containers": [{"name": "C"}, {"name": "C", "image": "x"}]}});
        let causes = validate_pod(&bad, None);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[0].name"));
        assert!(fields.contains(&"spec.containers[0].image"));
        assert!(fields.contains(&"spec.containers[1].name"));
    }

    #[test]
    fn generation_bumps_on_spec_changes_only() {
        let registry = crate::registry::Registry::with_builtins();
        let deployments = registry.get("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "d", "generation": 3, "uid": "u"}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d", "labels": {"a": "b"}}, "spec": {"replicas": 1}, "status": {"replicas": 9}});
        prepare_update(&deployments, &old, &mut new);
        assert_eq!(new["metadata"]["generation"], 3);
        assert_eq!(new["metadata"]["uid"], "u");
        assert_eq!(new["status"]["replicas"], 1);
        let mut scaled = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}});
        prepare_update(&deployments, &old, &mut scaled);
        assert_eq!(scaled["metadata"]["generation"], 4);
    }

    #[test]
    fn label_validation() {
        let registry = crate::registry::Registry::with_builtins();
        let cms = registry.get("", "v1", "configmaps").unwrap();
        let ok = json!({"metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "web", "empty": ""}}});
        assert!(validate_metadata(&cms, &ok).is_empty());
        let bad = json!({"metadata": {"name": "x", "labels": {"-bad": "v", "k": "bad value"}}});
        assert_eq!(validate_metadata(&cms, &bad).len(), 2);
    }

    #[test]
    fn jobs_get_defaults_and_a_selector_from_their_uid() {
        let registry = crate::registry::Registry::with_builtins();
        let jobs = registry.get("batch", "v1", "jobs").unwrap();
        let mut job = json!({"metadata": {"name": "pi"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        job_defaults(&mut job);
        prepare_create(&jobs, &mut job);
        let uid = job["metadata"]["uid"].clone();
        assert_eq!(job["spec"]["completions"], 1);
        assert_eq!(job["spec"]["parallelism"], 1);
        assert_eq!(job["spec"]["backoffLimit"], 6);
        assert_eq!(job["spec"]["completionMode"], "NonIndexed");
        assert_eq!(job["spec"]["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            uid
        );
        let labels = &job["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["controller-uid"], uid);

        let mut manual = json!({"metadata": {"name": "m"},
            "spec": {"manualSelector": true, "parallelism": 2,
                     "selector": {"matchLabels": {"a": "b"}}, "template": {}}});
        job_defaults(&mut manual);
        prepare_create(&jobs, &mut manual);
        assert_eq!(
            manual["spec"]["selector"],
            json!({"matchLabels": {"a": "b"}})
        );
        // Only parallelism given: a work queue without completions.
        assert!(manual["spec"]["completions"].is_null());
    }
}
