//! Expert routing: router logits to the chosen experts and their weights.
//!
//! The router only decides; it never owns or touches expert weights (those are reached
//! through [`crate::experts::ExpertSource`]).

use std::collections::BTreeMap;

use super::config::{Gating, GroupScore, MoeConfig};
use crate::compute::cpu::{sigmoid, softmax};

/// The experts chosen for one token, best first, with their mixing weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Expert ids.
    pub ids: Vec<usize>,
    /// Mixing weight of each chosen expert.
    pub weights: Vec<f32>,
}

/// Routes the `n` tokens whose router logits are `logits` (`n × n_expert`) and groups
/// them by expert — `expert → [(token, weight)]`, experts ascending, tokens in order — so
/// each chosen expert is fetched and applied once for all its tokens. With `routes`,
/// each token's route is also appended there.
pub fn group_by_expert(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>, mut routes: Option<&mut Vec<Route>>) -> BTreeMap<usize, Vec<(usize, f32)>> {
    let mut by_expert: BTreeMap<usize, Vec<(usize, f32)>> = BTreeMap::new();
    for (t, l) in logits.chunks_exact(cfg.n_expert).enumerate() {
        let r = route(cfg, l, bias);
        for (&e, &w) in r.ids.iter().zip(&r.weights) {
            by_expert.entry(e).or_default().push((t, w));
        }
        if let Some(k) = routes.as_mut() {
            k.push(r);
        }
    }
    by_expert
}

/// The gating probabilities of one token and the scores experts are selected by (the
/// probabilities plus the selection bias; group limits not applied).
pub fn scores(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let mut probs = logits.to_vec();
    match cfg.gating {
        Gating::Softmax => softmax(&mut probs),
        Gating::Sigmoid => probs.iter_mut().for_each(|p| *p = sigmoid(*p)),
    }
    let sel: Vec<f32> = match bias {
        Some(b) => probs.iter().zip(b).map(|(p, b)| p + b).collect(),
        None => probs.clone(),
    };
    (probs, sel)
}

/// Routes one token: `logits` are the router outputs (one per expert) and `bias` the
/// optional selection bias (DeepSeek-V3's `exp_probs_b`), which affects which experts are
/// chosen but not their weights.
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> Route {
    let n = cfg.n_expert;
    let (probs, mut sel) = scores(cfg, logits, bias);

    if cfg.n_group > 1 {
        let per = n / cfg.n_group;
        let mut scores: Vec<(f32, usize)> = (0..cfg.n_group)
            .map(|g| {
                let grp = &sel[g * per..(g + 1) * per];
                let s = match cfg.group_score {
                    GroupScore::Max => grp.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    GroupScore::SumTop2 => {
                        let mut v = grp.to_vec();
                        v.sort_by(|a, b| b.total_cmp(a));
                        v.iter().take(2).sum()
                    }
                };
                (s, g)
            })
            .collect();
        scores.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = vec![false; cfg.n_group];
        for &(_, g) in scores.iter().take(cfg.n_group_used) {
            keep[g] = true;
        }
        for (i, s) in sel.iter_mut().enumerate() {
            if !keep[i / per] {
                *s = f32::NEG_INFINITY;
            }
        }
    }

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
    let ids: Vec<usize> = order[..cfg.n_expert_used].to_vec();
    let mut weights: Vec<f32> = ids.iter().map(|&e| probs[e]).collect();
    if cfg.norm_weights {
        let sum: f32 = weights.iter().sum::<f32>().max(6.103_515_6e-5);
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    if cfg.weights_scale != 1.0 {
        weights.iter_mut().for_each(|w| *w *= cfg.weights_scale);
    }
    Route { ids, weights }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> MoeConfig {
        MoeConfig {
            n_expert: 8,
            n_expert_used: 2,
            n_ff_exp: 4,
            gating: Gating::Softmax,
            norm_weights: true,
            weights_scale: 1.0,
            n_group: 1,
            n_group_used: 1,
            group_score: GroupScore::Max,
            n_ff_shexp: 0,
            n_dense_lead: 0,
        }
    }

    #[test]
    fn softmax_top2_renormalized() {
        let r = route(&cfg(), &[0.0, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0], None);
        assert_eq!(r.ids, vec![1, 4]);
        let e = (1.0f32).exp();
        assert!((r.weights[0] - e / (e + 1.0)).abs() < 1e-6);
        assert!((r.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bias_changes_choice_not_weight() {
        let mut c = cfg();
        c.gating = Gating::Sigmoid;
        c.norm_weights = false;
        let logits = [0.0, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        let bias = [5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let r = route(&c, &logits, Some(&bias));
        assert_eq!(r.ids, vec![0, 1]);
        assert!((r.weights[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn groups_limit_the_choice() {
        let mut c = cfg();
        c.n_group = 4;
        c.n_group_used = 1;
        // group 2 (experts 4, 5) holds the best expert
        let r = route(&c, &[1.0, 1.0, 0.0, 0.0, 3.0, 0.5, 2.9, 0.0], None);
        assert_eq!(r.ids, vec![4, 5]);
        c.group_score = GroupScore::SumTop2;
        let r = route(&c, &[1.0, 1.0, 0.0, 0.0, 3.0, 0.5, 2.9, 2.9], None);
        assert_eq!(r.ids, vec![6, 7]);
    }
}
