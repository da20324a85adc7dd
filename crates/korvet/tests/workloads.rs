//! The workload controllers on a real cluster of three nodes, through kubectl: Jobs
//! (parallel, failing, Indexed, TTL), a CronJob that fires and keeps its history short,
//! a StatefulSet that comes up in order with stable names and claims, and a DaemonSet
//! that covers every node, also one added later. Runs as root.

use std::path::Path;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::Kubectl;
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

/// Polls `check` until it says `Ok`; panics with its last complaint after `seconds`.
fn eventually<T>(seconds: u64, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        match check() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "after {seconds} s: {why}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
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
    check_cronjob_fired(&kubectl);
}
