//! What a method writes: its update rule over its memory ([`Rule`]). What every method shares
//! on top of that, its name, its iteration counter, the oracle calls counted into the report,
//! the site that names a non-finite value and the counter in its saved state, is
//! [`RuleOptimizer`]'s, written once here, so a method's file holds its rule and nothing else.

use dfdx::prelude::{Cpu, Device};

use super::method::{Built, Method};
use crate::error::BilevelError;
use crate::optimizer::{BilevelOptimizer, StepReport};
use crate::oracles::Oracles;
use crate::problem::BilevelProblem;
use crate::real::Real;
use crate::state::{kinds, MethodState};
use crate::steps::{IterationScope, Outcome, Site};

/// Everything an iteration of a rule works with, in one value, so that a rule's signature is
/// one line and its body takes apart what it uses:
/// `let Iteration { oracles, x, y, .. } = it;`.
pub struct Iteration<'a, E: Real, P: BilevelProblem<E>, C>
where
    Cpu: Device<E>,
{
    /// The method's (valid) configuration.
    pub config: &'a C,
    /// The iteration's index, from 0.
    pub t: u64,
    /// Where non-finite values are reported (the method, `t`, the steps to lower).
    pub site: Site,
    /// The problem's oracles, which count their calls.
    pub oracles: &'a mut Oracles<E, P>,
    /// The upper-level variable, advanced in place.
    pub x: &'a mut P::X,
    /// The lower-level variable, advanced in place.
    pub y: &'a mut P::Y,
}

/// One method's iteration over the memory it keeps between iterations (z, momenta, tables),
/// implemented by that memory. The memory's saved form is declared by
/// [`crate::saved_memory!`]; [`RuleOptimizer`] adds the counter and the method's name.
pub trait Rule<E: Real, P: BilevelProblem<E>>
where
    Cpu: Device<E>,
{
    /// The method's configuration, which names the method.
    type Config: Method;

    /// Runs one iteration: advances x, y and the memory, and says what it measured. Fails,
    /// leaving x and y at their last finite values where it can, when a value is not finite.
    fn iterate(&mut self, it: Iteration<'_, E, P, Self::Config>) -> Result<Outcome, BilevelError>;

    /// Writes the memory into `state`.
    fn save(&self, state: &mut MethodState);

    /// Reads the memory back from `state`, all of it or, when any of it does not fit, nothing.
    fn load(&mut self, state: &MethodState) -> Result<(), BilevelError>;
}

/// Writes [`Method::optimizer`] for a method written as a [`Rule`]: a [`RuleOptimizer`] starting
/// from the memory the closure-like argument builds from the configuration and the [`Start`]:
/// `rule_optimizer!(|config, at| Soba { z: at.y.zeros_like() });` (inside `impl Method`).
///
/// [`Start`]: crate::methods::method::Start
#[macro_export]
macro_rules! rule_optimizer {
    (|$config:pat_param, $at:pat_param| $memory:expr) => {
        fn optimizer<E, P>(
            &self,
            start: $crate::methods::method::Start<'_, E, P>,
        ) -> $crate::methods::method::Built<E, P>
        where
            E: $crate::real::Real,
            P: $crate::problem::BilevelProblem<E> + 'static,
            $crate::dfdx::prelude::Cpu: $crate::dfdx::prelude::Device<E>,
        {
            let ($config, $at) = (self, start);
            $crate::methods::rule::RuleOptimizer::boxed(self, $memory)
        }
    };
}

/// The [`BilevelOptimizer`] of a [`Rule`]: its configuration, its memory and the iteration
/// counter (saved as `t`).
pub struct RuleOptimizer<C, R> {
    config: C,
    memory: R,
    t: u64,
}

impl<C: Method, R> RuleOptimizer<C, R> {
    /// The method at its first iteration, with the (valid) `config` and its starting `memory`.
    pub fn start(config: C, memory: R) -> Self {
        Self {
            config,
            memory,
            t: 0,
        }
    }

    /// The boxed optimizer of `config` with its rule's starting `memory`: what
    /// [`Method::optimizer`] returns for a method written as a [`Rule`].
    pub fn boxed<E: Real, P: BilevelProblem<E> + 'static>(config: &C, memory: R) -> Built<E, P>
    where
        Cpu: Device<E>,
        R: Rule<E, P, Config = C> + 'static,
    {
        Ok(Box::new(Self::start(config.clone(), memory)))
    }

    /// The configuration the method runs with.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// The memory as the last iteration left it.
    pub fn memory(&self) -> &R {
        &self.memory
    }

    /// How many iterations have run.
    pub fn iterations(&self) -> u64 {
        self.t
    }
}

impl<E: Real, P: BilevelProblem<E>, C: Method, R: Rule<E, P, Config = C>> BilevelOptimizer<E, P>
    for RuleOptimizer<C, R>
where
    Cpu: Device<E>,
{
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn step(
        &mut self,
        oracles: &mut Oracles<E, P>,
        x: &mut P::X,
        y: &mut P::Y,
    ) -> Result<StepReport, BilevelError> {
        oracles.begin_iteration();
        let scope = IterationScope::begin(C::NAME, C::HINT, self.t, oracles);
        let it = Iteration {
            config: &self.config,
            t: self.t,
            site: scope.site,
            oracles,
            x,
            y,
        };
        let outcome = self.memory.iterate(it)?;
        self.t += 1;
        Ok(scope.report(oracles, outcome))
    }

    fn state(&self) -> MethodState {
        let mut state = MethodState::new(C::NAME);
        kinds::counter::save(&self.t, "t", &mut state);
        self.memory.save(&mut state);
        state
    }

    fn load_state(&mut self, state: &MethodState) -> Result<(), BilevelError> {
        state.expect_method(C::NAME)?;
        let t = kinds::counter::load(&self.t, "t", state)?;
        self.memory.load(state)?;
        self.t = t;
        Ok(())
    }
}
