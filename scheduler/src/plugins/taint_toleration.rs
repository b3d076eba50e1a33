//! TaintToleration: a node's `NoSchedule`/`NoExecute` taints keep off every pod that does not
//! tolerate them; `PreferNoSchedule` taints only lower the node's score.

use k8s_openapi::api::core::v1::{Pod, Taint, Toleration};

use crate::framework::{
    CycleState, FilterPlugin, MAX_NODE_SCORE, NodeInfo, ScorePlugin, Status, default_normalize,
};

/// The plugin.
pub struct TaintToleration;

impl TaintToleration {
    /// Upstream's name.
    pub const NAME: &'static str = "TaintToleration";
}

/// Upstream's `Toleration.ToleratesTaint`.
pub fn toleration_matches(t: &Toleration, taint: &Taint) -> bool {
    let effect = t.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| toleration_matches(t, taint))
}

fn tolerations(pod: &Pod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
}

fn taints(node: &NodeInfo) -> &[Taint] {
    node.node()
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
}

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn filter(&self, _cx: &CycleState, pod: &Pod, node: &NodeInfo) -> Status {
        let tolerations = tolerations(pod);
        let untolerated = taints(node).iter().find(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !tolerates(tolerations, taint)
        });
        match untolerated {
            None => Status::Success,
            Some(t) => Status::unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            )),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    /// The number of `PreferNoSchedule` taints the pod does not tolerate (fewer is better).
    fn score(&self, _cx: &CycleState, pod: &Pod, node: &NodeInfo) -> i64 {
        let prefer: Vec<&Toleration> = tolerations(pod)
            .iter()
            .filter(|t| {
                matches!(
                    t.effect.as_deref(),
                    None | Some("") | Some("PreferNoSchedule")
                )
            })
            .collect();
        taints(node)
            .iter()
            .filter(|taint| taint.effect == "PreferNoSchedule")
            .filter(|taint| !prefer.iter().any(|t| toleration_matches(t, taint)))
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        default_normalize(MAX_NODE_SCORE, true, scores);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{node, pod};
    use std::sync::Arc;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: (!value.is_empty()).then(|| value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(key: &str, op: &str, value: &str, effect: &str) -> Toleration {
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Toleration {
            key: opt(key),
            operator: opt(op),
            value: opt(value),
            effect: opt(effect),
            toleration_seconds: None,
        }
    }

    #[test]
    fn toleration_matching_as_upstream() {
        let t = taint("k", "v", "NoSchedule");
        let cases = [
            (toleration("k", "Equal", "v", "NoSchedule"), true),
            (toleration("k", "", "v", ""), true),
            (toleration("k", "Equal", "w", "NoSchedule"), false),
            (toleration("k", "Exists", "", ""), true),
            (toleration("", "Exists", "", ""), true),
            (toleration("other", "Exists", "", ""), false),
            (toleration("k", "Exists", "", "NoExecute"), false),
            (toleration("k", "Gt", "v", ""), false),
        ];
        for (tol, want) in cases {
            assert_eq!(toleration_matches(&tol, &t), want, "{tol:?}");
        }
    }

    #[test]
    fn filter_rejects_untolerated_hard_taints() {
        let n = NodeInfo::new(Arc::new(
            node("n1")
                .taint("soft", "", "PreferNoSchedule")
                .taint("dedicated", "gpu", "NoSchedule")
                .build(),
        ));
        let cases = [
            (
                pod("a").build(),
                Status::unresolvable("node(s) had untolerated taint {dedicated: gpu}"),
            ),
            (
                pod("b")
                    .tolerate("dedicated", "Equal", "gpu", "NoSchedule")
                    .build(),
                Status::Success,
            ),
            (
                pod("c").tolerate("", "Exists", "", "").build(),
                Status::Success,
            ),
        ];
        for (p, want) in cases {
            let cx = CycleState::new(&p).unwrap();
            assert_eq!(TaintToleration.filter(&cx, &p, &n), want);
        }
    }

    #[test]
    fn fewer_soft_taints_score_higher() {
        let nodes: Vec<NodeInfo> = [
            node("clean").build(),
            node("one").taint("a", "", "PreferNoSchedule").build(),
            node("two")
                .taint("a", "", "PreferNoSchedule")
                .taint("b", "", "PreferNoSchedule")
                .build(),
        ]
        .into_iter()
        .map(|n| NodeInfo::new(Arc::new(n)))
        .collect();
        let p = pod("p").build();
        let cx = CycleState::new(&p).unwrap();
        let mut scores: Vec<i64> = nodes
            .iter()
            .map(|n| TaintToleration.score(&cx, &p, n))
            .collect();
        assert_eq!(scores, [0, 1, 2]);
        TaintToleration.normalize(&mut scores);
        assert_eq!(scores, [100, 50, 0]);

        let tolerant = pod("t")
            .tolerate("a", "Exists", "", "PreferNoSchedule")
            .build();
        let s: Vec<i64> = nodes
            .iter()
            .map(|n| TaintToleration.score(&cx, &tolerant, n))
            .collect();
        assert_eq!(s, [0, 0, 1]);
    }
}
