use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::http::{authorize, list_nodes, merge};
use super::{FakeKube, FLANNEL_CLUSTER_ROLE};

#[test]
fn strategic_merge_keys_conditions_by_type() {
    let mut n = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True"},
        {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
    ]}});
    merge(
        &mut n,
        &json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}),
        true,
    );
    let c = n["status"]["conditions"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[1]["status"], "False");
    assert_eq!(c[1]["reason"], "NoRouteCreated");
    // A plain merge patch replaces the list.
    merge(
        &mut n,
        &json!({"status": {"conditions": [{"type": "X"}]}}),
        false,
    );
    assert_eq!(n["status"]["conditions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn flannels_role_forbids_patching_the_node_but_not_its_status() {
    let fake = FakeKube::start_local();
    fake.put_node("n1", json!({"metadata": {}}));
    fake.enforce_rbac(FLANNEL_CLUSTER_ROLE);
    let req = |method: Method, path: &str, query: &str| {
        let parts: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(String::from)
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        authorize(&fake.inner, &method, &parts, query).map(|r| r.status())
    };
    assert_eq!(
        req(Method::PATCH, "/api/v1/nodes/n1", ""),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(req(Method::PATCH, "/api/v1/nodes/n1/status", ""), None);
    assert_eq!(req(Method::GET, "/api/v1/nodes", "watch=true"), None);
    assert_eq!(req(Method::GET, "/api/v1/nodes", ""), None);
    assert_eq!(
        req(Method::GET, "/api/v1/namespaces/kube-flannel/pods/p", ""),
        None
    );
    assert_eq!(
        fake.forbidden(),
        [("nodes".to_string(), "patch".to_string())]
    );
    fake.enforce_rbac(&[("nodes", "get")]);
    assert_eq!(
        req(Method::GET, "/api/v1/nodes", "watch=true"),
        Some(StatusCode::FORBIDDEN)
    );
}

#[tokio::test]
async fn lists_in_pages_with_continue_tokens() {
    let fake = FakeKube::start_local();
    for name in ["a", "b.example", "c", "d", "e"] {
        fake.put_node(name, json!({"metadata": {}}));
    }
    let page = |q: String| {
        let inner = fake.inner.clone();
        async move {
            let body = axum::body::to_bytes(list_nodes(&inner, &q).into_body(), usize::MAX)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let p = page(format!("limit=2&continue={token}")).await;
        pages += 1;
        assert_eq!(
            p["metadata"]["resourceVersion"], "5",
            "every page: the first's RV"
        );
        names.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match p["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b.example", "c", "d", "e"]);
    assert_eq!(pages, 3);
    // A change between pages leaves the token's RV alone.
    fake.put_node("f", json!({"metadata": {}}));
    let p = page(format!("limit=10&continue={token}")).await;
    assert_eq!(p["metadata"]["resourceVersion"], "5");
    // No limit: one page, the current RV, no token.
    let all = page(String::new()).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 6);
    assert_eq!(all["metadata"]["resourceVersion"], "6");
    assert!(all["metadata"].get("continue").is_none());
}

#[test]
fn merge_patch_null_removes() {
    let mut n = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
    merge(
        &mut n,
        &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}),
        false,
    );
    assert_eq!(
        n,
        json!({"metadata": {"annotations": {"b": "2", "c": "3"}}})
    );
}
