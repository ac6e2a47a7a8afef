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
//! y_K of the iteration's last task.

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use crate::error::BilevelError;
use crate::optimizer::{MethodState, StepReport};
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    lower_grad_checked, plain_step, second_order_checked, upper_grad_checked, IterationScope,
    Outcome,
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

impl MetaConfig {
    /// Checks every value, naming the first one out of range.
    pub fn validate(&self) -> Result<(), BilevelError> {
        validate::positive("inner_step", self.inner_step)?;
        self.outer_step.validate("outer_step")?;
        validate::at_least_one("tasks_per_batch", self.tasks_per_batch)
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
    scope: &IterationScope,
) -> Result<MetaGradient<P::X, P::Y>, BilevelError>
where
    Cpu: Device<E>,
{
    let site = scope.site;
    let alpha = E::of(config.inner_step);
    let (support, query) = (oracles.lower_batch(), oracles.upper_batch());
    let mut trajectory = vec![init.duplicate()];
    let mut support_loss = None;
    for _ in 0..config.inner_steps {
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
    for y_k in trajectory.iter().rev() {
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

/// A meta-learner: MAML (`learn_upper = false`) or ANIL (`learn_upper = true`).
pub struct MetaLearner<X, Y> {
    pub(crate) name: &'static str,
    pub(crate) config: MetaConfig,
    pub(crate) learn_upper: bool,
    /// θ₀, the meta-learned initialization of y.
    pub(crate) init: Y,
    pub(crate) t: u64,
    _x: std::marker::PhantomData<X>,
}

const HINT: &str = "inner_step (α) or outer_step (η)";

impl<X, Y> MetaLearner<X, Y> {
    pub(crate) fn new<E: Real>(
        name: &'static str,
        config: MetaConfig,
        learn_upper: bool,
        y: &Y,
    ) -> Result<Self, BilevelError>
    where
        Cpu: Device<E>,
        Y: Params<E>,
    {
        config.validate()?;
        Ok(Self {
            name,
            config,
            learn_upper,
            init: y.duplicate(),
            t: 0,
            _x: std::marker::PhantomData,
        })
    }

    /// θ₀.
    pub fn initialization(&self) -> &Y {
        &self.init
    }

    pub(crate) fn step<E: Real, P: BilevelProblem<E, X = X, Y = Y>>(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut X,
        y: &mut Y,
    ) -> Result<StepReport, BilevelError>
    where
        Cpu: Device<E>,
        X: Params<E>,
        Y: Params<E>,
    {
        let scope = IterationScope::begin(self.name, HINT, self.t, oracles);
        let share = E::of(1.0 / self.config.tasks_per_batch as f64);
        let (mut d_init, mut d_upper) = (self.init.zeros_like(), x.zeros_like());
        let (mut query_loss, mut support_loss) = (0.0, None);
        for _ in 0..self.config.tasks_per_batch {
            let task = task_meta_gradient(oracles, x, &self.init, &self.config, &scope)?;
            d_init.add_scaled(share, &task.init);
            d_upper.add_scaled(share, &task.upper);
            query_loss += share.f64() * task.query_loss;
            support_loss = task.support_loss;
            *y = task.adapted;
        }
        let eta = E::of(self.config.outer_step.at(self.t));
        let (step_size, mut x_step_norm) = plain_step(&mut self.init, &d_init, eta);
        scope
            .site
            .check("meta-learned initialization θ₀", &self.init)?;
        if self.learn_upper {
            x_step_norm = plain_step(x, &d_upper, eta).1;
            oracles.project_x(x);
            scope.site.check("upper variable x", x)?;
        }
        let mut hypergrad = d_init.norm_sq().f64();
        if self.learn_upper {
            hypergrad += d_upper.norm_sq().f64();
        }
        self.t += 1;
        Ok(scope.report(
            oracles,
            Outcome {
                upper_loss: Some(query_loss),
                lower_loss: support_loss,
                hypergrad_norm: hypergrad.sqrt(),
                step_size,
                x_step_norm,
                ..Default::default()
            },
        ))
    }

    pub(crate) fn state<E: Real>(&self) -> MethodState
    where
        Cpu: Device<E>,
        Y: Params<E>,
    {
        let mut s = MethodState::with_counter(self.name, self.t);
        s.put("init", &self.init);
        s
    }

    pub(crate) fn load_state<E: Real>(&mut self, state: &MethodState) -> Result<(), BilevelError>
    where
        Cpu: Device<E>,
        Y: Params<E>,
    {
        let t = state.counter(self.name)?;
        state.restore("init", &mut self.init)?;
        self.t = t;
        Ok(())
    }
}

/// Implements `BilevelOptimizer` for a named meta-learner wrapping [`MetaLearner`].
macro_rules! meta_method {
    ($ty:ident) => {
        impl<E: Real, P: BilevelProblem<E>> BilevelOptimizer<E, P> for $ty<P::X, P::Y>
        where
            Cpu: Device<E>,
        {
            fn name(&self) -> &'static str {
                self.0.name
            }

            fn step(
                &mut self,
                oracles: &mut Oracles<E, P>,
                x: &mut P::X,
                y: &mut P::Y,
            ) -> Result<StepReport, BilevelError> {
                self.0.step(oracles, x, y)
            }

            fn state(&self) -> MethodState {
                self.0.state()
            }

            fn load_state(&mut self, state: &MethodState) -> Result<(), BilevelError> {
                self.0.load_state(state)
            }
        }
    };
}
pub(crate) use meta_method;
