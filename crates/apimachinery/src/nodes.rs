//! What components read off a Node's status.

use k8s_openapi::api::core::v1::Node;

/// The node's `InternalIP` address, if it reports one.
pub fn internal_ip(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.as_str())
}
