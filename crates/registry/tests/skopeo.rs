//! Interop with real `skopeo` (Debian's): copies into the registry and back out keep
//! every digest; credentials go through the Basic authenticator.

mod common;

use std::path::Path;
use std::process::Command;

use korvet_image::{ImageConfig, Source, BUSYBOX};
use korvet_registry::build;

/// Runs skopeo off the runtime's threads: the registry it talks to is served by them.
async fn skopeo(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new("skopeo")
            .arg("--insecure-policy")
            .args(&args)
            .output()
            .expect("skopeo is not installed: run scripts/setup.sh")
    })
    .await
    .unwrap()
}

async fn skopeo_ok(args: &[&str]) {
    let out = skopeo(args).await;
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The digest of the manifest tagged `tag` in an OCI layout's index.json.
fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .or_else(|| index["manifests"].as_array().unwrap().first())
        .and_then(|m| m["digest"].as_str())
        .unwrap()
        .to_string()
}

fn busybox_image() -> korvet_image::Image {
    let rootfs = tempfile::tempdir().unwrap();
    korvet_image::busybox_rootfs(rootfs.path(), Path::new(BUSYBOX)).unwrap();
    korvet_image::build(
        &Source::Dir(rootfs.path().into()),
        &ImageConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn skopeo_copy_in_and_out_keeps_digests() {
    let s = common::serve().await;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let image = busybox_image();
    image.write_oci_layout(&src, "v1").unwrap();
    let cert_dir = s.cert_dir.to_str().unwrap().to_string();
    let creds = format!("alice:{}", common::TOKEN);
    let dest = format!("docker://{}/test/img:v1", s.authority());
    let src_ref = format!("oci:{}:v1", src.display());

    // Without credentials the push is refused.
    let out = skopeo(&["copy", "--dest-cert-dir", &cert_dir, &src_ref, &dest]).await;
    assert!(!out.status.success(), "an anonymous push went through");
    let why = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        why.contains("unauthorized") || why.contains("authentication required"),
        "{why}"
    );

    skopeo_ok(&[
        "copy",
        "--dest-cert-dir",
        &cert_dir,
        "--dest-creds",
        &creds,
        &src_ref,
        &dest,
    ])
    .await;
    let in_registry = s
        .client
        .manifest_digest("test/img", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(in_registry.to_string(), image.digest().to_string());

    // Anonymous pull back out.
    let out_dir = work.path().join("out");
    let out_ref = format!("oci:{}:v1", out_dir.display());
    skopeo_ok(&["copy", "--src-cert-dir", &cert_dir, &dest, &out_ref]).await;
    assert_eq!(layout_digest(&src, "v1"), layout_digest(&out_dir, "v1"));
    assert_eq!(layout_digest(&out_dir, "v1"), image.digest().to_string());
    for layer in &image.layers {
        assert!(out_dir
            .join("blobs/sha256")
            .join(layer.digest.hex())
            .exists());
    }

    // skopeo's own view of the registry: tags and inspect.
    let repo = format!("docker://{}/test/img", s.authority());
    let tags = skopeo(&["list-tags", "--cert-dir", &cert_dir, &repo]).await;
    assert!(String::from_utf8_lossy(&tags.stdout).contains("\"v1\""));

    // A private repository: anonymous pull fails, with credentials it works.
    s.registry.set_private("test/img", true).await.unwrap();
    let target = format!("oci:{}:v1", work.path().join("private").display());
    let anon = skopeo(&["copy", "--src-cert-dir", &cert_dir, &dest, &target]).await;
    let authed = skopeo(&[
        "copy",
        "--src-cert-dir",
        &cert_dir,
        "--src-creds",
        &creds,
        &dest,
        &target,
    ])
    .await;
    assert!(
        !anon.status.success(),
        "anonymous pull of a private repository went through"
    );
    let why = String::from_utf8_lossy(&anon.stderr).to_lowercase();
    assert!(
        why.contains("unauthorized") || why.contains("authentication required"),
        "{why}"
    );
    assert!(
        authed.status.success(),
        "{}",
        String::from_utf8_lossy(&authed.stderr)
    );
}

#[tokio::test]
async fn built_busybox_pushed_by_korvet_is_pulled_by_skopeo() {
    let s = common::serve().await;
    let image = busybox_image();
    // Two builds of the same input give one digest.
    assert_eq!(busybox_image().digest(), image.digest());
    build::push(&image, &s.client, "library/busybox", "latest")
        .await
        .unwrap();
    // Pushing again is a no-op for the blobs and keeps the digest.
    build::push(&image, &s.client, "library/busybox", "latest")
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let (src, c, target) = (
        format!("docker://{}/library/busybox:latest", s.authority()),
        s.cert_dir.to_str().unwrap().to_string(),
        format!("oci:{}:latest", out.display()),
    );
    skopeo_ok(&["copy", "--src-cert-dir", &c, &src, &target]).await;
    assert_eq!(layout_digest(&out, "latest"), image.digest().to_string());
    let listed = build::list_images(&s.anonymous).await.unwrap();
    assert_eq!(
        listed,
        vec![format!("{}/library/busybox:latest", s.authority())]
    );
}

#[tokio::test]
async fn base_images_are_built_once_and_pullable() {
    let s = common::serve().await;
    let added = build::ensure_base_images(&s.registry, Path::new(BUSYBOX))
        .await
        .unwrap();
    assert_eq!(added, vec!["busybox", "pause", "demo-web"]);
    let again = build::ensure_base_images(&s.registry, Path::new(BUSYBOX))
        .await
        .unwrap();
    assert!(again.is_empty());
    let work = tempfile::tempdir().unwrap();
    let (src, c, target) = (
        format!("docker://{}/pause:latest", s.authority()),
        s.cert_dir.to_str().unwrap().to_string(),
        format!("oci:{}:latest", work.path().join("pause").display()),
    );
    skopeo_ok(&["copy", "--src-cert-dir", &c, &src, &target]).await;
    let config_digest = {
        let digest = layout_digest(&work.path().join("pause"), "latest");
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(work.path().join("pause/blobs/sha256").join(&digest[7..])).unwrap(),
        )
        .unwrap();
        manifest["config"]["digest"].as_str().unwrap().to_string()
    };
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            work.path()
                .join("pause/blobs/sha256")
                .join(&config_digest[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sleep", "2147483647"])
    );
}
