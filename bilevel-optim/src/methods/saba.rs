//! SABA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022): SOBA with each of its five oracle
//! estimates replaced by a SAGA estimate over a finite set of fixed batches; constant steps.
//!
//! ```text
//! draw a lower batch index i and an upper batch index j
//! D_y = SAGA_i(∇_y G),  D_z = SAGA_i(H z) − SAGA_j(∇_y F),  D_x = SAGA_j(∇_x F) − SAGA_i(J z)
//! y ← y − ρ D_y;   z ← z − ρ D_z;   x ← x − γ D_x
//! ```
//! SAGA_k(g) = g_k − memory_k + mean(memory), then memory_k ← g_k (memories start at zero).
//! The problem must split its data into fixed batches (`BilevelProblem::lower_parts`).

use dfdx::prelude::{Cpu, Device};
use serde::{Deserialize, Serialize};

use super::method::{Built, Method, Start, Steps};
use super::rule::{Iteration, Rule, RuleOptimizer};
use crate::error::BilevelError;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::steps::{
    hypergradient_estimate, lower_grad_in_y_checked, plain_step, second_order_checked,
    upper_grad_checked, Outcome,
};
use crate::variance::{finite_split, SagaMemory};

/// The knobs of SABA (docs/algorithms.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SabaConfig {
    /// ρ: the step of y and z.
    pub rho: f64,
    /// γ: the x step.
    pub gamma: f64,
}

impl Default for SabaConfig {
    /// The BO-REP paper's tuned pair (0.05, 0.05).
    fn default() -> Self {
        Self {
            rho: 0.05,
            gamma: 0.05,
        }
    }
}

impl Method for SabaConfig {
    const NAME: &'static str = "saba";
    const HINT: &'static str = "gamma for x, rho for y and z";

    crate::checks!(rho: positive, gamma: positive);

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.rho, &mut self.gamma)
    }

    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(&self, at: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        let Start { x, y, problem } = at;
        let (lower, upper) = finite_split(problem, "SABA")?;
        RuleOptimizer::boxed(
            self,
            Saba {
                z: y.zeros_like(),
                memory: Memories {
                    grad_y_g: SagaMemory::new(y, &lower),
                    hz: SagaMemory::new(y, &lower),
                    jz: SagaMemory::new(x, &lower),
                    grad_y_f: SagaMemory::new(y, &upper),
                    grad_x_f: SagaMemory::new(x, &upper),
                },
            },
        )
    }
}

/// The five SAGA memories: three over the lower batches, two over the upper batches.
struct Memories<X, Y> {
    grad_y_g: SagaMemory<Y>,
    hz: SagaMemory<Y>,
    jz: SagaMemory<X>,
    grad_y_f: SagaMemory<Y>,
    grad_x_f: SagaMemory<X>,
}

/// SABA: SOBA with SAGA estimates over the problem's fixed batches.
pub struct Saba<X, Y> {
    z: Y,
    memory: Memories<X, Y>,
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for Saba<P::X, P::Y>
where
    Cpu: Device<E>,
{
    type Config = SabaConfig;
    crate::saved_memory!(vector z, table memory.grad_y_g, table memory.hz, table memory.jz, table memory.grad_y_f, table memory.grad_x_f);

    fn iterate(&mut self, it: Iteration<'_, E, P, SabaConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, site) = (it.config, it.site);
        let (i, zeta) = oracles.indexed_lower_batch()?;
        let (j, xi) = oracles.indexed_upper_batch()?;
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;
        let (lower_loss, grad_y) = lower_grad_in_y_checked(oracles, x, y, &zeta, site)?;
        let lower = second_order_checked(oracles, x, y, &self.z, &zeta, site)?;
        let mem = &mut self.memory;
        let d_y = mem.grad_y_g.estimate(i, &grad_y);
        let mut d_z = mem.hz.estimate(i, &lower.hvp);
        d_z.add_scaled(-E::one(), &mem.grad_y_f.estimate(j, &upper.dy));
        let d_x = hypergradient_estimate(
            &mem.grad_x_f.estimate(j, &upper.dx),
            &mem.jz.estimate(i, &lower.jvp),
        );

        let rho = E::of(c.rho);
        y.add_scaled(-rho, &d_y);
        self.z.add_scaled(-rho, &d_z);
        let (step_size, x_step_norm) = plain_step(x, &d_x, E::of(c.gamma));
        oracles.project_x(x);
        site.check("lower variable y", y)?;
        site.check("linear-system variable z", &self.z)?;
        site.check("upper variable x", x)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss: Some(lower_loss),
            hypergrad_norm: d_x.norm().f64(),
            lower_grad_norm: Some(grad_y.norm().f64()),
            linear_system_residual: Some(d_z.norm().f64()),
            step_size,
            x_step_norm,
        })
    }
}
