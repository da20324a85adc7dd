//! Server-side printing: the `Table` kubectl asks for, with upstream's columns for the
//! common kinds and `Name`/`Age` for the rest.

use std::borrow::Cow;

use serde_json::{json, Value};

#[derive(Clone)]
pub struct Column {
    pub name: Cow<'static, str>,
    pub kind: Cow<'static, str>,
    pub format: Cow<'static, str>,
    pub description: Cow<'static, str>,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
    pub cell: fn(&Value) -> Value,
    /// A JSONPath (custom resources' printer columns) used instead of `cell`.
    pub json_path: Option<String>,
}

const fn column(name: &'static str, kind: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name: Cow::Borrowed(name),
        kind: Cow::Borrowed(kind),
        format: Cow::Borrowed(""),
        description: Cow::Borrowed(""),
        priority: 0,
        cell,
        json_path: None,
    }
}

const fn wide(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name: Cow::Borrowed(name),
        kind: Cow::Borrowed("string"),
        format: Cow::Borrowed(""),
        description: Cow::Borrowed(""),
        priority: 1,
        cell,
        json_path: None,
    }
}

pub(crate) fn name_column() -> Column {
    Column {
        format: Cow::Borrowed("name"),
        description: Cow::Borrowed("Name must be unique within a namespace."),
        ..column("Name", "string", |o| o["metadata"]["name"].clone())
    }
}

pub(crate) fn age_column() -> Column {
    Column {
        description: Cow::Borrowed("CreationTimestamp is a timestamp representing the server time when this object was created."),
        ..column("Age", "string", |o| json!(age(o["metadata"]["creationTimestamp"].as_str())))
    }
}

/// A printer column of a custom resource.
pub(crate) fn json_path_column(
    name: &str,
    kind: &str,
    format: &str,
    description: &str,
    priority: u8,
    path: &str,
) -> Column {
    Column {
        name: Cow::Owned(name.to_string()),
        kind: Cow::Owned(kind.to_string()),
        format: Cow::Owned(format.to_string()),
        description: Cow::Owned(description.to_string()),
        priority,
        cell: |_| Value::Null,
        json_path: Some(path.to_string()),
    }
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `[N]`, and filters
/// `[?(@.key=="value")]`. Several matches are joined with commas, as kubectl does.
pub(crate) fn eval_json_path(object: &Value, path: &str) -> Value {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut current: Vec<&Value> = vec![object];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            current = current.iter().filter_map(|v| v.get(key)).collect();
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let Some(close) = after.find(']') else {
                return Value::Null;
            };
            let inner = &after[..close];
            rest = &after[close + 1..];
            if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let Some((key, want)) = filter.split_once("==") else {
                    return Value::Null;
                };
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                current = current
                    .iter()
                    .filter_map(|v| v.as_array())
                    .flatten()
                    .filter(|item| item.get(key.trim()).and_then(Value::as_str) == Some(want))
                    .collect();
            } else if inner == "*" {
                current = current
                    .iter()
                    .filter_map(|v| v.as_array())
                    .flatten()
                    .collect();
            } else if let Ok(i) = inner.parse::<usize>() {
                current = current.iter().filter_map(|v| v.get(i)).collect();
            } else {
                return Value::Null;
            }
        } else {
            return Value::Null;
        }
    }
    match current.as_slice() {
        [] => Value::Null,
        [one] => (*one).clone(),
        many => json!(many
            .iter()
            .map(|v| v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string()))
            .collect::<Vec<_>>()
            .join(",")),
    }
}

/// Upstream's `HumanDuration` of the time since `timestamp`.
pub(crate) fn age(timestamp: Option<&str>) -> String {
    let Some(ts) = timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().duration_since(ts).as_secs();
    human_duration(secs)
}

pub(crate) fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn count(value: &Value) -> usize {
    match value {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    }
}

fn or_none(value: &Value) -> Value {
    match value {
        Value::String(s) if !s.is_empty() => value.clone(),
        _ => json!("<none>"),
    }
}

fn int(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// The columns of a kind: its own, framed by Name and Age.
fn framed(middle: Vec<Column>, after_age: Vec<Column>) -> Vec<Column> {
    let mut columns = vec![name_column()];
    columns.extend(middle);
    columns.push(age_column());
    columns.extend(after_age);
    columns
}

pub(crate) fn namespace_columns() -> Vec<Column> {
    framed(
        vec![column("Status", "string", |o| o["status"]["phase"].clone())],
        vec![],
    )
}

fn pod_status(o: &Value) -> Value {
    if o["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    let mut reason = o["status"]["reason"]
        .as_str()
        .or(o["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    if let Some(statuses) = o["status"]["containerStatuses"].as_array() {
        for s in statuses.iter().rev() {
            if let Some(r) = s["state"]["waiting"]["reason"].as_str() {
                reason = r.to_string();
            } else if let Some(r) = s["state"]["terminated"]["reason"].as_str() {
                reason = r.to_string();
            }
        }
    }
    json!(reason)
}

pub(crate) fn pod_columns() -> Vec<Column> {
    framed(
        vec![
            column("Ready", "string", |o| {
                let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
                let ready = o["status"]["containerStatuses"].as_array().map_or(0, |s| {
                    s.iter().filter(|c| c["ready"] == json!(true)).count()
                });
                json!(format!("{ready}/{total}"))
            }),
            column("Status", "string", pod_status),
            column("Restarts", "string", |o| {
                let restarts: i64 = o["status"]["containerStatuses"]
                    .as_array()
                    .map_or(0, |s| s.iter().map(|c| int(&c["restartCount"])).sum());
                json!(restarts.to_string())
            }),
        ],
        vec![
            wide("IP", |o| or_none(&o["status"]["podIP"])),
            wide("Node", |o| or_none(&o["spec"]["nodeName"])),
            wide("Nominated Node", |o| {
                or_none(&o["status"]["nominatedNodeName"])
            }),
            wide("Readiness Gates", |o| {
                let gates = count(&o["spec"]["readinessGates"]);
                if gates == 0 {
                    json!("<none>")
                } else {
                    json!(format!("0/{gates}"))
                }
            }),
        ],
    )
}

pub(crate) fn service_columns() -> Vec<Column> {
    framed(
        vec![
            column("Type", "string", |o| o["spec"]["type"].clone()),
            column("Cluster-IP", "string", |o| or_none(&o["spec"]["clusterIP"])),
            column("External-IP", "string", |o| {
                let ingress: Vec<String> = o["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let external: Vec<String> = o["spec"]["externalIPs"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let all: Vec<String> = ingress.into_iter().chain(external).collect();
                if !all.is_empty() {
                    json!(all.join(","))
                } else if o["spec"]["type"] == json!("LoadBalancer") {
                    json!("<pending>")
                } else if o["spec"]["type"] == json!("ExternalName") {
                    o["spec"]["externalName"].clone()
                } else {
                    json!("<none>")
                }
            }),
            column("Port(s)", "string", |o| {
                let ports: Vec<String> = o["spec"]["ports"]
                    .as_array()
                    .map(|ports| {
                        ports
                            .iter()
                            .map(|p| {
                                let proto = p["protocol"].as_str().unwrap_or("TCP");
                                match p["nodePort"].as_i64() {
                                    Some(np) => format!("{}:{np}/{proto}", int(&p["port"])),
                                    None => format!("{}/{proto}", int(&p["port"])),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if ports.is_empty() {
                    json!("<none>")
                } else {
                    json!(ports.join(","))
                }
            }),
        ],
        vec![wide("Selector", |o| {
            json!(selector_string(&o["spec"]["selector"]))
        })],
    )
}

fn selector_string(selector: &Value) -> String {
    match selector.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn containers_and_images(o: &Value) -> (Value, Value) {
    let containers = o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .filter_map(|c| c["image"].as_str())
        .collect();
    (json!(names.join(",")), json!(images.join(",")))
}

pub(crate) fn deployment_columns() -> Vec<Column> {
    framed(
        vec![
            column("Ready", "string", |o| {
                json!(format!(
                    "{}/{}",
                    int(&o["status"]["readyReplicas"]),
                    int(&o["spec"]["replicas"])
                ))
            }),
            column("Up-to-date", "integer", |o| {
                json!(int(&o["status"]["updatedReplicas"]))
            }),
            column("Available", "integer", |o| {
                json!(int(&o["status"]["availableReplicas"]))
            }),
        ],
        vec![
            wide("Containers", |o| containers_and_images(o).0),
            wide("Images", |o| containers_and_images(o).1),
            wide("Selector", |o| {
                json!(selector_string(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
    )
}

/// Upstream's `TARGETS` of an HPA (v2, or v1's single CPU target): `cpu: 40%/50%`,
/// `memory: 12Mi/100Mi`, `<unknown>` before a measurement, at most two then `+ N more...`.
pub(crate) fn hpa_targets(o: &Value) -> String {
    if let Some(target) = o["spec"]["targetCPUUtilizationPercentage"].as_i64() {
        let current = o["status"]["currentCPUUtilizationPercentage"]
            .as_i64()
            .map_or("<unknown>".to_string(), |c| format!("{c}%"));
        return format!("cpu: {current}/{target}%");
    }
    let specs = o["spec"]["metrics"].as_array().cloned().unwrap_or_default();
    if specs.is_empty() {
        return "<none>".to_string();
    }
    let statuses = o["status"]["currentMetrics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut parts = Vec::new();
    for spec in specs.iter().take(2) {
        let kind = spec["type"].as_str().unwrap_or_default();
        let source = match kind {
            "Resource" => &spec["resource"],
            "ContainerResource" => &spec["containerResource"],
            _ => {
                let field = match kind {
                    "Pods" => "pods",
                    "Object" => "object",
                    _ => "external",
                };
                let target = &spec[field]["target"];
                let wanted = target["averageValue"]
                    .as_str()
                    .or(target["value"].as_str())
                    .unwrap_or("<unknown>");
                parts.push(format!("<unknown>/{wanted}"));
                continue;
            }
        };
        let name = source["name"].as_str().unwrap_or_default();
        let status = statuses.iter().find(|s| {
            s["type"] == kind
                && (s["resource"]["name"] == name || s["containerResource"]["name"] == name)
        });
        let current = status.map(|s| {
            if kind == "Resource" {
                &s["resource"]["current"]
            } else {
                &s["containerResource"]["current"]
            }
        });
        let target = &source["target"];
        let text = if let Some(util) = target["averageUtilization"].as_i64() {
            let now = current
                .and_then(|c| c["averageUtilization"].as_i64())
                .map_or("<unknown>".to_string(), |c| format!("{c}%"));
            format!("{name}: {now}/{util}%")
        } else {
            let now = current
                .and_then(|c| c["averageValue"].as_str())
                .unwrap_or("<unknown>");
            format!(
                "{name}: {now}/{}",
                target["averageValue"].as_str().unwrap_or("<unknown>")
            )
        };
        parts.push(text);
    }
    let mut text = parts.join(", ");
    if specs.len() > 2 {
        text.push_str(&format!(" + {} more...", specs.len() - 2));
    }
    text
}

pub(crate) fn hpa_columns() -> Vec<Column> {
    framed(
        vec![
            column("Reference", "string", |o| {
                let r = &o["spec"]["scaleTargetRef"];
                json!(format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default()
                ))
            }),
            column("Targets", "string", |o| json!(hpa_targets(o))),
            column("MinPods", "string", |o| {
                json!(o["spec"]["minReplicas"]
                    .as_i64()
                    .map_or("<unset>".to_string(), |m| m.to_string()))
            }),
            column("MaxPods", "integer", |o| {
                json!(int(&o["spec"]["maxReplicas"]))
            }),
            column("Replicas", "integer", |o| {
                json!(int(&o["status"]["currentReplicas"]))
            }),
        ],
        Vec::new(),
    )
}

pub(crate) fn replica_set_columns() -> Vec<Column> {
    framed(
        vec![
            column("Desired", "integer", |o| json!(int(&o["spec"]["replicas"]))),
            column("Current", "integer", |o| {
                json!(int(&o["status"]["replicas"]))
            }),
            column("Ready", "integer", |o| {
                json!(int(&o["status"]["readyReplicas"]))
            }),
        ],
        vec![
            wide("Containers", |o| containers_and_images(o).0),
            wide("Images", |o| containers_and_images(o).1),
            wide("Selector", |o| {
                json!(selector_string(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
    )
}

pub(crate) fn stateful_set_columns() -> Vec<Column> {
    framed(
        vec![column("Ready", "string", |o| {
            json!(format!(
                "{}/{}",
                int(&o["status"]["readyReplicas"]),
                int(&o["spec"]["replicas"])
            ))
        })],
        vec![
            wide("Containers", |o| containers_and_images(o).0),
            wide("Images", |o| containers_and_images(o).1),
        ],
    )
}

pub(crate) fn daemon_set_columns() -> Vec<Column> {
    framed(
        vec![
            column("Desired", "integer", |o| {
                json!(int(&o["status"]["desiredNumberScheduled"]))
            }),
            column("Current", "integer", |o| {
                json!(int(&o["status"]["currentNumberScheduled"]))
            }),
            column("Ready", "integer", |o| {
                json!(int(&o["status"]["numberReady"]))
            }),
            column("Up-to-date", "integer", |o| {
                json!(int(&o["status"]["updatedNumberScheduled"]))
            }),
            column("Available", "integer", |o| {
                json!(int(&o["status"]["numberAvailable"]))
            }),
            column("Node Selector", "string", |o| {
                or_none(&json!(selector_string(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                )))
            }),
        ],
        vec![
            wide("Containers", |o| containers_and_images(o).0),
            wide("Images", |o| containers_and_images(o).1),
            wide("Selector", |o| {
                json!(selector_string(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
    )
}

fn has_condition(o: &Value, type_: &str) -> bool {
    o["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == type_ && c["status"] == "True")
    })
}

/// Upstream's Job status column (1.32).
fn job_status(o: &Value) -> Value {
    let status = if has_condition(o, "Complete") {
        "Complete"
    } else if has_condition(o, "Failed") {
        "Failed"
    } else if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if has_condition(o, "Suspended") {
        "Suspended"
    } else if has_condition(o, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(o, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    json!(status)
}

fn job_completions(o: &Value) -> Value {
    let succeeded = int(&o["status"]["succeeded"]);
    if let Some(c) = o["spec"]["completions"].as_i64() {
        return json!(format!("{succeeded}/{c}"));
    }
    let parallelism = int(&o["spec"]["parallelism"]);
    if parallelism > 1 {
        json!(format!("{succeeded}/1 of {parallelism}"))
    } else {
        json!(format!("{succeeded}/1"))
    }
}

fn job_duration(o: &Value) -> Value {
    let time = |f: &str| o["status"][f].as_str()?.parse::<jiff::Timestamp>().ok();
    let Some(start) = time("startTime") else {
        return json!("");
    };
    let end = time("completionTime").unwrap_or_else(jiff::Timestamp::now);
    json!(human_duration(end.duration_since(start).as_secs()))
}

pub(crate) fn job_columns() -> Vec<Column> {
    framed(
        vec![
            column("Status", "string", job_status),
            column("Completions", "string", job_completions),
            column("Duration", "string", job_duration),
        ],
        vec![
            wide("Containers", |o| containers_and_images(o).0),
            wide("Images", |o| containers_and_images(o).1),
            wide("Selector", |o| {
                json!(selector_string(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
    )
}

fn cron_job_template(o: &Value) -> Value {
    json!({"spec": {"template": o["spec"]["jobTemplate"]["spec"]["template"]}})
}

pub(crate) fn cron_job_columns() -> Vec<Column> {
    framed(
        vec![
            column("Schedule", "string", |o| o["spec"]["schedule"].clone()),
            column("Timezone", "string", |o| or_none(&o["spec"]["timeZone"])),
            column("Suspend", "boolean", |o| {
                json!(o["spec"]["suspend"].as_bool().unwrap_or(false))
            }),
            column("Active", "integer", |o| {
                json!(count(&o["status"]["active"]))
            }),
            column("Last Schedule", "string", |o| {
                match o["status"]["lastScheduleTime"].as_str() {
                    Some(t) => json!(age(Some(t))),
                    None => json!("<none>"),
                }
            }),
        ],
        vec![
            wide("Containers", |o| {
                containers_and_images(&cron_job_template(o)).0
            }),
            wide("Images", |o| containers_and_images(&cron_job_template(o)).1),
            wide("Selector", |o| {
                or_none(&json!(selector_string(
                    &o["spec"]["jobTemplate"]["spec"]["selector"]["matchLabels"]
                )))
            }),
        ],
    )
}

pub(crate) fn data_columns() -> Vec<Column> {
    framed(
        vec![column("Data", "integer", |o| {
            json!(count(&o["data"]) + count(&o["binaryData"]))
        })],
        vec![],
    )
}

pub(crate) fn secret_columns() -> Vec<Column> {
    framed(
        vec![
            column("Type", "string", |o| o["type"].clone()),
            column("Data", "integer", |o| json!(count(&o["data"]))),
        ],
        vec![],
    )
}

pub(crate) fn service_account_columns() -> Vec<Column> {
    framed(
        vec![column("Secrets", "integer", |o| {
            json!(count(&o["secrets"]))
        })],
        vec![],
    )
}

pub(crate) fn csr_columns() -> Vec<Column> {
    framed(
        vec![],
        vec![
            column("SignerName", "string", |o| o["spec"]["signerName"].clone()),
            column("Requestor", "string", |o| o["spec"]["username"].clone()),
            column("RequestedDuration", "string", |o| {
                match o["spec"]["expirationSeconds"].as_i64() {
                    Some(s) => json!(human_duration(s)),
                    None => json!("<none>"),
                }
            }),
            column("Condition", "string", |o| {
                let mut shown: Vec<&str> = o["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["status"] != json!("False"))
                    .filter_map(|c| c["type"].as_str())
                    .collect();
                if o["status"]["certificate"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty())
                {
                    shown.push("Issued");
                }
                if shown.is_empty() {
                    json!("Pending")
                } else {
                    json!(shown.join(","))
                }
            }),
        ],
    )
}

pub(crate) fn node_columns() -> Vec<Column> {
    framed(
        vec![
            column("Status", "string", |o| {
                let ready = o["status"]["conditions"].as_array().and_then(|c| {
                    c.iter()
                        .find(|c| c["type"] == json!("Ready"))
                        .map(|c| c["status"] == json!("True"))
                });
                let mut status = match ready {
                    Some(true) => "Ready".to_string(),
                    _ => "NotReady".to_string(),
                };
                if o["spec"]["unschedulable"] == json!(true) {
                    status.push_str(",SchedulingDisabled");
                }
                json!(status)
            }),
            column("Roles", "string", |o| {
                let roles: Vec<String> = o["metadata"]["labels"]
                    .as_object()
                    .map(|labels| {
                        labels
                            .keys()
                            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if roles.is_empty() {
                    json!("<none>")
                } else {
                    json!(roles.join(","))
                }
            }),
        ],
        vec![
            column("Version", "string", |o| {
                o["status"]["nodeInfo"]["kubeletVersion"].clone()
            }),
            wide("Internal-IP", |o| node_address(o, "InternalIP")),
            wide("External-IP", |o| node_address(o, "ExternalIP")),
            wide("OS-Image", |o| {
                or_unknown(&o["status"]["nodeInfo"]["osImage"])
            }),
            wide("Kernel-Version", |o| {
                or_unknown(&o["status"]["nodeInfo"]["kernelVersion"])
            }),
            wide("Container-Runtime", |o| {
                or_unknown(&o["status"]["nodeInfo"]["containerRuntimeVersion"])
            }),
        ],
    )
}

/// The first address of `kind`, `<none>` without one (upstream's printer).
fn node_address(node: &Value, kind: &str) -> Value {
    node["status"]["addresses"]
        .as_array()
        .and_then(|addresses| {
            addresses
                .iter()
                .find(|a| a["type"].as_str() == Some(kind))
                .map(|a| a["address"].clone())
        })
        .map_or_else(|| json!("<none>"), |a| or_none(&a))
}

/// Upstream prints `<unknown>` for node info it lacks.
fn or_unknown(value: &Value) -> Value {
    match value.as_str() {
        Some(s) if !s.is_empty() => json!(s),
        _ => json!("<unknown>"),
    }
}

pub(crate) fn event_columns() -> Vec<Column> {
    vec![
        column("Last Seen", "string", |o| {
            let ts = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str());
            json!(age(ts))
        }),
        column("Type", "string", |o| o["type"].clone()),
        column("Reason", "string", |o| o["reason"].clone()),
        column("Object", "string", |o| {
            let kind = o["involvedObject"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            let name = o["involvedObject"]["name"].as_str().unwrap_or_default();
            json!(format!("{kind}/{name}"))
        }),
        column("Message", "string", |o| o["message"].clone()),
    ]
}

/// The columns used when a kind declares none.
pub(crate) fn default_columns() -> Vec<Column> {
    vec![name_column(), age_column()]
}

/// Builds a `meta.k8s.io/v1` Table of `objects`; `include_object` is upstream's
/// `includeObject` (`None`, `Object`, or the default `Metadata`).
pub(crate) fn build(
    columns: &[Column],
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include_object: &str,
) -> Value {
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "type": c.kind, "format": c.format,
                "description": c.description, "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let cells: Vec<Value> = columns
                .iter()
                .map(|c| match &c.json_path {
                    // As upstream's CRD table convertor: dates are shown as ages.
                    Some(path) if c.kind == "date" => match eval_json_path(o, path) {
                        Value::String(ts) => json!(age(Some(&ts))),
                        other => other,
                    },
                    Some(path) => eval_json_path(o, path),
                    None => (c.cell)(o),
                })
                .collect();
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn json_paths_for_printer_columns() {
        let o = json!({"spec": {"replicas": 3, "list": [{"n": 1}, {"n": 2}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}});
        assert_eq!(eval_json_path(&o, ".spec.replicas"), json!(3));
        assert_eq!(eval_json_path(&o, ".spec.list[1].n"), json!(2));
        assert_eq!(
            eval_json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            json!("True")
        );
        assert_eq!(eval_json_path(&o, ".spec.missing"), Value::Null);
        assert_eq!(eval_json_path(&o, ".spec.list[*].n"), json!("1,2"));
    }

    #[test]
    fn pod_table_row() {
        let pod = json!({
            "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"ready": true, "restartCount": 2, "state": {"running": {}}},
                {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let table = build(&pod_columns(), &[pod], "7", None, "Metadata");
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[6], "n1");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn node_wide_columns_as_upstream() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/worker": ""}},
            "status": {
                "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.2"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0", "containerRuntimeVersion": "containerd://1.6.20"},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        });
        let columns = node_columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "Name",
                "Status",
                "Roles",
                "Age",
                "Version",
                "Internal-IP",
                "External-IP",
                "OS-Image",
                "Kernel-Version",
                "Container-Runtime"
            ]
        );
        assert!(columns[5..].iter().all(|c| c.priority == 1));
        let table = build(&columns, &[node], "7", None, "Metadata");
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[1], "Ready");
        assert_eq!(cells[2], "worker");
        assert_eq!(cells[5], "10.0.0.2");
        assert_eq!(cells[6], "<none>");
        assert_eq!(cells[7], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(cells[9], "containerd://1.6.20");
        let bare = build(
            &columns,
            &[json!({"metadata": {"name": "n2"}})],
            "7",
            None,
            "Metadata",
        );
        assert_eq!(bare["rows"][0]["cells"][5], "<none>");
        assert_eq!(bare["rows"][0]["cells"][8], "<unknown>");
    }

    #[test]
    fn hpa_targets_as_upstream() {
        let hpa = json!({
            "spec": {"metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
            ]},
            "status": {"currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 40, "averageValue": "40m"}}},
            ]},
        });
        assert_eq!(
            super::hpa_targets(&hpa),
            "cpu: 40%/50%, memory: <unknown>/100Mi"
        );
        let v1 = json!({"spec": {"targetCPUUtilizationPercentage": 80}});
        assert_eq!(super::hpa_targets(&v1), "cpu: <unknown>/80%");
    }
}
