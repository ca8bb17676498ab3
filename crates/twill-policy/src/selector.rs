//! Label selectors (`metav1.LabelSelector`): matchLabels and matchExpressions, ANDed. The
//! API server validates them, but a selector read from the API is judged again here: one
//! we cannot read is an error, and the caller makes what used it match nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// An object's labels.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A parsed selector. The empty one matches every label set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// matchLabels and matchExpressions together, sorted: equal selectors compare equal
    /// however they were spelled, so they share one nftables set.
    terms: BTreeSet<(String, Op)>,
}

impl Selector {
    /// Every label set (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Only the labels in `m`, exactly (matchLabels alone).
    pub fn labels(m: &[(&str, &str)]) -> Self {
        Selector {
            terms: m
                .iter()
                .map(|(k, v)| (k.to_string(), Op::In(BTreeSet::from([v.to_string()]))))
                .collect(),
        }
    }

    /// The selector as the API gave it, or what is wrong with it (naming the field and
    /// value, for the report).
    pub fn parse(s: &LabelSelector) -> Result<Self, String> {
        let mut terms = BTreeSet::new();
        for (k, v) in s.match_labels.iter().flatten() {
            terms.insert((k.clone(), Op::In(BTreeSet::from([v.clone()]))));
        }
        for (i, e) in s.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let field = format!("matchExpressions[{i}]");
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "{field}: operator {} with no values (key {:?})",
                        e.operator, e.key
                    ))
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "{field}: operator {} takes no values (key {:?})",
                        e.operator, e.key
                    ))
                }
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(format!("{field}: unknown operator {other:?}")),
            };
            if e.key.is_empty() {
                return Err(format!("{field}: empty key"));
            }
            terms.insert((e.key.clone(), op));
        }
        Ok(Selector { terms })
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|(k, op)| match op {
            Op::In(vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Op::NotIn(vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Op::Exists => labels.contains_key(k),
            Op::DoesNotExist => !labels.contains_key(k),
        })
    }
}

/// kubectl's spelling: `app=web,tier in (a,b),!debug`; `{}` for the empty selector.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("{}");
        }
        let join = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|(k, op)| match op {
                Op::In(vs) if vs.len() == 1 => format!("{k}={}", join(vs)),
                Op::In(vs) => format!("{k} in ({})", join(vs)),
                Op::NotIn(vs) => format!("{k} notin ({})", join(vs)),
                Op::Exists => k.clone(),
                Op::DoesNotExist => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Labels from the API's optional map.
pub(crate) fn labels_of(m: Option<&BTreeMap<String, String>>) -> Labels {
    m.cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = Selector::parse(&LabelSelector {
            match_labels: Some([("pod".to_string(), "a".to_string())].into()),
            match_expressions: Some(vec![
                req("tier", "In", &["web", "api"]),
                req("debug", "DoesNotExist", &[]),
                req("env", "NotIn", &["prod"]),
                req("team", "Exists", &[]),
            ]),
        })
        .unwrap();
        let ok = labels(&[("pod", "a"), ("tier", "api"), ("team", "x")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("env".into(), "prod".into());
        assert!(!s.matches(&l), "NotIn");
        let mut l = ok.clone();
        l.insert("env".into(), "dev".into());
        assert!(s.matches(&l), "NotIn passes other values");
        let mut l = ok.clone();
        l.insert("debug".into(), "".into());
        assert!(!s.matches(&l), "DoesNotExist");
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l), "Exists");
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l), "In");
        let mut l = ok;
        l.insert("pod".into(), "b".into());
        assert!(!s.matches(&l), "matchLabels");
        assert_eq!(
            s.to_string(),
            "!debug,env notin (prod),pod=a,team,tier in (api,web)"
        );
    }

    #[test]
    fn empty_matches_everything_and_spellings_compare_equal() {
        let e = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(e.is_everything() && e.matches(&Labels::new()));
        let a = Selector::parse(&LabelSelector {
            match_labels: Some([("pod".to_string(), "a".to_string())].into()),
            ..Default::default()
        })
        .unwrap();
        let b = Selector::parse(&LabelSelector {
            match_expressions: Some(vec![req("pod", "In", &["a"])]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unreadable_selectors_are_errors_naming_the_part() {
        for (r, want) in [
            (req("k", "Maybe", &["x"]), "unknown operator \"Maybe\""),
            (req("k", "In", &[]), "operator In with no values"),
            (req("k", "Exists", &["x"]), "takes no values"),
            (req("", "Exists", &[]), "empty key"),
        ] {
            let e = Selector::parse(&LabelSelector {
                match_expressions: Some(vec![r]),
                ..Default::default()
            })
            .unwrap_err();
            assert!(e.contains(want) && e.contains("matchExpressions[0]"), "{e}");
        }
    }
}
