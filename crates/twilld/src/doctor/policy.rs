//! The NetworkPolicy check: the kernel's `inet twill-policy` table against the table the
//! model renders for this node now, from the API (the same conversions and renderer the
//! daemon uses), compared as the daemon's own check compares them
//! (`twill_dataplane::firewall::policy::differences`).

use twill_dataplane::firewall::policy::{differences, kernel_table};
use twill_kube::KubeOptions;
use twill_policy::{render, FAMILY, TABLE};

use super::{Checks, Status};

const NAME: &str = "network-policy";

pub(super) async fn network_policy(c: &mut Checks, opts: &KubeOptions) {
    let kernel = match kernel_table() {
        Ok(k) => k,
        Err(e) => {
            c.add(
                NAME,
                Status::Warn,
                format!("cannot read nft table {FAMILY} {TABLE}: {e}"),
                "is nft installed?",
            );
            return;
        }
    };
    let model = async {
        let store = twill_kube::KubeStore::connect(opts).await?;
        let cluster = twill_kube::list_cluster(store.client()).await?;
        anyhow::Ok(render(&cluster, store.node_name(), false))
    };
    let want = match model.await {
        Ok(w) => w,
        Err(e) if kernel.is_none() => {
            // No table and no reading of policies: NetworkPolicy is not in use here.
            c.pass(
                NAME,
                format!("not enforced on this node (no table; the policies cannot be read: {e})"),
            );
            return;
        }
        Err(e) => {
            c.add(NAME, Status::Warn, format!("the table is there but the policies cannot be read to check it: {e:#}"),
                "doctor needs list of pods, namespaces and networkpolicies (kube-twill.yml's ClusterRole)");
            return;
        }
    };
    match (want, kernel) {
        (None, None) => c.pass(NAME, "no NetworkPolicy in the cluster, no table"),
        (Some(w), None) => c.add(NAME, Status::Fail, format!("{} set elements wanted, but there is no table {FAMILY} {TABLE}", w.elements()),
            "is twilld running with --network-policy? Its log says why the table is not written"),
        (None, Some(_)) => c.add(NAME, Status::Warn, "a table is programmed but there is no NetworkPolicy",
            "twilld removes it on its next sync; twilld cleanup removes it from a node without twilld"),
        (Some(w), Some(k)) => {
            let diffs = differences(&w, &k);
            if diffs.is_empty() {
                c.pass(NAME, format!("the table matches the model: {} sets, {} elements", w.sets.len(), w.elements()));
            } else {
                let shown: Vec<&str> = diffs.iter().take(5).map(String::as_str).collect();
                c.add(NAME, Status::Fail, format!("the table differs from the model: {}{}", shown.join("; "),
                    if diffs.len() > 5 { format!(" (and {} more)", diffs.len() - 5) } else { String::new() }),
                    "a change may be in flight: run doctor again; twilld rewrites a table that drifted within seconds");
            }
        }
    }
}
