//! `status.images` of the Node: the images the runtime holds, largest first and at most
//! 50, as upstream's kubelet reports them. Written on its own (a merge patch of only
//! that field) when the set changes, so the heartbeat's status writes stay small.

use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{ContainerImage, Node};
use kube::api::{Api, Patch, PatchParams};

use crate::cri::Cri;

/// Upstream's `--node-status-max-images` default.
pub(crate) const MAX_IMAGES: usize = 50;
const INTERVAL: Duration = Duration::from_secs(10);

/// The images as the Node lists them: every digest and tag as a name, largest first.
pub(crate) fn from_runtime(images: &[cri::Image]) -> Vec<ContainerImage> {
    let mut out: Vec<ContainerImage> = images
        .iter()
        .map(|image| ContainerImage {
            names: Some(
                image
                    .repo_digests
                    .iter()
                    .chain(&image.repo_tags)
                    .cloned()
                    .collect(),
            ),
            size_bytes: i64::try_from(image.size).ok(),
        })
        .filter(|image| image.names.as_ref().is_some_and(|n| !n.is_empty()))
        .collect();
    out.sort_by(|a, b| {
        b.size_bytes
            .cmp(&a.size_bytes)
            .then_with(|| a.names.cmp(&b.names))
    });
    out.truncate(MAX_IMAGES);
    out
}

/// Keeps the Node's `status.images` in line with the runtime until aborted.
pub(crate) async fn run(client: kube::Client, cri: Cri, node_name: String) {
    let nodes: Api<Node> = Api::all(client);
    let mut posted: Option<Vec<ContainerImage>> = None;
    loop {
        let listed = cri
            .images
            .clone()
            .list_images(cri::ListImagesRequest { filter: None })
            .await;
        match listed {
            Ok(reply) => {
                let images = from_runtime(&reply.into_inner().images);
                if posted.as_ref() != Some(&images) {
                    let patch = serde_json::json!({"status": {"images": images}});
                    match nodes
                        .patch_status(&node_name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        Ok(_) => posted = Some(images),
                        // Not registered yet, or briefly unreachable: next round.
                        Err(e) => tracing::debug!(error = %e, "posting the node's images"),
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e.message(), "listing images"),
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str, size: u64) -> cri::Image {
        cri::Image {
            repo_tags: vec![tag.into()],
            repo_digests: vec![format!("{tag}@sha256:0")],
            size,
            ..Default::default()
        }
    }

    #[test]
    fn largest_first_with_digests_and_tags_at_most_fifty() {
        let mut images: Vec<cri::Image> = (0..60).map(|i| image(&format!("i{i}"), i)).collect();
        images.push(cri::Image::default());
        let listed = from_runtime(&images);
        assert_eq!(listed.len(), MAX_IMAGES);
        assert_eq!(listed[0].size_bytes, Some(59));
        assert_eq!(
            listed[0].names.as_deref().unwrap(),
            ["i59@sha256:0".to_string(), "i59".to_string()]
        );
        assert!(listed
            .windows(2)
            .all(|w| w[0].size_bytes >= w[1].size_bytes));
    }
}
