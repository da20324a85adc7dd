//! The workload controllers on a real cluster of three nodes, through kubectl: Jobs
//! (parallel, failing, Indexed, TTL), a CronJob that fires and keeps its history short,
//! a StatefulSet that comes up in order with stable names and claims, and a DaemonSet
//! that covers every node, also one added later. Runs as root.

use std::path::Path;

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::{eventually, Kubectl};
use serde_json::{json, Value};

const BUSYBOX: &str = "korvet.local/busybox:latest";

fn container(command: &str) -> Value {
    json!({
        "name": "main",
        "image": BUSYBOX,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", command],
    })
}

fn apply(kubectl: &Kubectl, object: Value) {
    kubectl.ok_with_input(&["apply", "-f", "-"], &object.to_string());
}

fn job(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

fn pods_of_job(kubectl: &Kubectl, name: &str) -> Vec<Value> {
    let list = kubectl.json(&[
        "get",
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={name}"),
    ]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn check_jobs(kubectl: &Kubectl) {
    let template = |command: &str| {
        json!({"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [container(command)]}})
    };
    apply(
        kubectl,
        job(
            "count",
            json!({"completions": 3, "parallelism": 2, "template": template("sleep 1")}),
        ),
    );
    apply(
        kubectl,
        job(
            "fails",
            json!({"backoffLimit": 1, "template": template("exit 3")}),
        ),
    );
    apply(
        kubectl,
        job(
            "idx",
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed",
                   "template": template("echo index=$JOB_COMPLETION_INDEX host=$(hostname)")}),
        ),
    );
    apply(
        kubectl,
        job(
            "ttl",
            json!({"ttlSecondsAfterFinished": 1, "template": template("true")}),
        ),
    );

    // The server generates the selector and the template's labels.
    let count = kubectl.json(&["get", "job", "count"]);
    let uid = count["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        count["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(count["spec"]["backoffLimit"], 6);

    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/count",
        "--timeout=60s",
    ]);
    let count = kubectl.json(&["get", "job", "count"]);
    assert_eq!(count["status"]["succeeded"], 3, "{count:#}");
    assert!(
        condition(&count, "SuccessCriteriaMet").is_some(),
        "{count:#}"
    );
    assert!(count["status"]["completionTime"].is_string(), "{count:#}");
    let table = kubectl.ok(&["get", "job", "count"]);
    assert!(
        table.contains("COMPLETIONS") && table.contains("Complete") && table.contains("3/3"),
        "{table}"
    );
    let pods = pods_of_job(kubectl, "count");
    assert_eq!(pods.len(), 3, "exactly three pods ran: {pods:#?}");
    for pod in &pods {
        assert_eq!(pod["status"]["phase"], "Succeeded");
        assert!(
            pod["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{pod:#}"
        );
        assert_eq!(pod["metadata"]["labels"]["job-name"], "count");
    }

    kubectl.ok(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=60s",
    ]);
    let fails = kubectl.json(&["get", "job", "fails"]);
    let failed = condition(&fails, "Failed").unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{fails:#}");
    assert!(condition(&fails, "FailureTarget").is_some(), "{fails:#}");
    assert_eq!(fails["status"]["failed"], 2, "{fails:#}");
    assert!(condition(&fails, "Complete").is_none());

    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "--timeout=60s",
    ]);
    let idx = kubectl.json(&["get", "job", "idx"]);
    assert_eq!(idx["status"]["completedIndexes"], "0-2", "{idx:#}");
    let pods = pods_of_job(kubectl, "idx");
    let mut seen: Vec<String> = pods
        .iter()
        .map(|pod| {
            let name = pod["metadata"]["name"].as_str().unwrap();
            let index = pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap()
                .to_string();
            let log = kubectl.ok(&["logs", name]);
            assert_eq!(
                log.trim(),
                format!("index={index} host=idx-{index}"),
                "pod {name}"
            );
            index
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // Deleted once its TTL after finishing has passed.
    eventually(30, || {
        let run = kubectl.run(&["get", "job", "ttl"]);
        if run.ok {
            Err(format!("job ttl still exists: {}", run.stdout))
        } else {
            Ok(())
        }
    });
}

fn start_cronjob(kubectl: &Kubectl) {
    apply(
        kubectl,
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
               "spec": {"schedule": "* * * * *", "successfulJobsHistoryLimit": 1,
                        "jobTemplate": {"spec": {"template": {"spec": {
                            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                            "containers": [container("true")]}}}}}}),
    );
    let cj = kubectl.json(&["get", "cronjob", "tick"]);
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    kubectl.ok(&["create", "job", "--from=cronjob/tick", "manual-1"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/manual-1",
        "--timeout=60s",
    ]);
    kubectl.ok(&["create", "job", "--from=cronjob/tick", "manual-2"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        "job/manual-2",
        "--timeout=60s",
    ]);
    // History limit 1: the older of the two goes.
    eventually(20, || {
        let run = kubectl.run(&["get", "job", "manual-1"]);
        if run.ok {
            Err("manual-1 is still there beyond the history limit".to_string())
        } else {
            Ok(())
        }
    });
}

fn check_cronjob_fired(kubectl: &Kubectl) {
    let scheduled = eventually(70, || {
        let jobs = kubectl.json(&["get", "jobs"]);
        jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| {
                j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                    .is_string()
            })
            .cloned()
            .ok_or_else(|| format!("the CronJob did not fire: {jobs:#}"))
    });
    let name = scheduled["metadata"]["name"].as_str().unwrap();
    let table = kubectl.ok(&["get", "cronjob", "tick"]);
    assert!(
        table.contains("* * * * *") && table.contains("LAST SCHEDULE"),
        "{table}"
    );
    let at: jiff::Timestamp = scheduled["metadata"]["annotations"]
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(name, format!("tick-{}", at.as_second() / 60));
    kubectl.ok(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{name}"),
        "--timeout=60s",
    ]);
    eventually(20, || {
        let cj = kubectl.json(&["get", "cronjob", "tick"]);
        let jobs = kubectl.json(&["get", "jobs"]);
        let children: Vec<&str> = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == "tick")
            .filter_map(|j| j["metadata"]["name"].as_str())
            .collect();
        if cj["status"]["lastScheduleTime"].is_string()
            && cj["status"]["lastSuccessfulTime"].is_string()
            && cj["status"]["active"].is_null()
            && children == [name]
        {
            Ok(())
        } else {
            Err(format!(
                "cronjob status or history not as expected: {cj:#} children {children:?}"
            ))
        }
    });
}

fn pod_names(kubectl: &Kubectl, selector: &str) -> Vec<String> {
    let list = kubectl.json(&["get", "pods", "-l", selector]);
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn ready_since(pod: &Value) -> Option<jiff::Timestamp> {
    condition(pod, "Ready")?["lastTransitionTime"]
        .as_str()?
        .parse()
        .ok()
}

fn created(pod: &Value) -> jiff::Timestamp {
    pod["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn stateful_set(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec})
}

fn check_statefulset(kubectl: &Kubectl) {
    let mut main = container("sleep 3600");
    main["readinessProbe"] =
        json!({"exec": {"command": ["true"]}, "initialDelaySeconds": 2, "periodSeconds": 1});
    apply(
        kubectl,
        stateful_set(
            "web",
            json!({"replicas": 3, "serviceName": "web",
                   "selector": {"matchLabels": {"app": "web"}},
                   "template": {"metadata": {"labels": {"app": "web"}},
                                "spec": {"terminationGracePeriodSeconds": 1, "containers": [main]}}}),
        ),
    );
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    assert_eq!(pod_names(kubectl, "app=web"), ["web-0", "web-1", "web-2"]);
    let table = kubectl.ok(&["get", "statefulset", "web"]);
    assert!(table.contains("3/3"), "{table}");
    // In order: each pod was made only after the one before it was ready.
    let pods: Vec<Value> = (0..3)
        .map(|i| kubectl.json(&["get", "pod", &format!("web-{i}")]))
        .collect();
    for i in 1..3 {
        let before = ready_since(&pods[i - 1]).expect("ready");
        assert!(
            created(&pods[i]) >= before,
            "web-{i} was made before web-{} was ready",
            i - 1
        );
    }
    for (i, pod) in pods.iter().enumerate() {
        assert_eq!(pod["spec"]["hostname"], format!("web-{i}"));
        assert_eq!(pod["spec"]["subdomain"], "web");
        assert_eq!(
            pod["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            format!("web-{i}")
        );
        assert_eq!(
            pod["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            i.to_string()
        );
    }
    let events = kubectl.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=web",
    ]);
    assert!(
        events.contains("create Pod web-0 in StatefulSet web successful"),
        "{events}"
    );

    // A rolling update replaces every pod and leaves two revisions.
    kubectl.ok(&["set", "env", "statefulset/web", "VERSION=2"]);
    kubectl.ok(&["rollout", "status", "statefulset/web", "--timeout=60s"]);
    let sts = kubectl.json(&["get", "statefulset", "web"]);
    let revision = sts["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        sts["status"]["currentRevision"],
        revision.as_str(),
        "{sts:#}"
    );
    assert_eq!(sts["status"]["updatedReplicas"], 3, "{sts:#}");
    for i in 0..3 {
        let pod = kubectl.json(&["get", "pod", &format!("web-{i}")]);
        assert_eq!(
            pod["metadata"]["labels"]["controller-revision-hash"],
            revision.as_str()
        );
    }
    let history = kubectl.ok(&["rollout", "history", "statefulset/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Scaling down removes the highest ordinal first, one at a time.
    kubectl.ok(&["scale", "statefulset/web", "--replicas=1"]);
    eventually(60, || {
        let pods = kubectl.json(&["get", "pods", "-l", "app=web"]);
        let items = pods["items"].as_array().unwrap();
        let find = |n: &str| items.iter().find(|p| p["metadata"]["name"] == n);
        let leaving =
            |n: &str| find(n).is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string());
        assert!(
            !leaving("web-1") || find("web-2").is_none(),
            "web-1 is leaving while web-2 is still there: {pods:#}"
        );
        if find("web-1").is_none() && find("web-2").is_none() && find("web-0").is_some() {
            Ok(())
        } else {
            Err("web-1 and web-2 are not gone yet".to_string())
        }
    });

    // Claims from templates, made before their pods, all at once with Parallel.
    apply(
        kubectl,
        stateful_set(
            "db",
            json!({"replicas": 2, "serviceName": "db", "podManagementPolicy": "Parallel",
                   "selector": {"matchLabels": {"app": "db"}},
                   "template": {"metadata": {"labels": {"app": "db"}},
                                "spec": {"terminationGracePeriodSeconds": 1,
                                         "containers": [container("sleep 3600")]}},
                   "volumeClaimTemplates": [{"metadata": {"name": "data"},
                       "spec": {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": "1Gi"}}}}]}),
        ),
    );
    eventually(30, || {
        let names = pod_names(kubectl, "app=db");
        if names == ["db-0", "db-1"] {
            Ok(())
        } else {
            Err(format!("db pods: {names:?}"))
        }
    });
    for i in 0..2 {
        let claim = kubectl.json(&["get", "pvc", &format!("data-db-{i}")]);
        assert_eq!(claim["metadata"]["labels"]["app"], "db");
        let pod = kubectl.json(&["get", "pod", &format!("db-{i}")]);
        let volume = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "data")
            .cloned()
            .unwrap();
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"],
            format!("data-db-{i}")
        );
    }
    kubectl.ok(&["delete", "statefulset", "db", "--wait=false"]);
}

fn check_daemonset(platform: &TestPlatform, kubectl: &Kubectl) {
    apply(
        kubectl,
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"terminationGracePeriodSeconds": 1,
                                              "containers": [container("sleep 3600")]}}}}),
    );
    let covers = |count: usize| {
        eventually(90, || {
            let nodes = kubectl.json(&["get", "nodes"]);
            let mut node_names: Vec<String> = nodes["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            node_names.sort();
            let pods = kubectl.json(&["get", "pods", "-l", "app=agent"]);
            let mut on: Vec<String> = pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
                .collect();
            on.sort();
            let ds = kubectl.json(&["get", "daemonset", "agent"]);
            let status = &ds["status"];
            if node_names.len() == count
                && on == node_names
                && status["desiredNumberScheduled"] == count
                && status["numberReady"] == count
                && status["updatedNumberScheduled"] == count
            {
                Ok(())
            } else {
                Err(format!(
                    "nodes {node_names:?}, daemon pods running on {on:?}, status {status:#}"
                ))
            }
        })
    };
    covers(3);
    let pod = &kubectl.json(&["get", "pods", "-l", "app=agent"])["items"][0];
    let term = &pod["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
    assert_eq!(term["matchFields"][0]["key"], "metadata.name", "{pod:#}");
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable"),
        "{tolerations}"
    );

    let table = kubectl.ok(&["get", "daemonset", "agent"]);
    assert!(
        table.contains("UP-TO-DATE") && table.contains("NODE SELECTOR"),
        "{table}"
    );
    platform.ok(&["cluster", "scale", "wl", "--pool", "w", "--replicas", "4"]);
    covers(4);
}

#[test]
fn workload_controllers_on_a_three_node_cluster() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    platform.ok(&[
        "cluster",
        "create",
        "wl",
        "--pool",
        "w:small:zone-a:3",
        "--wait",
    ]);
    let kubectl = platform.cluster_kubectl("wl");
    start_cronjob(&kubectl);
    check_jobs(&kubectl);
    check_statefulset(&kubectl);
    check_daemonset(&platform, &kubectl);
    check_cronjob_fired(&kubectl);
}
