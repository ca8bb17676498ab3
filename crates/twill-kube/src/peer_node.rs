//! The part of a Node object the peer watch reads: name, resourceVersion, annotations,
//! podCIDR(s). A kubeadm node is ~12 KB of JSON, most of it managedFields (parsed by
//! k8s-openapi into nested JSON maps), labels and status.images; deserialising only this
//! part skips the rest without allocating it, which is what kept a list page of 500 full
//! Nodes, and every heartbeat update, from costing twilld its memory and CPU at scale.
//! The API is asked for the same objects as before (same URL, same watch); only the
//! decoding differs. Our own node is still read and patched as a full `Node`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Deserialize)]
pub struct PeerNode {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PeerSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = SlimMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        resource_version: m.resource_version,
        uid: m.uid,
        annotations: m.annotations,
        ..Default::default()
    })
}

impl kube::Resource for PeerNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Node as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The annotation logic reads `Node`s; this shell carries everything it reads.
impl From<PeerNode> for Node {
    fn from(p: PeerNode) -> Node {
        let spec = p.spec.unwrap_or_default();
        Node {
            metadata: p.metadata,
            spec: Some(NodeSpec {
                pod_cidr: spec.pod_cidr,
                pod_cidrs: spec.pod_cidrs,
                ..Default::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_leases_need_and_drops_the_rest() {
        let full = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "42", "uid": "u1",
                "labels": {"kubernetes.io/os": "linux"},
                "annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.1"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "x"},
            "status": {"images": [{"names": ["a"], "sizeBytes": 1}]}
        });
        let p: PeerNode = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(p.metadata.resource_version.as_deref(), Some("42"));
        assert!(p.metadata.managed_fields.is_none() && p.metadata.labels.is_none());
        let slim: Node = p.into();
        let real: Node = serde_json::from_value(full).unwrap();
        assert_eq!(slim.metadata.annotations, real.metadata.annotations);
        assert_eq!(slim.metadata.name, real.metadata.name);
        let (s, r) = (slim.spec.unwrap(), real.spec.unwrap());
        assert_eq!((s.pod_cidr, s.pod_cidrs), (r.pod_cidr, r.pod_cidrs));
        // A node without a spec (a bare kubelet registration) still decodes.
        let bare: PeerNode = serde_json::from_value(json!({"metadata": {"name": "n2"}})).unwrap();
        assert!(Node::from(bare).spec.unwrap().pod_cidr.is_none());
    }

    #[test]
    fn addresses_the_nodes_resource() {
        use kube::Resource;
        assert_eq!(PeerNode::url_path(&(), None), Node::url_path(&(), None));
        assert_eq!(PeerNode::api_version(&()), "v1");
        assert_eq!(PeerNode::kind(&()), "Node");
    }
}
