//! `scripts/demo.sh --network-policy`: NetworkPolicy on three twilld nodes and a real
//! kube-apiserver, as an operator would see it: everything reaches x/a, a default deny
//! cuts it off, an allow rule lets namespace y back in, `twilld policy explain` says why,
//! the kernel's table shows the rules, and deleting the policies opens everything again.
//! Every step is checked on the whole matrix of 288 connections, not on one ping.

use twill_e2e::netpol::{LabPod, PolicyLab};

fn show(what: &str) {
    println!("\n== {what}");
}

fn main() {
    show("3 nodes with twilld --network-policy on a real kube-apiserver; namespaces x, y, z with pods a, b, c each serving TCP and UDP on 80 and 81");
    let lab = PolicyLab::start("demo", &[]);
    for p in &lab.pods {
        println!("  {:<4} {:<12} node{}", p.id(), p.ip, p.node + 1);
    }
    println!("every pod reaches every other pod on both ports and protocols");

    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: x}\nspec: {podSelector: {}}\n";
    show("kubectl apply: a default deny of ingress in namespace x");
    print!("{deny}");
    lab.apply(deny);
    lab.expect("default deny", &|_, t: &LabPod, _, _| t.ns != "x");
    println!("x's pods are cut off from everyone (checked on all 288 connections); the rest is untouched");

    let allow = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-y-to-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n    ports: [{port: 80, protocol: TCP}]\n";
    show("kubectl apply: let namespace y back in to x/a on 80/TCP");
    print!("{allow}");
    lab.apply(allow);
    lab.expect("allow y", &|f: &LabPod, t: &LabPod, port, proto| {
        t.ns != "x"
            || (t.id() == "x/a"
                && f.ns == "y"
                && port == 80
                && proto == twill_e2e::netpol::Proto::Tcp)
    });
    println!("y's pods reach x/a on 80/TCP again; nothing else reaches x");

    show("twilld policy explain");
    let kc = format!(
        "--kubeconfig-file={}",
        lab.c.dir.path().join("sa.kubeconfig").display()
    );
    for (from, to, port) in [
        ("y/b", "x/a", "80/TCP"),
        ("z/b", "x/a", "80/TCP"),
        ("y/b", "x/a", "81/TCP"),
    ] {
        let (_, out) = lab.c.nodes[0].twilld(&[
            "policy", "explain", "--from", from, "--to", to, "--port", port, &kc,
        ]);
        print!("{out}");
    }

    let node = lab.pod("x/a").node;
    show(&format!(
        "the kernel on node{}: nft list table inet twill-policy (excerpt)",
        node + 1
    ));
    let table = lab.c.nodes[node].ns.sh("nft list table inet twill-policy");
    for line in table.lines().filter(|l| {
        l.contains("vmap")
            || l.contains("jump p")
            || l.contains("accept comment")
            || l.contains(" : jump ")
    }) {
        println!("  {}", line.trim());
    }

    show("kubectl delete networkpolicy --all -n x");
    lab.delete_policies();
    lab.expect("deleted", &|_, _, _, _| true);
    for n in &lab.c.nodes {
        assert!(
            !n.ns
                .try_sh("nft list table inet twill-policy >/dev/null 2>&1"),
            "a table left on {}",
            n.ns.name
        );
    }
    println!("everything reaches everything again, and no table is left on any node");
}
