//! BO-REP (Hao, Gong, Liu, ICLR 2024): bilevel optimization with lower-level initialization
//! refinement and periodic updates, for upper levels with unbounded smoothness.
//!
//! Paper-level Algorithm 1, per iteration t:
//! ```text
//! if t = 0:              y ← refine(x_0, y)                 (Epoch-SGD, or N plain SGD steps)
//! else if t mod I = 0:   y ← N SGD steps on fresh batches   (periodic update)
//! draw ξ_t (upper) and ζ_t (lower; shared by the HVP and the cross product)
//! z_{t+1} = Π_{‖z‖≤ρ}( z_t − ν (∇²_yy G(ζ_t) z_t − ∇_y F(ξ_t)) )
//! m_{t+1} = β m_t + (1−β) (∇_x F(ξ_t) − ∇²_xy G(ζ_t) z_t)
//! x_{t+1} = x_t − η m_{t+1} / ‖m_{t+1}‖                    (global norm over all of x)
//! ```
//! The official code differs in places (z₀ Xavier, no projection, no Epoch-SGD, J·z_{t+1},
//! separate batches); the structural ones are knobs here, documented on [`BoRepConfig`].

use dfdx::prelude::{Cpu, Device};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::method::{Built, Method, Start, Steps};
use super::rule::{Iteration, Rule, RuleOptimizer};
use crate::epoch_sgd::{epoch_sgd, EpochSchedule, EpochSgdConfig};
use crate::error::BilevelError;
use crate::oracles::Oracles;
use crate::params::Params;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::schedule::PowerSchedule;
use crate::steps::{
    hypergradient_estimate, linear_system_step, momentum_update, normalized_step,
    project_and_check_x, sgd_on_lower, upper_grad_checked, Outcome, Site,
};

/// How z starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZInit {
    /// z₀ = 0, the paper's reading.
    Zeros,
    /// Xavier-uniform over the whole of z as one column: U(−a, a), a = √(6/(d_y + 1)); the
    /// official code's choice.
    Xavier,
}

/// How y is refined before the first iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitRefinement {
    /// Start from the given y.
    None,
    /// `steps` plain SGD steps with the lower step γ: what the official code's update at t = 0 does.
    Sgd {
        /// How many steps.
        steps: usize,
    },
    /// Epoch-SGD, Algorithm 3 of the paper.
    EpochSgd(EpochSgdConfig),
}

/// BO-REP's knobs. [`Default`] is the official hyper-representation run; `bilevel-bench` holds
/// the official values of the other tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoRepConfig {
    /// η: the Euclidean length of every x step (the step is normalized by the global norm).
    pub eta: f64,
    /// b: decay exponent of η, so the step at iteration t is η/(t+1)^b. 0 (the paper's constant
    /// step) leaves x circling the optimum at a distance of the order of η; b > 0 lets it settle.
    pub eta_decay: f64,
    /// β: momentum of the hypergradient estimate, in [0, 1).
    pub beta: f64,
    /// ν: step of the SGD on the linear system for z.
    pub nu: f64,
    /// γ: step of the SGD on y (periodic updates and the SGD refinement).
    pub gamma: f64,
    /// I: y is updated at every I-th iteration (I = 1: every iteration).
    pub period: usize,
    /// N: SGD steps per periodic update of y, each on a fresh batch.
    pub lower_steps: usize,
    /// ρ: radius of the ball z is projected onto; `None` = no projection (the official code).
    /// The theory takes ρ ≥ ‖z*‖, e.g. ℓ_{f,0}/μ.
    pub z_radius: Option<f64>,
    /// How z starts.
    pub z_init: ZInit,
    /// How y is refined at t = 0.
    pub init_refinement: InitRefinement,
    /// Take the cross product with the updated z_{t+1} (the official code) instead of z_t
    /// (the paper). Costs one more second-order pass per iteration.
    pub jvp_with_updated_z: bool,
    /// Draw a separate lower batch for the cross product (the official code) instead of sharing
    /// the HVP's batch (the paper). Sharing lets one pass give both products.
    pub separate_jvp_batch: bool,
    /// Seed of z's Xavier initialization.
    pub seed: u64,
}

impl Default for BoRepConfig {
    /// The official hyper-representation run's values, each marked with its source: the official
    /// code's step sizes and loop lengths (BO-REP repository, `meta_learning/main.py` and
    /// README) and its initialization of y, with the paper's z₀ = 0 and the paper's wiring of the
    /// two products (J·z_t on the same batch as H·z, Algorithm 1). `jvp_with_updated_z` and
    /// `separate_jvp_batch` select the official code's wiring instead. The other tasks' official
    /// values are `bilevel-bench`'s presets.
    fn default() -> Self {
        Self {
            // Official code: outer_update_lr (README command).
            eta: 1e-2,
            // Paper and official code: a constant η.
            eta_decay: 0.0,
            // Official code default (the paper's β as well).
            beta: 0.9,
            // Official code: nu.
            nu: 1e-2,
            // Official code: inner_update_lr (README command).
            gamma: 1e-3,
            // Official code: interval.
            period: 2,
            // Official code: y_warm_start.
            lower_steps: 3,
            // Official code: no projection (the paper's Algorithm 1 projects z on a ball).
            z_radius: None,
            // The paper's z₀ = 0, which `perf` and the PyTorch/JAX peer use too (the official code
            // draws a Xavier-uniform z₀: `ZInit::Xavier`).
            z_init: ZInit::Zeros,
            // Official code: its periodic update at step 0 is y_warm_start SGD steps (the paper's
            // Epoch-SGD refinement is `InitRefinement::EpochSgd`).
            init_refinement: InitRefinement::Sgd { steps: 3 },
            // Paper: J·z_t (the official code uses the updated z).
            jvp_with_updated_z: false,
            // Paper: J on the batch of H (the official code uses the query set).
            separate_jvp_batch: false,
            // Ours: the seed of the Xavier z₀.
            seed: 0,
        }
    }
}

impl BoRepConfig {
    /// The schedule of the x step length, η/(t+1)^b.
    pub fn eta_schedule(&self) -> PowerSchedule {
        PowerSchedule {
            initial: self.eta,
            exponent: self.eta_decay,
        }
    }
}

impl Method for BoRepConfig {
    const NAME: &'static str = "bo-rep";
    const HINT: &'static str = "eta for x, gamma for y, nu for z";

    fn validate(&self) -> Result<(), BilevelError> {
        let bad = |field, reason: &str| {
            Err(BilevelError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        let positive = |v: f64| v > 0.0 && v.is_finite();
        self.eta_schedule().validate("eta")?;
        if !(0.0..1.0).contains(&self.beta) {
            return bad("beta", "must be in [0, 1)");
        }
        if !positive(self.nu) {
            return bad("nu", "must be a positive number");
        }
        if !positive(self.gamma) {
            return bad("gamma", "must be a positive number");
        }
        if self.period == 0 {
            return bad("period", "must be at least 1");
        }
        if matches!(self.z_radius, Some(r) if !positive(r)) {
            return bad("z_radius", "must be a positive number when given");
        }
        if let InitRefinement::EpochSgd(c) = &self.init_refinement {
            c.validate()?;
        }
        Ok(())
    }

    fn steps(&mut self) -> Steps<'_> {
        Steps::new(&mut self.gamma, &mut self.eta).and(&mut self.nu)
    }

    fn optimizer<E: Real, P: BilevelProblem<E> + 'static>(&self, at: Start<'_, E, P>) -> Built<E, P>
    where
        Cpu: Device<E>,
    {
        Ok(Box::new(BoRep::<E, P>::new(self.clone(), at.x, at.y)?))
    }
}

/// BO-REP: its configuration and [`BoRepMemory`].
pub type BoRep<E, P> = RuleOptimizer<BoRepConfig, BoRepMemory<E, P>>;

/// BO-REP's memory besides x and y.
pub struct BoRepMemory<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    /// z_t ≈ [∇²_yy g]⁻¹ ∇_y f.
    z: P::Y,
    /// m_t, the momentum of the hypergradient estimate.
    m: P::X,
    refinement: Vec<EpochSchedule>,
}

impl<E: Real, P: BilevelProblem<E>> BoRep<E, P>
where
    Cpu: Device<E>,
{
    /// A fresh BO-REP for variables shaped like `x` and `y` (only their shapes are used).
    pub fn new(config: BoRepConfig, x: &P::X, y: &P::Y) -> Result<Self, BilevelError> {
        config.validate()?;
        let mut z = y.zeros_like();
        if config.z_init == ZInit::Xavier {
            let a = (6.0 / (z.num_params() as f64 + 1.0)).sqrt();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
            z.map_in_place(|s| s.iter_mut().for_each(|v| *v = E::of(rng.gen_range(-a..a))));
        }
        let memory = BoRepMemory {
            z,
            m: x.zeros_like(),
            refinement: Vec::new(),
        };
        Ok(Self::start(config, memory))
    }

    /// The current z_t.
    pub fn z(&self) -> &P::Y {
        &self.memory().z
    }

    /// The current momentum m_t.
    pub fn momentum(&self) -> &P::X {
        &self.memory().m
    }

    /// The Epoch-SGD schedule that ran at t = 0 (empty for other refinements).
    pub fn refinement_schedule(&self) -> &[EpochSchedule] {
        &self.memory().refinement
    }
}

impl<E: Real, P: BilevelProblem<E>> BoRepMemory<E, P>
where
    Cpu: Device<E>,
{
    /// Refines or periodically updates y, as the iteration index asks. Returns the last lower loss.
    fn update_lower(
        &mut self,
        (c, t, site): (&BoRepConfig, u64, Site),
        oracles: &mut Oracles<E, P>,
        x: &P::X,
        y: &mut P::Y,
    ) -> Result<Option<f64>, BilevelError> {
        let gamma = E::of(c.gamma);
        if t == 0 {
            return match &c.init_refinement {
                InitRefinement::None => Ok(None),
                InitRefinement::Sgd { steps } => sgd_on_lower(oracles, x, y, gamma, *steps, site),
                InitRefinement::EpochSgd(cfg) => {
                    let (refined, schedule) = epoch_sgd(oracles, x, y, cfg, site)?;
                    *y = refined;
                    self.refinement = schedule;
                    Ok(None)
                }
            };
        }
        if t.is_multiple_of(c.period as u64) {
            return sgd_on_lower(oracles, x, y, gamma, c.lower_steps, site);
        }
        Ok(None)
    }
}

impl<E: Real, P: BilevelProblem<E>> Rule<E, P> for BoRepMemory<E, P>
where
    Cpu: Device<E>,
{
    type Config = BoRepConfig;
    crate::saved_memory!(vector z, vector m);

    fn iterate(&mut self, it: Iteration<'_, E, P, BoRepConfig>) -> Result<Outcome, BilevelError> {
        let Iteration { oracles, x, y, .. } = it;
        let (c, t, site) = (it.config, it.t, it.site);
        let lower_loss = self.update_lower((c, t, site), oracles, x, y)?;

        let xi = oracles.upper_batch();
        let zeta = oracles.lower_batch();
        let upper = upper_grad_checked(oracles, x, y, &xi, site)?;

        // The paper's rule needs one pass for both products; the official code's variants need two.
        let shared_pass = !c.jvp_with_updated_z && !c.separate_jvp_batch;
        let (hz, mut jz, lower_grad_norm) = if shared_pass {
            let so = oracles.hvp_jvp(x, y, &self.z, &zeta)?;
            (so.hvp, Some(so.jvp), Some(so.written_grad_y.norm().f64()))
        } else {
            (oracles.hvp(x, y, &self.z, &zeta)?, None, None)
        };
        site.check("Hessian-vector product ∇²_yy g·z", &hz)?;
        let z_t = (!shared_pass && !c.jvp_with_updated_z).then(|| self.z.clone());
        let residual = linear_system_step(
            &mut self.z,
            &hz,
            &upper.dy,
            E::of(c.nu),
            c.z_radius.map(E::of),
        );
        site.check("linear-system variable z", &self.z)?;

        if jz.is_none() {
            let batch = if c.separate_jvp_batch {
                oracles.lower_batch()
            } else {
                zeta
            };
            jz = Some(oracles.jvp(x, y, z_t.as_ref().unwrap_or(&self.z), &batch)?);
        }
        let jz = jz.expect("computed above");
        site.check("cross product ∇²_xy g·z", &jz)?;

        let h = hypergradient_estimate(&upper.dx, &jz);
        momentum_update(&mut self.m, &h, E::of(c.beta));
        let eta = E::of(c.eta_schedule().at(t));
        let (step_size, x_step_norm) = normalized_step(x, &self.m, eta);
        project_and_check_x(oracles, x, site)?;
        Ok(Outcome {
            upper_loss: Some(upper.value.f64()),
            lower_loss,
            hypergrad_norm: h.norm().f64(),
            lower_grad_norm,
            linear_system_residual: Some(residual.f64()),
            step_size,
            x_step_norm,
        })
    }
}
