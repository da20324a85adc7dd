//! `kubectl exec`, `attach`, `cp` and `port-forward` for real: kubectl 1.32 speaks
//! WebSocket (v5 channel protocol, port-forward's SPDY tunnel) to the API server, which
//! forwards the upgrade to the node agent, which bridges onto containerd's SPDY
//! streaming server and runc. Runs as root.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use korvet_test_support::platform::TestPlatform;
use korvet_test_support::{eventually, Kubectl};
use serde_json::{json, Value};

fn pod(name: &str, node: &str, image: &str, script: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
            }],
        },
    })
    .to_string()
}

fn running(pod: &Value) -> bool {
    pod["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|c| c["state"]["running"].is_object()))
}

/// Runs kubectl with `input` on stdin; gives its exit code, stdout and stderr.
fn run(kubectl: &Kubectl, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    run_env(kubectl, &[], args, input)
}

/// [`run`] with extra environment (`KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`: SPDY).
fn run_env(
    kubectl: &Kubectl,
    env: &[(&str, &str)],
    args: &[&str],
    input: &[u8],
) -> (i32, Vec<u8>, String) {
    let mut command = kubectl.command(args);
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("start kubectl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("kubectl output");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl exec -i box -- cat` with `input`. containerd 1.6 now and then gives an
/// exec's stdin EOF before the first byte arrives (seen on kubectl's plain SPDY path as
/// well, which the node passes through untouched), so a run that got nothing back is
/// tried again, up to three times.
fn echo_through_stdin(
    kubectl: &Kubectl,
    env: &[(&str, &str)],
    input: &[u8],
) -> (i32, Vec<u8>, String) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (code, out, err) = run_env(kubectl, env, &["exec", "-i", "box", "--", "cat"], input);
        if !(code == 0 && out.is_empty()) || attempt == 3 {
            return (code, out, err);
        }
        eprintln!("exec -i: stdin ended before any input (attempt {attempt}); again");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// GET http://127.0.0.1:PORT/ by hand (HTTP/1.0, read to the end).
fn http_get(port: u16) -> std::io::Result<String> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn kubectl_exec_attach_cp_and_port_forward_reach_the_container() {
    let platform = TestPlatform::start(Path::new(env!("CARGO_BIN_EXE_korvet")));
    let (kubectl, node) = platform.one_node_cluster("exec");
    let busybox = "korvet.local/busybox:latest";
    let apply = |manifest: String| kubectl.ok_with_input(&["apply", "-f", "-"], &manifest);
    apply(pod("box", &node, busybox, "echo box-started; sleep 3600"));
    apply(pod(
        "ticker",
        &node,
        busybox,
        "while true; do echo tick; sleep 0.2; done",
    ));
    apply(pod(
        "web",
        &node,
        busybox,
        "mkdir -p /www && echo hello-through-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www",
    ));
    apply(pod("missing", &node, "korvet.local/missing:1", "true"));
    platform.wait_pod(&kubectl, "box", 120, running);

    // Output and exit codes.
    let (code, out, err) = run(
        &kubectl,
        &["exec", "box", "--", "cat", "/etc/hostname"],
        b"",
    );
    assert_eq!(
        code,
        0,
        "{err}\nagent log:\n{}",
        platform.machine_log("agent.log")
    );
    assert_eq!(String::from_utf8_lossy(&out), "box\n");
    let (code, out, err) = run(
        &kubectl,
        &[
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(String::from_utf8_lossy(&out), "out\n");
    assert!(err.contains("err\n"), "{err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");

    // stdin reaches the command, and its end too (v5 closes the stdin stream: `cat`
    // ends). kubectl's SPDY path (its fallback) is passed through to containerd as it is.
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for (env, input) in [
        (&[][..], &b"first line\nsecond line\n"[..]),
        (&[][..], &large[..]),
        (&spdy[..], &b"over spdy\n"[..]),
    ] {
        let (code, out, err) = echo_through_stdin(&kubectl, env, input);
        assert_eq!(code, 0, "{err}");
        assert!(
            out == input,
            "{env:?}: {} bytes back of {}; {err}",
            out.len(),
            input.len()
        );
    }
    // A terminal: kubectl needs one of its own for -t, so it runs under script(1).
    let line = format!(
        "kubectl --kubeconfig {} exec -i -t box -- busybox tty",
        kubeconfig_of(&kubectl)
    );
    let script = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let printed = String::from_utf8_lossy(&script.stdout);
    assert!(script.status.success(), "{printed}");
    assert!(
        printed.contains("/dev/pts/"),
        "a terminal in the container: {printed}"
    );

    // cp in and out: tar in the container, stdin's end ends tar.
    let dir = platform.data_dir();
    let original: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let local = dir.join("cp-in.bin");
    std::fs::write(&local, &original).unwrap();
    let target = "box:/tmp/copied.bin";
    kubectl.ok(&["cp", local.to_str().unwrap(), target]);
    let back = dir.join("cp-out.bin");
    kubectl.ok(&["cp", target, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "cp changed the file"
    );

    // The platform's busybox image, found with nothing but the management kubeconfig:
    // it has every applet of its busybox, so cp (tar), vi and nslookup work in it as in
    // upstream's busybox image.
    let host = platform
        .registry_url()
        .trim_start_matches("https://")
        .to_string();
    let platform_busybox = format!("{host}/busybox:latest");
    eventually(60, || {
        let listed = platform.cli(&["image", "list"]);
        match listed.stdout.lines().any(|l| l == platform_busybox) {
            true => Ok(()),
            false => Err(format!(
                "{platform_busybox} not listed:\n{}{}",
                listed.stdout, listed.stderr
            )),
        }
    });
    apply(pod("registry-box", &node, &platform_busybox, "sleep 3600"));
    platform.wait_pod(&kubectl, "registry-box", 120, running);
    let (code, out, err) = run(
        &kubectl,
        &[
            "exec",
            "registry-box",
            "--",
            "sh",
            "-c",
            "for a in tar vi nslookup wget; do command -v $a || exit 1; done",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out).lines().count(),
        4,
        "{}",
        String::from_utf8_lossy(&out)
    );
    let target = "registry-box:/tmp/copied.bin";
    kubectl.ok(&["cp", local.to_str().unwrap(), target]);
    let back = dir.join("cp-out-registry.bin");
    kubectl.ok(&["cp", target, back.to_str().unwrap()]);
    assert!(
        std::fs::read(&back).unwrap() == original,
        "cp through the platform's busybox changed the file"
    );

    // attach: the output of the container's own process.
    platform.wait_pod(&kubectl, "ticker", 60, running);
    let attached = kubectl.watch(&["attach", "ticker"]);
    attached.wait_for("tick\ntick\n", 30);
    drop(attached);

    // port-forward to httpd in the pod.
    platform.wait_pod(&kubectl, "web", 60, running);
    let port = free_port();
    let forward = kubectl.watch(&["port-forward", "pod/web", &format!("{port}:8080")]);
    forward.wait_for("Forwarding from", 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match http_get(port) {
            Ok(answer) if answer.contains("hello-through-port-forward") => break answer,
            other => assert!(Instant::now() < deadline, "through port-forward: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    // A second connection over the same forward.
    assert!(http_get(port)
        .unwrap()
        .contains("hello-through-port-forward"));
    drop(forward);

    // Errors, as upstream words them.
    let err = kubectl.fails(&["exec", "nosuch", "--", "true"]);
    assert!(err.contains("pods \"nosuch\" not found"), "{err}");
    let err = kubectl.fails(&["exec", "box", "-c", "nope", "--", "true"]);
    assert!(
        err.contains("container nope is not valid for pod box"),
        "{err}"
    );
    platform.wait_pod(&kubectl, "missing", 90, |p| {
        let reason = &p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"];
        reason == "ErrImagePull" || reason == "ImagePullBackOff"
    });
    let err = kubectl.fails(&["exec", "missing", "--", "true"]);
    assert!(
        err.contains("unable to upgrade connection: container not found (\"main\")"),
        "{err}"
    );
}

/// The kubeconfig path kubectl runs with (from its command line).
fn kubeconfig_of(kubectl: &Kubectl) -> String {
    let command = kubectl.command(&[]);
    let args: Vec<String> = command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--kubeconfig")
        .expect("--kubeconfig");
    args[at + 1].clone()
}
