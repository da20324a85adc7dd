use serde_json::{json, Value};

use super::*;
use crate::patch::schema::PatchSchema;

fn deployment_schema() -> Option<SchemaNode<'static>> {
    PatchSchema::builtin().for_kind("apps", "v1", "Deployment")
}

fn path(elements: &[&str]) -> FieldPath {
    elements.iter().map(|e| e.to_string()).collect()
}

fn deployment(replicas: i64, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels, "uid": "x"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        },
        "status": {"replicas": 1}
    })
}

fn web() -> Value {
    json!({
        "name": "web",
        "image": "nginx:1",
        "env": [{"name": "A", "value": "1"}],
        "ports": [{"containerPort": 80}]
    })
}

fn entry(manager: &str, operation: &str, set: Value) -> Value {
    json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
           "fieldsType": "FieldsV1", "fieldsV1": set})
}

fn with_managed(mut object: Value, entries: Vec<Value>) -> Value {
    object["metadata"]["managedFields"] = json!(entries);
    object
}

fn managed<'a>(fields: &'a Value, manager: &str) -> Option<&'a Value> {
    fields
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
        .map(|e| &e["fieldsV1"])
}

#[test]
fn deployment_field_set_keys_lists() {
    let object = deployment(2, json!({"app": "web"}), json!([web()]));
    let set = field_set(&object, deployment_schema());
    assert_eq!(
        set,
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:selector": {"f:matchLabels": {"f:app": {}}},
                "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {
                        "k:{\"name\":\"web\"}": {
                            ".": {},
                            "f:name": {},
                            "f:image": {},
                            "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
                            "f:ports": {"k:{\"containerPort\":80}": {".": {}, "f:containerPort": {}}}
                        }
                    }}
                }
            }
        })
    );
}

#[test]
fn field_set_tracks_annotations_and_skips_other_metadata() {
    let object = json!({
        "metadata": {"name": "x", "annotations": {"a/b": "c"}, "labels": {"l": "v"},
                     "finalizers": ["f"], "resourceVersion": "3"},
        "data": {"k": "v"}
    });
    let set = field_set(
        &object,
        PatchSchema::builtin().for_kind("", "v1", "ConfigMap"),
    );
    assert_eq!(
        set,
        json!({
            "f:metadata": {"f:annotations": {"f:a/b": {}}, "f:labels": {"f:l": {}}},
            "f:data": {"f:k": {}}
        })
    );
}

#[test]
fn primitive_set_lists_use_values_and_atomic_lists_are_leaves() {
    let object = json!({
        "metadata": {"finalizers": ["x"]},
        "spec": {"finalizers": ["kubernetes"]}
    });
    // Without a schema every list is atomic, and metadata.finalizers is not tracked.
    let set = field_set(&object, None);
    assert_eq!(set, json!({"f:spec": {"f:finalizers": {}}}));

    let pod = json!({"spec": {"containers": [{"name": "c", "args": ["a", "b"]}]}});
    let set = field_set(&pod, PatchSchema::builtin().for_kind("", "v1", "Pod"));
    assert_eq!(
        set["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:args"],
        json!({})
    );
}

#[test]
fn set_algebra_round_trips() {
    let a = json!({"f:spec": {"f:replicas": {}, "f:paused": {}},
                   "f:list": {"k:{\"name\":\"x\"}": {".": {}, "f:image": {}}}});
    let b = json!({"f:spec": {"f:replicas": {}}, "f:list": {"k:{\"name\":\"x\"}": {}}});
    assert_eq!(
        leaves(&a),
        vec![
            path(&["f:list", "k:{\"name\":\"x\"}"]),
            path(&["f:list", "k:{\"name\":\"x\"}", "f:image"]),
            path(&["f:spec", "f:paused"]),
            path(&["f:spec", "f:replicas"]),
        ]
    );
    assert_eq!(union(&a, &b), a);
    assert_eq!(
        difference(&a, &b),
        json!({"f:spec": {"f:paused": {}}, "f:list": {"k:{\"name\":\"x\"}": {"f:image": {}}}})
    );
    assert_eq!(
        intersection(&a, &b),
        json!({"f:spec": {"f:replicas": {}}, "f:list": {"k:{\"name\":\"x\"}": {}}})
    );
    assert_eq!(difference(&a, &a), json!({}));
    assert!(leaves(&json!({})).is_empty());
}

#[test]
fn value_at_and_remove_path_resolve_elements() {
    let mut object = json!({
        "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b"}],
                 "tags": ["x", "y"]}
    });
    assert_eq!(
        value_at(
            &object,
            &path(&["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"])
        ),
        Some(&json!("i"))
    );
    assert_eq!(
        value_at(&object, &path(&["f:spec", "f:tags", "v:\"y\""])),
        Some(&json!("y"))
    );
    assert_eq!(value_at(&object, &path(&["f:spec", "f:missing"])), None);
    assert_eq!(value_at(&object, &path(&["garbage"])), None);
    assert_eq!(
        value_at(&object, &path(&["f:spec", "f:containers", "k:notjson"])),
        None
    );

    remove_path(
        &mut object,
        &path(&["f:spec", "f:containers", "k:{\"name\":\"a\"}", "f:image"]),
    );
    remove_path(
        &mut object,
        &path(&["f:spec", "f:containers", "k:{\"name\":\"b\"}"]),
    );
    remove_path(&mut object, &path(&["f:spec", "f:tags", "v:\"x\""]));
    remove_path(&mut object, &path(&["f:nope", "f:deeper"]));
    remove_path(&mut object, &[]);
    assert_eq!(
        object,
        json!({"spec": {"containers": [{"name": "a"}], "tags": ["y"]}})
    );
}

#[test]
fn human_paths_match_upstream() {
    assert_eq!(
        human_path(&path(&["f:spec", "f:replicas"])),
        ".spec.replicas"
    );
    assert_eq!(
        human_path(&path(&[
            "f:spec",
            "f:containers",
            "k:{\"name\":\"web\"}",
            "f:image"
        ])),
        ".spec.containers[name=\"web\"].image"
    );
    assert_eq!(
        human_path(&path(&["f:finalizers", "v:\"x\""])),
        ".finalizers[=\"x\"]"
    );
}

#[test]
fn first_apply_records_the_set() {
    let applied = deployment(2, json!({"app": "web"}), json!([web()]));
    let live = applied.clone();
    let (object, fields) =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap();
    assert_eq!(object, live);
    let fields = fields.as_array().unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0]["manager"], "kubectl");
    assert_eq!(fields[0]["operation"], "Apply");
    assert_eq!(fields[0]["fieldsType"], "FieldsV1");
    assert_eq!(
        fields[0]["fieldsV1"],
        field_set(&applied, deployment_schema())
    );
}

#[test]
fn dropping_a_label_removes_it() {
    let first = deployment(2, json!({"app": "web", "tier": "front"}), json!([web()]));
    let live = with_managed(
        first.clone(),
        vec![entry(
            "kubectl",
            "Apply",
            field_set(&first, deployment_schema()),
        )],
    );
    let applied = deployment(2, json!({"app": "web"}), json!([web()]));
    let (object, fields) =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap();
    assert_eq!(object["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        managed(&fields, "kubectl").unwrap()["f:metadata"],
        json!({"f:labels": {"f:app": {}}})
    );
}

#[test]
fn dropped_field_owned_by_another_manager_stays() {
    let first = deployment(2, json!({"app": "web", "tier": "front"}), json!([web()]));
    let live = with_managed(
        first.clone(),
        vec![
            entry("kubectl", "Apply", field_set(&first, deployment_schema())),
            entry(
                "other",
                "Update",
                json!({"f:metadata": {"f:labels": {"f:tier": {}}}}),
            ),
        ],
    );
    let applied = deployment(2, json!({"app": "web"}), json!([web()]));
    let (object, _) =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap();
    assert_eq!(object["metadata"]["labels"]["tier"], "front");
}

#[test]
fn dropping_a_container_removes_the_keyed_item() {
    let sidecar = json!({"name": "sidecar", "image": "busybox"});
    let first = deployment(2, json!({"app": "web"}), json!([web(), sidecar]));
    let live = with_managed(
        first.clone(),
        vec![entry(
            "kubectl",
            "Apply",
            field_set(&first, deployment_schema()),
        )],
    );
    let mut changed = web();
    changed["env"] = json!([]);
    let applied = deployment(2, json!({"app": "web"}), json!([changed]));
    let (object, fields) =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap();
    let containers = &object["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
    assert_eq!(containers[0]["name"], "web");
    // The env item A was dropped too.
    assert_eq!(containers[0]["env"], json!([]));
    let set = managed(&fields, "kubectl").unwrap();
    let keyed = &set["f:spec"]["f:template"]["f:spec"]["f:containers"];
    assert!(keyed.get("k:{\"name\":\"sidecar\"}").is_none());
    assert!(keyed.get("k:{\"name\":\"web\"}").is_some());
}

fn replicas_owned_by_other(live_replicas: i64) -> Value {
    let base = deployment(live_replicas, json!({"app": "web"}), json!([web()]));
    with_managed(
        base,
        vec![entry(
            "kubectl-client-side-apply",
            "Update",
            json!({"f:spec": {"f:replicas": {}}}),
        )],
    )
}

#[test]
fn differing_value_owned_by_another_manager_conflicts() {
    let live = replicas_owned_by_other(3);
    let applied = deployment(5, json!({"app": "web"}), json!([web()]));
    let conflicts =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap_err();
    assert_eq!(
        conflicts,
        vec![(
            "kubectl-client-side-apply".to_string(),
            ".spec.replicas".to_string()
        )]
    );
    assert_eq!(
        conflict_message(&conflicts, "apps/v1"),
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn same_value_is_shared_ownership() {
    let live = replicas_owned_by_other(3);
    let applied = deployment(3, json!({"app": "web"}), json!([web()]));
    let (_, fields) =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap();
    assert_eq!(
        managed(&fields, "kubectl-client-side-apply").unwrap(),
        &json!({"f:spec": {"f:replicas": {}}})
    );
    assert_eq!(
        managed(&fields, "kubectl").unwrap()["f:spec"]["f:replicas"],
        json!({})
    );
}

#[test]
fn force_transfers_ownership() {
    let mut live = replicas_owned_by_other(3);
    live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:paused"] = json!({});
    live["spec"]["paused"] = json!(false);
    let applied = deployment(5, json!({"app": "web"}), json!([web()]));
    let (object, fields) =
        apply_ownership(&live, &applied, "kubectl", true, deployment_schema()).unwrap();
    assert_eq!(object["spec"]["paused"], false);
    assert_eq!(
        managed(&fields, "kubectl-client-side-apply").unwrap(),
        &json!({"f:spec": {"f:paused": {}}})
    );
    assert_eq!(
        managed(&fields, "kubectl").unwrap()["f:spec"]["f:replicas"],
        json!({})
    );
}

#[test]
fn force_drops_emptied_entries() {
    let live = replicas_owned_by_other(3);
    let applied = deployment(5, json!({"app": "web"}), json!([web()]));
    let (_, fields) =
        apply_ownership(&live, &applied, "kubectl", true, deployment_schema()).unwrap();
    assert!(managed(&fields, "kubectl-client-side-apply").is_none());
    assert_eq!(fields.as_array().unwrap().len(), 1);
}

#[test]
fn own_update_entry_with_other_operation_is_another_manager() {
    let base = deployment(3, json!({"app": "web"}), json!([web()]));
    let live = with_managed(
        base,
        vec![entry(
            "kubectl",
            "Update",
            json!({"f:spec": {"f:replicas": {}}}),
        )],
    );
    let applied = deployment(4, json!({"app": "web"}), json!([web()]));
    let conflicts =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap_err();
    assert_eq!(conflicts.len(), 1);
}

#[test]
fn conflicting_list_item_field_is_reported_with_key() {
    let base = deployment(3, json!({"app": "web"}), json!([web()]));
    let other_set = json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
        "k:{\"name\":\"web\"}": {".": {}, "f:image": {}}
    }}}}});
    let live = with_managed(base, vec![entry("helm", "Update", other_set)]);
    let mut changed = web();
    changed["image"] = json!("nginx:2");
    let applied = deployment(3, json!({"app": "web"}), json!([changed]));
    let conflicts =
        apply_ownership(&live, &applied, "kubectl", false, deployment_schema()).unwrap_err();
    assert_eq!(
        conflicts,
        vec![(
            "helm".to_string(),
            ".spec.template.spec.containers[name=\"web\"].image".to_string()
        )]
    );
}

#[test]
fn plural_conflict_message_groups_by_manager() {
    let conflicts = vec![
        ("b".to_string(), ".spec.replicas".to_string()),
        ("a".to_string(), ".spec.paused".to_string()),
        ("b".to_string(), ".metadata.labels.app".to_string()),
    ];
    assert_eq!(
        conflict_message(&conflicts, "apps/v1"),
        "Apply failed with 3 conflicts: conflicts with \"a\" using apps/v1:\n- .spec.paused\n\
         conflicts with \"b\" using apps/v1:\n- .spec.replicas\n- .metadata.labels.app"
    );
}

fn widget_schema() -> &'static PatchSchema {
    static SCHEMA: std::sync::LazyLock<PatchSchema> = std::sync::LazyLock::new(|| {
        PatchSchema::from_value(json!({"$defs": {
            "Widget": {
                "type": "object",
                "x-kubernetes-group-version-kind": [{"group": "example.com", "version": "v1", "kind": "Widget"}],
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "tags": {"type": "array", "items": {"type": "string"},
                            "x-kubernetes-patch-strategy": "merge"},
                        "ports": {"type": "array", "x-kubernetes-list-type": "map",
                            "x-kubernetes-list-map-keys": ["port", "protocol"],
                            "items": {"type": "object", "properties": {
                                "port": {"type": "integer"},
                                "protocol": {"type": "string"},
                                "name": {"type": "string"}
                            }}},
                        "atomic": {"type": "array", "items": {"type": "string"}}
                    }}
                }
            }
        }}))
        .unwrap_or_default()
    });
    &SCHEMA
}

#[test]
fn set_lists_and_list_map_keys() {
    let schema = widget_schema().for_kind("example.com", "v1", "Widget");
    assert!(schema.is_some());
    let object = json!({"spec": {
        "tags": ["a", "b"],
        "ports": [{"protocol": "TCP", "port": 80, "name": "http"}],
        "atomic": ["x"]
    }});
    assert_eq!(
        field_set(&object, schema),
        json!({"f:spec": {
            "f:tags": {"v:\"a\"": {}, "v:\"b\"": {}},
            "f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {
                ".": {}, "f:port": {}, "f:protocol": {}, "f:name": {}
            }},
            "f:atomic": {}
        }})
    );

    // Dropping a set item removes it from the object.
    let live = with_managed(
        object.clone(),
        vec![entry("m", "Apply", field_set(&object, schema))],
    );
    let applied = json!({"spec": {"tags": ["a"], "ports": [{"protocol": "TCP", "port": 80}]}});
    let (result, _) = apply_ownership(&live, &applied, "m", false, schema).unwrap();
    assert_eq!(
        result["spec"],
        json!({"tags": ["a"], "ports": [{"protocol": "TCP", "port": 80}]})
    );
}
