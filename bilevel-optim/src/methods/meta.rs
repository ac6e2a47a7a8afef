//! The meta-learning core shared by MAML and ANIL: learn an initialization θ₀ of y such that K
//! SGD steps on a task's support batch (lower level) give a low query loss (upper level). The
//! meta-gradient differentiates through the K steps exactly, with the second-order oracles:
//!
//! ```text
//! per task (ζ support, ξ query):   y_0 = θ₀,  y_{k+1} = y_k − α ∇_y G(x, y_k; ζ)
//! a = ∇_y F(x, y_K; ξ),  g_x = ∇_x F(x, y_K; ξ)
//! for k = K−1, …, 0:   g_x ← g_x − α J(x, y_k; ζ) a;   a ← a − α H(x, y_k; ζ) a     (one pass each)
//! θ₀ ← θ₀ − η mean_tasks(a)          and, when x is meta-learned too (ANIL), x ← x − η mean(g_x)
//! ```
//! `a` is d F(x, y_K)/d θ₀ and `g_x` is d F(x, y_K(x))/d x. The caller's y is set to the adapted
//! y_K of the iteration's last task. The unrolled pass itself, [`unrolled_gradient`], is ITD's
//! too (`methods::itd`).

use std::fmt;
use std::marker::PhantomData;

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Method, Steps};
use super::rule::{Iteration, Rule};
use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    lower_grad_checked, plain_step, project_and_check_x, second_order_checked, upper_grad_checked,
    Outcome, Site,
};
use crate::validate;

/// The knobs of MAML and ANIL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetaConfig {
    /// K: SGD steps of the adaptation.
    pub inner_steps: usize,
    /// α: the adaptation step.
    pub inner_step: f64,
    /// η_t: the meta step.
    pub outer_step: PowerSchedule,
    /// Tasks (lower/upper batch pairs) per iteration.
    pub tasks_per_batch: usize,
}

impl Default for MetaConfig {
    /// The BO-REP paper's tuned pair (inner 0.05, outer 0.1) with the lab's 5 inner steps.
    fn default() -> Self {
        Self {
            inner_steps: 5,
            inner_step: 0.05,
            outer_step: PowerSchedule::constant(0.1),
            tasks_per_batch: 1,
        }
    }
}

/// The meta-gradients of one task.
pub struct MetaGradient<X, Y> {
    /// d F / d θ₀.
    pub init: Y,
    /// d F / d x (x fixed during the adaptation).
    pub upper: X,
    /// The adapted y_K.
    pub adapted: Y,
    /// The query (upper) loss at the adapted y.
    pub query_loss: f64,
    /// The support (lower) loss at the last adaptation step, if any step ran.
    pub support_loss: Option<f64>,
}

/// Adapts θ₀ on one task and differentiates the query loss through the adaptation.
pub fn task_meta_gradient<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    init: &P::Y,
    config: &MetaConfig,
    site: Site,
) -> Result<MetaGradient<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let unroll = Unroll {
        steps: config.inner_steps,
        step: config.inner_step,
        backward_steps: config.inner_steps,
    };
    unrolled_gradient(oracles, x, init, unroll, site)
}

/// K SGD steps on y and how far back they are differentiated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unroll {
    /// K: SGD steps on one lower batch.
    pub steps: usize,
    /// α: their step.
    pub step: f64,
    /// How many of the last steps the backward pass goes through (K: all; fewer: truncated
    /// back-propagation, whose `init` gradient is then d F / d y_{K−T}, not d F / d y_0).
    pub backward_steps: usize,
}

/// The unrolled differentiation MAML, ANIL and ITD share: from `init`, K SGD steps on one lower
/// batch ζ, then the upper loss on one upper batch ξ at y_K, and the exact reverse pass through
/// the last `backward_steps` steps (one H·v and J·v pass each, at the stored iterates).
pub fn unrolled_gradient<E: Real, P: BilevelProblem<E>>(
    oracles: &mut Oracles<E, P>,
    x: &P::X,
    init: &P::Y,
    unroll: Unroll,
    site: Site,
) -> Result<MetaGradient<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let alpha = E::of(unroll.step);
    let (support, query) = (oracles.lower_batch(), oracles.upper_batch());
    let mut trajectory = vec![init.duplicate()];
    let mut support_loss = None;
    for _ in 0..unroll.steps {
        let last = trajectory.last().expect("starts with θ₀");
        let g = lower_grad_checked(oracles, x, last, &support, site)?;
        let mut next = last.duplicate();
        next.add_scaled(-alpha, &g.dy);
        support_loss = Some(g.value.f64());
        trajectory.push(next);
    }
    let adapted = trajectory.pop().expect("y_K");
    let upper = upper_grad_checked(oracles, x, &adapted, &query, site)?;
    let (mut a, mut g_x) = (upper.dy, upper.dx);
    for y_k in trajectory.iter().rev().take(unroll.backward_steps) {
        let so = second_order_checked(oracles, x, y_k, &a, &support, site)?;
        g_x.add_scaled(-alpha, &so.jvp);
        a.add_scaled(-alpha, &so.hvp);
    }
    Ok(MetaGradient {
        init: a,
        upper: g_x,
        adapted,
        query_loss: upper.value.f64(),
        support_loss,
    })
}

/// Which meta-learner a configuration and an optimizer are: its name and whether it learns x.
pub trait MetaVariant:
    Clone + Copy + fmt::Debug + PartialEq + Default + Send + Sync + 'static
{
    /// The name users select it by.
    const NAME: &'static str;
    /// Whether x is meta-learned too (ANIL) or left as it is (MAML).
    const LEARNS_UPPER: bool;
    /// Whether θ₀ is meta-learned (MAML, ANIL) or every task starts from the y the method was
    /// built with (the lab's encoder-learning MAML).
    const LEARNS_INIT: bool = true;
}

/// The configuration of meta-learner `V`: the knobs of [`MetaConfig`], under `V`'s name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct Meta<V: MetaVariant> {
    /// The knobs.
    pub config: MetaConfig,
    #[serde(skip)]
    variant: PhantomData<V>,
}

impl<V: MetaVariant> From<MetaConfig> for Meta<V> {
    fn from(config: MetaConfig) -> Self {
        Self {
            config,
            variant: PhantomData,
        }
    }
}

impl<V: MetaVariant> Method for Meta<V> {
    const NAME: &'static str = V::NAME;
    const HINT: &'static str = "inner_step (α) or outer_step (η)";

    fn validate(&self) -> Result<(), BilevelError> {
        validate::positive("inner_step", self.config.inner_step)?;
        self.config.outer_step.validate("outer_step")?;
        validate::at_least_one("tasks_per_batch", self.config.tasks_per_batch)
    }

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.config.inner_step, &mut self.config.outer_step)
    }

    crate::rule_optimizer!(|_, at| MetaLearner::<P::Y, V> {
        init: at.y.duplicate(),
        variant: PhantomData,
    });
}

/// A meta-learner's memory, MAML's or ANIL's as `V` says: θ₀, the meta-learned initialization
/// of y.
pub struct MetaLearner<Y, V> {
    init: Y,
    variant: PhantomData<V>,
}

impl<Y, V: MetaVariant> MetaLearner<Y, V> {
    /// θ₀.
    pub fn initialization(&self) -> &Y {
        &self.init
    }
}

impl<E: Real, P: BilevelProblem<E>, V: MetaVariant> Rule<E, P> for MetaLearner<P::Y, V>
where
    Cpu: Device<E>,
{
    type Config = Meta<V>;
    crate::saved_memory!(vector init);

    fn iterate(&mut self, it: Iteration<'_, E, P, Meta<V>>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (&it.config.config, it.t, it.site);
        let share = E::of(1.0 / c.tasks_per_batch as f64);
        let (mut d_init, mut d_upper) = (self.init.zeros_like(), x.zeros_like());
        let (mut query_loss, mut support_loss) = (0.0, None);
        for _ in 0..c.tasks_per_batch {
            let task = task_meta_gradient(oracles, x, &self.init, c, site)?;
            d_init.add_scaled(share, &task.init);
            d_upper.add_scaled(share, &task.upper);
            query_loss += share.f64() * task.query_loss;
            support_loss = task.support_loss;
            *y = task.adapted;
        }
        let eta = E::of(c.outer_step.at(t));
        let (mut hypergrad, mut x_step_norm) = (0.0, 0.0);
        if V::LEARNS_INIT {
            plain_step(&mut self.init, &d_init, eta);
            site.check("meta-learned initialization θ₀", &self.init)?;
            hypergrad += d_init.norm_sq().f64();
        }
        if V::LEARNS_UPPER {
            x_step_norm = plain_step(x, &d_upper, eta).1;
            project_and_check_x(oracles, x, site)?;
            hypergrad += d_upper.norm_sq().f64();
        }
        let step_size = eta.f64();
        Ok(Outcome {
            upper_loss: Some(query_loss),
            lower_loss: support_loss,
            hypergrad_norm: hypergrad.sqrt(),
            step_size,
            x_step_norm,
            ..Default::default()
        })
    }
}
